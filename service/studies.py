"""The study domain: submit (and admit), stop, read, and the best trial and its config.

Handlers in `service.routers` are a few lines over these functions. Nothing here knows HTTP: a refusal
is a `service.errors` exception, turned into a response in one place (`service.api`). No database
session is open while Ray is asked anything: a slow or dead cluster never pins a pooled connection.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from search_spaces import merge_config, parse_arm
from service import ledger
from service import repository as repo
from service.db import Study, StudyStatus, utcnow
from service.errors import ClusterUnavailable, Conflict, InvalidForStudy, NotFound
from service.ray_cluster import Cluster, job_submission_id, resource_problem
from service.schemas import (
    BestConfig,
    BestSoFar,
    Links,
    Schedule,
    StudyOut,
    StudyPage,
    StudySpec,
    TrialOut,
    TrialPage,
)
from service.settings import Settings

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

logger = logging.getLogger(__name__)

Sessions = sessionmaker[Session]
TrialFilter = Callable[[FrozenTrial], bool]


def submit(
    spec: StudySpec,
    *,
    sessions: Sessions,
    cluster: Cluster,
    settings: Settings,
    api_url: str | None = None,
    idempotency_key: str | None = None,
) -> Study:
    """Store the study (queued, with its final job id, in one transaction), then admit it and submit its
    driver to Ray if fewer than `max_running_studies` run; else it waits, queued, for the supervisor.
    A study Ray refused is kept, as failed. With `idempotency_key`, a repeated request with the same body
    returns the study the first one made. `api_url` (the URL the client called) gives the job its link."""
    body_hash = request_hash(spec)
    if idempotency_key is not None:
        earlier = _replay(sessions, idempotency_key, body_hash)
        if earlier is not None:
            return earlier
    try:
        problem = resource_problem(spec, cluster.resources(), gpus_only=True)
    except Exception:  # the status API is best effort; the driver checks again with Ray's own view
        logger.warning("could not read the cluster's resources", exc_info=True)
        problem = None
    if problem:
        raise InvalidForStudy(problem)
    study_id = uuid.uuid4().hex
    spec = spec.with_paths_under(settings.data_dir)
    if outside := spec.paths_outside([settings.data_dir, *settings.allowed_data_dirs]):
        raise InvalidForStudy("; ".join(outside))  # before anything is stored
    try:
        with sessions() as session:
            study = repo.create_study(
                session,
                name=spec.name,
                spec=spec.model_dump(mode="json"),
                study_id=study_id,
                ray_job_id=job_submission_id(study_id, spec.name),
                status=StudyStatus.queued,
                idempotency_key=idempotency_key,
                request_hash=body_hash if idempotency_key else None,
            )
    except IntegrityError:  # the same key, sent at the same moment by another request
        earlier = _replay(sessions, idempotency_key or "", body_hash)
        if earlier is None:
            raise
        return earlier
    if dispatch_one(study, sessions=sessions, cluster=cluster, settings=settings, api_url=api_url):
        return find(sessions, study_id)
    return study


def request_hash(spec: StudySpec) -> str:
    """The body a study was asked with, as a hash: the validated spec, so key order and defaults given or
    left out do not make two requests differ."""
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _replay(sessions: Sessions, key: str, body_hash: str) -> Study | None:
    with sessions() as session:
        earlier = repo.get_by_idempotency_key(session, key=key)
    if earlier is not None and earlier.request_hash != body_hash:
        raise InvalidForStudy(
            f"Idempotency-Key {key!r} was already used for study {earlier.id} with a different body"
        )
    return earlier


def dispatch_one(
    study: Study, *, sessions: Sessions, cluster: Cluster, settings: Settings, api_url: str | None = None
) -> bool:
    """Admit a queued study if a slot is free and submit its driver; True if admitted. A submission Ray
    refuses fails the study (503 to the client that asked)."""
    with sessions() as session:
        if not repo.admit(session, study_id=study.id, limit=settings.max_running_studies):
            return False
    launch(study, sessions=sessions, cluster=cluster, settings=settings, api_url=api_url)
    return True


def launch(
    study: Study,
    *,
    sessions: Sessions,
    cluster: Cluster,
    settings: Settings,
    api_url: str | None = None,
    fail: bool = True,
) -> None:
    """Submit the driver of the study's current attempt as its stored job id (no session is held). If
    the cluster refuses, the study is failed (`fail`, a client's submission: it gets a 503) or left
    pending, for the supervisor's next sweep to submit again (a resume: the cluster may just be busy)."""
    spec = StudySpec.model_validate(study.spec)
    study_url = f"{(api_url or settings.api_url).rstrip('/')}/studies/{study.id}"
    try:
        cluster.submit_study(
            study_id=study.id,
            spec=spec,
            settings=settings,
            study_url=study_url,
            job_id=study.ray_job_id,
            attempt=study.attempts,
        )
    except Exception as exc:
        logger.exception("submitting study %s failed", study.id)
        if not fail:
            return
        with sessions() as session:
            repo.set_status(
                session, study_id=study.id, status=StudyStatus.failed, error=f"submission failed: {exc}"
            )
        raise ClusterUnavailable(
            f"could not submit study {study.id} to Ray (it is kept, as failed): {exc}"
        ) from exc


def find(sessions: Sessions, study_id: str) -> Study:
    if len(study_id) > 64 or "\x00" in study_id:  # no such id; PostgreSQL would refuse a NUL in a query
        raise NotFound("no study with this id")
    with sessions() as session:
        study = repo.get_study(session, study_id=study_id)
    if study is None:
        raise NotFound(f"no study {study_id}")
    return study


def stale(study: Study, timeout_s: float) -> bool:
    """No heartbeat from the study's driver for over `timeout_s` (its start counts as one)."""
    last = study.heartbeat_at or study.started_at
    if last is None:
        return False
    if last.tzinfo is None:  # SQLite hands back naive datetimes; we store UTC
        last = last.replace(tzinfo=UTC)
    return (utcnow() - last).total_seconds() > timeout_s


def stop(
    study_id: str, *, sessions: Sessions, cluster: Cluster | None, storage: BaseStorage | None = None
) -> Study:
    """Idempotent: a running study is asked to stop (its driver ends its trials and writes `stopped`); a
    queued or pending one (no driver running yet) ends `stopped` at once; a stopping or stopped one is
    answered as it is. Only a study that completed or failed is refused."""
    study = find(sessions, study_id)
    if study.status == StudyStatus.stopped:
        return study
    if StudyStatus(study.status).terminal:
        raise Conflict(f"study {study_id} has already ended ({study.status})")
    with sessions() as session:
        asked = repo.set_status(
            session, study_id=study_id, status=StudyStatus.stopping, only_from=(StudyStatus.running,)
        )
    if not asked:  # queued, pending or already stopping: never kill the driver of a stopping study
        with sessions() as session:
            ended = repo.set_status(
                session,
                study_id=study_id,
                status=StudyStatus.stopped,
                only_from=(StudyStatus.queued, StudyStatus.pending),
            )
        # The status is written first: a driver that starts now finds its study stopped and exits.
        if ended and study.status != StudyStatus.queued and study.ray_job_id and cluster is not None:
            cluster.stop_job(study.ray_job_id)
        if ended and storage is not None:  # a resumed study's dead driver may have left trials RUNNING
            repo.reap_running_trials(storage, name=study.optuna_study_name)
    return find(sessions, study_id)


def job_logs(study_id: str, *, sessions: Sessions, cluster: Cluster | None) -> str:
    """The log of the study's driver (its Ray job), as the cluster keeps it."""
    study = find(sessions, study_id)
    no_job = Conflict(f"study {study_id} has no Ray job ({study.status}: {study.error or 'not submitted'})")
    if not study.ray_job_id or study.status == StudyStatus.queued:  # queued: its job id is not used yet
        raise no_job
    if cluster is None:
        raise ClusterUnavailable("the Ray cluster is not reachable")
    logs = cluster.job_logs(study.ray_job_id)
    if logs is None and (study.error or "").startswith("submission failed"):
        raise no_job  # stored with its job id, which the cluster refused
    if logs is None:
        raise NotFound(f"the Ray cluster has no logs of job {study.ray_job_id} (was it restarted?)")
    return logs


# --- reading: trials live in Optuna's schema ------------------------------------------------------------


def params(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's sampled config (service.ledger.sampled_config)."""
    return ledger.sampled_config(trial)


def _optuna_session(storage: BaseStorage) -> Session:
    """A session on the database of Optuna's storage (an `RDBStorage`: the service's store)."""
    return Session(storage.engine)  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=1024)
def _spec_from_json(spec_json: str) -> StudySpec:
    return StudySpec.model_validate_json(spec_json)


def stored_spec(study: Study) -> StudySpec:
    """The study's stored spec as a `StudySpec`, validated once per process and content (validating it on
    every read, methods resolved and bounds checked, was 10-20% of a study view and more of a page of
    studies). Shared between callers: none may change it."""
    return _spec_from_json(json.dumps(study.spec, sort_keys=True))


def study_page(
    *,
    sessions: Sessions,
    storage: BaseStorage,
    offset: int,
    limit: int,
    links: Callable[[str, str | None], Links],
) -> StudyPage:
    """A page of studies, newest first, each with its trial counts and best trial so far, as stored: it
    only reads (settling a live study is the supervisor's, service.supervisor)."""
    with sessions() as session:
        rows, total = repo.list_studies(session, offset=offset, limit=limit)
    items = overviews(rows, sessions=sessions, storage=storage, links=links)
    return StudyPage(items=items, total=total, offset=offset, limit=limit)


def overviews(
    studies: list[Study],
    *,
    sessions: Sessions,
    storage: BaseStorage,
    links: Callable[[str, str | None], Links],
) -> list[StudyOut]:
    """Each study with its trial counts by state (one query for all of them) and its best trial so far."""
    names = [s.optuna_study_name for s in studies]
    with sessions() as session:
        counts = repo.trial_counts(session, names=names)
        best = ledger.bests(session, names)
    return [
        _overview(s, counts.get(s.optuna_study_name, {}), best.get(s.optuna_study_name), links)
        for s in studies
    ]


def _overview(
    study: Study, counts: dict[str, int], best: FrozenTrial | None, links: Callable[[str, str | None], Links]
) -> StudyOut:
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
        n_trials=sum(counts.values()),
        trial_counts=counts,
        best=BestSoFar(number=best.number, value=best.value, params=params(best)) if best else None,
        spec=stored_spec(study),
        links=links(study.id, study.ray_job_id),
    )


