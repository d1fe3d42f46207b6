"""The REST API: `create_app()` and its lifespan, which makes the engine, the Optuna storage and the
cluster client once; routers in `service.routers`; domain errors mapped to responses here, in one
place, all with the one error body `Problem` ({"detail": ...}). Training never happens in a request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from service.deps import AppState
from service.errors import ClusterUnavailable, Conflict, DomainError, InvalidForStudy, NotFound
from service.ray_cluster import Cluster, connect
from service.routers import dashboard, health, logs, presets, report, studies, trials
from service.schemas import Problem
from service.settings import Settings
from service.supervisor import Supervisor

ERROR_STATUS: dict[type[DomainError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    InvalidForStudy: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ClusterUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    code = next(c for kind, c in ERROR_STATUS.items() if isinstance(exc, kind))
    return JSONResponse(Problem(detail=exc.detail).model_dump(), status_code=code)


def create_app(
    settings: Settings | None = None,
    *,
    cluster: Cluster | None = None,
    connect: Callable[[Settings], Cluster] = connect,
) -> FastAPI:
    """The app. `cluster` is the cluster studies run on (tests pass a fake one); without it the
    lifespan calls `connect(settings)`: RAY_ADDRESS's cluster, or a local head it starts or reuses."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, AppState]]:
        state = AppState.open(settings, cluster=cluster, connect=connect)
        # Resumes interrupted studies and admits queued ones, at start and periodically.
        supervisor = Supervisor(state, settings.supervise_interval_s)
        supervisor.start()
        try:
            yield {"app_state": state}  # each request's `request.state.app_state` (service.deps.State)
        finally:
            supervisor.stop()
            state.close()

    # FastAPIOffline: /docs (Swagger UI) serves its JS and CSS from the installed package, not a CDN, so the
    # docs work without internet. No ReDoc: its bundle still fetches its logo from cdn.redoc.ly.
    app = FastAPIOffline(
        redoc_url=None,
        title="transched",
        version="0.1.0",
        summary="Hyperparameter optimisation of transfer-learning schedules on Ray Tune with TPE.",
        lifespan=lifespan,
    )
    app.add_exception_handler(DomainError, _problem)
    for module in (health, studies, trials, logs, presets, report, dashboard):
        app.include_router(module.router)
    dashboard.mount(app)  # optuna-dashboard at /dashboard (and the root paths its bundle fetches)
    return app
