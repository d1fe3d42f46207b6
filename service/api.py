"""The REST API: `create_app()` and its lifespan, which makes the engine, the Optuna storage and the
cluster client once; routers in `service.routers`; domain errors mapped to responses here, in one
place, all with the one error body `Problem` ({"detail": ...}). Training never happens in a request."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from service import auth
from service.db import check_optuna_schema
from service.db_retry import is_transient, short
from service.deps import AppState
from service.errors import (
    ClusterUnavailable,
    Conflict,
    DomainError,
    InvalidForStudy,
    NotFound,
    Unauthorized,
)
from service.ray_cluster import Cluster, connect
from service.routers import dashboard, health, logs, presets, report, studies, trials
from service.schemas import Problem, problem_response
from service.settings import Settings
from service.supervisor import Supervisor

logger = logging.getLogger(__name__)

ERROR_STATUS: dict[type[DomainError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    InvalidForStudy: status.HTTP_422_UNPROCESSABLE_CONTENT,
    ClusterUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    Unauthorized: status.HTTP_401_UNAUTHORIZED,
}
# Every endpoint that reads the database may answer this while it is unreachable (see _database_problem).
DB_DOWN: dict[int | str, dict] = {
    503: {
        **problem_response("the database is unavailable for now: retry after Retry-After seconds"),
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    }
}


def _problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    code = next(c for kind, c in ERROR_STATUS.items() if isinstance(exc, kind))
    headers = auth.CHALLENGE if isinstance(exc, Unauthorized) else None
    return JSONResponse(Problem(detail=exc.detail).model_dump(), status_code=code, headers=headers)


def _invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with what JSON cannot carry (a NaN or an infinity the client sent, echoed back as
    the error's `input`) written as text: the refusal itself must not fail."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors, except that a body that does not parse (FastAPI's 400) is a 422 like any
    other invalid body: one documented code for every refusal of what was sent."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST:
        return JSONResponse({"detail": str(exc.detail)}, status_code=422)
    return await http_exception_handler(request, exc)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _database_problem(retry_after_s: int) -> Callable[[Request, Exception], JSONResponse]:
    """The database is unreachable, locked or out of connections: 503 with Retry-After, never a 500; the
    client may send the same request again. Any other database error is a bug and stays a 500."""

    def handler(request: Request, exc: Exception) -> JSONResponse:
        if not is_transient(exc):
            raise exc
        logger.warning("%s %s: database unavailable (%s)", request.method, request.url.path, short(exc))
        return JSONResponse(
            Problem(detail="the database is unavailable for now; retry later").model_dump(),
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(retry_after_s)},
        )

    return handler


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
        if problem := auth.bind_problem(settings):
            raise RuntimeError(problem)
        state = AppState.open(settings, cluster=cluster, connect=connect)
        check_optuna_schema(state.storage)  # we read Optuna's tables directly: refuse another schema
        # Resumes interrupted studies and admits queued ones: once before serving, then periodically (no
        # request does: a GET only reads).
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
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    for db_error in (SQLAlchemyError, StorageInternalError):  # Optuna wraps SQLAlchemy's errors in its own
        app.add_exception_handler(db_error, _database_problem(settings.db_retry_after_s))
    app.include_router(health.router, responses=DB_DOWN)  # open: a liveness probe, it names no study
    guarded = settings.api_token is not None  # see service.auth; /docs and the schema stay open
    unauthorized = {401: problem_response(auth.UNAUTHORIZED[401]["description"])} if guarded else {}
    for module in (studies, trials, logs, presets, report, dashboard):
        app.include_router(
            module.router,
            dependencies=[auth.Authorized] if guarded else None,
            responses={**unauthorized, **({} if module is presets else DB_DOWN)},
        )
    dashboard.mount(app)  # optuna-dashboard at /dashboard (and the root paths its bundle fetches)
    if guarded and settings.public_reads:
        app.openapi = partial(_reads_open, app)  # type: ignore[method-assign]
    return app


def _reads_open(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document with the reads (GET) shown as needing no token (TRANSCHED_PUBLIC_READS)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for path in schema.get("paths", {}).values():
            for method, operation in path.items():
                if method.upper() in auth.READ_METHODS:
                    operation.pop("security", None)
                    operation.get("responses", {}).pop("401", None)
        app.openapi_schema = schema
    return app.openapi_schema
