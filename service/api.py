"""The REST API: thin handlers over the study store; training never happens in a request."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Annotated, Any

import optuna
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from sqlalchemy.orm import Session

from search_spaces import arm_name, parse_arm
from service import repository as repo
from service.db import (
    Study,
    StudyStatus,
    create_schema,
    make_engine,
    make_optuna_storage,
    make_sessionmaker,
    utcnow,
)
from service.ray_cluster import RayCluster, RayUnavailable, connect, resource_problem
from service.routers import presets as presets_router
from service.schemas import (
    BestConfig,
    BestSoFar,
    Links,
    Problem,
    Schedule,
    StudyCreated,
    StudyOut,
    StudyPage,
    StudySpec,
    TrialOut,
    TrialPage,
)
from service.settings import Settings

logger = logging.getLogger(__name__)

NOT_FOUND = {404: {"model": Problem, "description": "no study with this id"}}
RAY_DOWN = {503: {"model": Problem, "description": "the Ray cluster is not reachable"}}


def create_app(settings: Settings | None = None, *, cluster: RayCluster | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    create_schema(engine)
    sessions = make_sessionmaker(engine)
    storage = make_optuna_storage(
        settings.resolved_database_url,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.cluster is None:
            try:
                app.state.cluster = connect(settings)
            except RayUnavailable:
                logger.exception("no Ray cluster: studies cannot be submitted until one is reachable")
        yield
        engine.dispose()

    app = FastAPI(
        title="transched",
        version="0.1.0",
        summary="Hyperparameter optimisation of transfer-learning schedules on Ray Tune with TPE.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.storage = storage
    app.state.cluster = cluster
    _routes(app)
    app.include_router(presets_router.router)
    return app


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _cluster(request: Request) -> RayCluster:
    cluster = request.app.state.cluster
    if cluster is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the Ray cluster is not reachable")
    return cluster


def _links(request: Request, study_id: str) -> Links:
    base = str(request.base_url).rstrip("/")
    cluster = request.app.state.cluster
    return Links(
        self=f"{base}/studies/{study_id}",
        trials=f"{base}/studies/{study_id}/trials",
        best=f"{base}/studies/{study_id}/best",
        stop=f"{base}/studies/{study_id}/stop",
        dashboard=f"{cluster.dashboard_url}/#/jobs/transched-{study_id}" if cluster else None,
    )


def _get_or_404(session: Session, study_id: str) -> Study:
    study = repo.get_study(session, study_id=study_id)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study {study_id}")
    return study


def _reconcile(request: Request, session: Session, study: Study) -> None:
    """A study whose driver ended without saying so is marked failed or stopped, and its RUNNING trials
    are failed: nothing stays 'running' forever. The driver's end is known from its Ray job's status,
    or, when the cluster no longer knows the job (restarted, lost), from a heartbeat gone stale."""
    if StudyStatus(study.status).terminal:
        return
    cluster, settings = request.app.state.cluster, request.app.state.settings
    job = cluster.job_status(study.ray_job_id) if cluster is not None and study.ray_job_id else None
    if job in ("FAILED", "STOPPED", "SUCCEEDED"):
        final = StudyStatus.stopped if job == "STOPPED" else StudyStatus.failed
        error = None if final == StudyStatus.stopped else f"the driver's Ray job ended as {job}"
    elif job is None and study.status != StudyStatus.pending and _stale(study, settings.driver_timeout_s):
        final = StudyStatus.failed
        error = f"the driver stopped reporting (no heartbeat for over {settings.driver_timeout_s:.0f}s)"
    else:
        return
    moved = repo.set_status(
        session,
        study_id=study.id,
        status=final,
        error=error,
        only_from=(StudyStatus.pending, StudyStatus.running, StudyStatus.stopping),
    )
    if moved:  # else the driver wrote its own end meanwhile
        repo.reap_running_trials(request.app.state.storage, name=study.optuna_study_name)
    session.refresh(study)


def _stale(study: Study, timeout_s: float) -> bool:
    last = study.heartbeat_at or study.started_at
    if last is None:
        return False
    if last.tzinfo is None:  # SQLite hands back naive datetimes; we store UTC
        last = last.replace(tzinfo=UTC)
    return (utcnow() - last).total_seconds() > timeout_s


def _study_out(request: Request, study: Study) -> StudyOut:
    ot = repo.load_optuna_study(request.app.state.storage, name=study.optuna_study_name)
    trials = ot.get_trials(deepcopy=False) if ot else []
    counts = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: (t.value, -t.number), default=None)
    return StudyOut(
        id=study.id,
        name=study.name,
        status=study.status,
        error=study.error,
        optuna_study_name=study.optuna_study_name,
        ray_job_id=study.ray_job_id,
        created_at=study.created_at,
        started_at=study.started_at,
        finished_at=study.finished_at,
        n_trials=len(trials),
        trial_counts=dict(counts),
        best=BestSoFar(number=best.number, value=best.value, params=_params(best)) if best else None,
        spec=StudySpec.model_validate(study.spec),
        links=_links(request, study.id),
    )


def _arm(trial: optuna.trial.FrozenTrial) -> str:
    params = _params(trial)
    return arm_name(params["method"], bool(params.get("schedule")))


def _params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    # The sampled config holds the constants of the space (e.g. the method of a one-method study) too.
    return dict(trial.user_attrs.get("sampled") or trial.params)


def _routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz(request: Request, session: SessionDep) -> dict[str, Any]:
        from sqlalchemy import text

        session.execute(text("SELECT 1"))
        cluster = request.app.state.cluster
        return {"status": "ok", "database": "ok", "ray_dashboard": cluster.dashboard_url if cluster else None}

    @app.post(
        "/studies",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=StudyCreated,
        responses={422: {"description": "invalid study spec; nothing is stored"}, **RAY_DOWN},
        tags=["studies"],
    )
    def create_study(spec: StudySpec, request: Request, session: SessionDep) -> StudyCreated:
        """Store the study and submit its driver to Ray as a job; 202: it runs in the background."""
        import uuid

        cluster = _cluster(request)
        try:
            problem = resource_problem(spec, cluster.resources(), gpus_only=True)
        except Exception:  # the status API is best effort; the driver checks again with Ray's own view
            logger.warning("could not read the cluster's resources", exc_info=True)
            problem = None
        if problem:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problem)
        study_id = uuid.uuid4().hex
        spec = spec.with_paths_under(request.app.state.settings.data_dir)
        study = repo.create_study(
            session, name=spec.name, spec=spec.model_dump(mode="json"), study_id=study_id
        )
        try:
            job_id = cluster.submit_study(study_id=study_id, settings=request.app.state.settings)
        except Exception as exc:
            logger.exception("submitting study %s failed", study_id)
            repo.set_status(
                session, study_id=study_id, status=StudyStatus.failed, error=f"submission failed: {exc}"
            )
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"could not submit study {study_id} to Ray (it is kept, as failed): {exc}",
            ) from exc
        repo.set_job(session, study_id=study_id, ray_job_id=job_id)
        return StudyCreated(
            id=study.id,
            name=study.name,
            status=StudyStatus.pending.value,
            optuna_study_name=study.optuna_study_name,
            ray_job_id=job_id,
            links=_links(request, study.id),
        )

    @app.get("/studies", response_model=StudyPage, tags=["studies"])
    def list_studies(
        request: Request,
        session: SessionDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> StudyPage:
        rows, total = repo.list_studies(session, offset=offset, limit=limit)
        return StudyPage(
            items=[_study_out(request, r) for r in rows], total=total, offset=offset, limit=limit
        )

    @app.get("/studies/{study_id}", response_model=StudyOut, responses=NOT_FOUND, tags=["studies"])
    def get_study(study_id: str, request: Request, session: SessionDep) -> StudyOut:
        """Status, trial counts by state, the best trial so far, and the Optuna study's name."""
        study = _get_or_404(session, study_id)
        _reconcile(request, session, study)
        return _study_out(request, study)

    @app.get("/studies/{study_id}/trials", response_model=TrialPage, responses=NOT_FOUND, tags=["studies"])
    def list_trials(
        study_id: str,
        request: Request,
        session: SessionDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> TrialPage:
        """Trials by number: params, Optuna state, value and per-epoch metrics."""
        study = _get_or_404(session, study_id)
        ot = repo.load_optuna_study(request.app.state.storage, name=study.optuna_study_name)
        trials = sorted(ot.get_trials(deepcopy=False), key=lambda t: t.number) if ot else []
        items = [
            TrialOut(
                number=t.number,
                state=t.state.name,
                value=t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                params=_params(t),
                epochs=repo.epoch_history(t),
                node=t.user_attrs.get("node"),
                node_id=t.user_attrs.get("node_id"),
                device=t.user_attrs.get("device"),
                restarts=t.user_attrs.get("restarts", 0),
                info=t.user_attrs.get("info") or {},
                total_steps=t.user_attrs.get("total_steps"),
                datetime_start=t.datetime_start,
                datetime_complete=t.datetime_complete,
            )
            for t in trials[offset : offset + limit]
        ]
        return TrialPage(items=items, total=len(trials), offset=offset, limit=limit)

    @app.get(
        "/studies/{study_id}/best",
        response_model=BestConfig,
        responses={
            **NOT_FOUND,
            409: {"model": Problem, "description": "no trial (of that method) has completed yet"},
            422: {"model": Problem, "description": "the study has no such method"},
        },
        tags=["studies"],
    )
    def best(
        study_id: str,
        request: Request,
        session: SessionDep,
        method: Annotated[
            str | None, Query(description="best of one method: a method name, or an arm like mixup+schedule")
        ] = None,
    ) -> BestConfig:
        """The best trial's complete trainer config, ready for `transched train`; the best overall, or
        with `?method=` the best of that method."""
        study = _get_or_404(session, study_id)
        if method is not None:
            arms = StudySpec.model_validate(study.spec).resolved_methods()
            if method not in arms and method not in {parse_arm(a)[0] for a in arms}:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"study {study_id} has no method {method!r}; it has {', '.join(arms)}",
                )
        ot = repo.load_optuna_study(request.app.state.storage, name=study.optuna_study_name)
        trial = None
        if ot is not None and method is None:
            try:
                trial = ot.best_trial  # the store's own answer, so /best and optuna.load_study agree
            except ValueError:  # no completed trial
                trial = None
        elif ot is not None:
            trials = ot.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            # An arm of the study matches exactly ("mixup" is not "mixup+schedule"); a bare method name
            # that is not an arm ("mixup" in a study of "mixup+schedule" only) matches its arms.
            exact = method in StudySpec.model_validate(study.spec).resolved_methods()
            trials = [t for t in trials if (_arm(t) if exact else _params(t)["method"]) == method]
            trial = max(trials, key=lambda t: (t.value, -t.number), default=None)
        if trial is None:
            which = f" of method {method!r}" if method else ""
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"study {study_id} has no completed trial{which} yet"
            )
        return best_config(study, trial)

    @app.post(
        "/studies/{study_id}/stop",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=StudyOut,
        responses={**NOT_FOUND, 409: {"model": Problem, "description": "the study has already ended"}},
        tags=["studies"],
    )
    def stop(study_id: str, request: Request, session: SessionDep) -> StudyOut:
        """Ask the driver to stop: running trials end, the study ends as `stopped`."""
        study = _get_or_404(session, study_id)
        if StudyStatus(study.status).terminal:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"study {study_id} has already ended ({study.status})"
            )
        moved = repo.set_status(
            session,
            study_id=study_id,
            status=StudyStatus.stopping,
            only_from=(StudyStatus.running,),
        )
        if not moved:  # pending: the driver has not started, so end its job outright
            if study.ray_job_id and request.app.state.cluster:
                request.app.state.cluster.stop_job(study.ray_job_id)
            repo.set_status(
                session, study_id=study_id, status=StudyStatus.stopped, only_from=(StudyStatus.pending,)
            )
        session.refresh(study)
        return _study_out(request, study)


def best_config(study: Study, trial: optuna.trial.FrozenTrial) -> BestConfig:
    from service.trainable import merge_config
    from trainers.config import schedule_params

    spec = StudySpec.model_validate(study.spec)
    # The same merge the trainable made, so the config trains exactly what the trial trained.
    config = merge_config(
        spec.trainer.to_dict(), _params(trial), cpus_per_trial=spec.cpus_per_trial
    ).to_dict()
    method = config["method"]
    total = trial.user_attrs.get("total_steps")
    used = schedule_params(method, bool(config.get("schedule")))
    schedule = None
    if used and total:
        schedule = Schedule(
            method=method,
            t0=config["t0"] * total if "t0" in used else None,
            tau=config["tau"] * total if "tau" in used else None,
            alpha=config["alpha"] if "alpha" in used else None,
            T=int(total),
        )
    return BestConfig(
        study_id=study.id,
        optuna_study_name=study.optuna_study_name,
        trial_number=trial.number,
        method=method,
        val_acc=float(trial.value),
        test_acc=trial.user_attrs.get("test_acc"),
        config=config,
        schedule=schedule,
        info=trial.user_attrs.get("info") or {},
    )