def trials_page(study: Study, *, storage: BaseStorage, offset: int, limit: int) -> TrialPage:
    """Trials by number: params, Optuna state, value and per-epoch metrics; reads the page's rows only."""
    with _optuna_session(storage) as session:
        trials, total = repo.trial_page(session, name=study.optuna_study_name, offset=offset, limit=limit)
    return TrialPage(items=[_trial_out(t) for t in trials], total=total, offset=offset, limit=limit)


def _trial_out(t: FrozenTrial) -> TrialOut:
    record = ledger.TrialRecord.from_trial(t)
    return TrialOut(
        number=record.number,
        state=record.state,
        value=record.value,
        params=record.sampled,
        epochs=record.epochs,
        node=record.node,
        node_id=record.node_id,
        device=record.device,
        restarts=record.restarts,
        error=record.error,
        info=record.info,
        total_steps=record.total_steps,
        reused_from=record.origin.of if record.origin.kind == "reused" else None,
        datetime_start=record.datetime_start,
        datetime_complete=record.datetime_complete,
    )


# --- the best config ------------------------------------------------------------------------------------


trial_arm = ledger.trial_arm


def method_filter(arms: list[str], method: str) -> TrialFilter | None:
    """Trials of one method of the study, None if the study has no such method. An arm matches exactly
    ("mixup" is not "mixup+schedule"); a bare method name that is not an arm ("mixup" in a study of
    "mixup+schedule" only) matches its arms."""
    if method in arms:
        return lambda t: trial_arm(t) == method
    if method in {parse_arm(a)[0] for a in arms}:
        return lambda t: params(t)["method"] == method
    return None


