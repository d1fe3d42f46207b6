"""optuna-dashboard inside the API process, over the app's own Optuna storage.

optuna-dashboard (a bottle WSGI app) has no URL prefix of its own: its page is `/dashboard...`, and its
bundle fetches `/api/...`, `/static/...` and `/favicon.ico` from the host's root. So the one WSGI app
(wrapped for ASGI by a2wsgi) is mounted at each of those paths and sees the request's whole path, and
our own routes keep away from them. Its static files come from the installed package: it works offline.
`GET /studies/{id}/dashboard` redirects to the study's page there (which is by Optuna's integer id).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, status
from fastapi.responses import JSONResponse, RedirectResponse

from service import auth, studies
from service.deps import State
from service.schemas import Problem

DASHBOARD = "/dashboard"
# Where optuna-dashboard's bundle looks for its API and assets (absolute paths, see the module docstring).
MOUNTS = (DASHBOARD, "/api", "/static")
ROUTES = (DASHBOARD, "/favicon.ico")

router = APIRouter(tags=["views"])


class OptunaDashboard:
    """ASGI app: optuna-dashboard over the lifespan's storage, made on the first request (the storage
    exists only once the lifespan has run)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = scope["state"]["app_state"]  # see service.api.create_app's lifespan
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # A mount is no route: the API token is checked here, by the routes' own rule (service.auth).
        if why := auth.problem(state.settings, scope.get("method", "GET"), headers):
            refusal = JSONResponse(Problem(detail=why).model_dump(), status_code=401, headers=auth.CHALLENGE)
            await refusal(scope, receive, send)
            return
        if self.app is None:
            import optuna_dashboard
            from a2wsgi import WSGIMiddleware

            storage = state.storage
            self.app = WSGIMiddleware(optuna_dashboard.wsgi(storage))
        # A Mount strips its prefix into root_path; the dashboard routes on the whole path.
        await self.app({**scope, "root_path": ""}, receive, send)


def mount(app: FastAPI) -> None:
    dashboard = OptunaDashboard()
    for path in ROUTES:  # the exact paths (a Mount matches only what lies below it)
        app.add_route(path, dashboard, include_in_schema=False)
    for path in MOUNTS:
        app.mount(path, dashboard, name=f"optuna-dashboard{path.replace('/', '-')}")


@router.get(
    "/studies/{study_id}/dashboard",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    responses={404: {"model": Problem, "description": "no study with this id"}},
)
def study_dashboard(study_id: str, state: State) -> RedirectResponse:
    """Redirect to the study's page in optuna-dashboard (its list of studies while the driver has not
    created the Optuna study yet)."""
    study = studies.find(state.sessions, study_id)
    try:
        number = state.storage.get_study_id_from_name(study.optuna_study_name)
    except KeyError:
        return RedirectResponse(DASHBOARD)
    return RedirectResponse(f"{DASHBOARD}/studies/{number}")