def best_config(study: Study, *, storage: BaseStorage, method: str | None = None) -> BestConfig:
    """The best trial's complete trainer config, ready for `transched train`: the best overall, or the
    best of one method (a method name or an arm like ``mixup+schedule``)."""
    spec = stored_spec(study)
    where = None
    if method is not None:
        arms = list(spec.resolved_methods())
        where = method_filter(arms, method)
        if where is None:
            raise InvalidForStudy(f"study {study.id} has no method {method!r}; it has {', '.join(arms)}")
    trial = ledger.best_trial(storage, name=study.optuna_study_name, where=where, key=method)
    if trial is None:
        which = f" of method {method!r}" if method else ""
        raise Conflict(f"study {study.id} has no completed trial{which} yet")
    return _best_config(study, spec, trial)


def _best_config(study: Study, spec: StudySpec, trial: FrozenTrial) -> BestConfig:
    from trainers.config import schedule_params

    record = ledger.TrialRecord.from_trial(trial)
    # The same merge the trainable made, so the config trains exactly what the trial trained.
    config = merge_config(
        spec.trainer.to_dict(), record.sampled, cpus_per_trial=spec.cpus_per_trial
    ).to_dict()
    method, total = config["method"], record.total_steps
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
        test_acc=record.test_acc,
        config=config,
        schedule=schedule,
        info=record.info,
    )
