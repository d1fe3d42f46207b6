"""Keyword-only functions over the study table (SQLAlchemy 2.0 `select()`), and Optuna's trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session, aliased

from service.db import Study, StudyStatus, utcnow

# The states in which a study holds (or is about to hold) a driver: what the admission limit counts.
ACTIVE = (StudyStatus.pending, StudyStatus.running, StudyStatus.stopping)
LIVE = (StudyStatus.queued, *ACTIVE)


def create_study(
    session: Session,
    *,
    name: str,
    spec: dict[str, Any],
    study_id: str,
    ray_job_id: str | None = None,
    status: StudyStatus = StudyStatus.pending,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Study:
    """Insert the study in one transaction, with its final Ray job id: no study is ever stored without
    the job that runs it. An idempotency key already stored raises IntegrityError."""
    study = Study(
        id=study_id,
        name=name,
        spec=spec,
        status=status.value,
        optuna_study_name=f"transched-{study_id}",
        ray_job_id=ray_job_id,
        attempts=0,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(study)
    session.commit()
    return study


def get_by_idempotency_key(session: Session, *, key: str) -> Study | None:
    return session.scalar(select(Study).where(Study.idempotency_key == key))


def admit(session: Session, *, study_id: str, limit: int) -> bool:
    """queued -> pending if fewer than `limit` studies hold a driver; True if admitted. One conditional
    UPDATE, so two API processes admitting at once do not both take the last slot on SQLite (writes are
    serialised); on PostgreSQL two concurrent admissions may overshoot the limit by one."""
    other = aliased(Study)
    active = (
        select(func.count())
        .select_from(other)
        .where(other.status.in_([s.value for s in ACTIVE]))
        .scalar_subquery()
    )
    stmt = (
        update(Study)
        .where(Study.id == study_id, Study.status == StudyStatus.queued.value, active < limit)
        .values(status=StudyStatus.pending.value)
        .execution_options(synchronize_session=False)
    )
    admitted = session.execute(stmt).rowcount > 0
    session.commit()
    return admitted


def studies_in(session: Session, *, states: Sequence[StudyStatus]) -> list[Study]:
    """Studies in these states, oldest first (the queue's order)."""
    stmt = select(Study).where(Study.status.in_([s.value for s in states]))
    return list(session.scalars(stmt.order_by(Study.created_at, Study.id)))


def claim_attempt(session: Session, *, study_id: str, attempts: int, ray_job_id: str, note: str) -> bool:
    """Take the study for a new driver: pending again, attempt `attempts + 1`, its new job id. Only if no
    one else took it since it was read as at attempt `attempts` (another API process, a request)."""
    stmt = (
        update(Study)
        .where(
            Study.id == study_id,
            Study.attempts == attempts,
            Study.status.in_([StudyStatus.pending.value, StudyStatus.running.value]),
        )
        .values(
            status=StudyStatus.pending.value,
            attempts=attempts + 1,
            ray_job_id=ray_job_id,
            error=note,
            heartbeat_at=utcnow(),
        )
    )
    claimed = session.execute(stmt).rowcount > 0
    session.commit()
    return claimed


def start_attempt(session: Session, *, study_id: str, attempt: int) -> bool:
    """The driver of attempt `attempt` takes the study (pending or running -> running); False if the study
    ended, is stopping, or belongs to a newer attempt: that driver must not run."""
    stmt = (
        update(Study)
        .where(
            Study.id == study_id,
            Study.attempts == attempt,
            Study.status.in_([StudyStatus.pending.value, StudyStatus.running.value]),
        )
        .values(
            status=StudyStatus.running.value,
            started_at=func.coalesce(Study.started_at, utcnow()),
            heartbeat_at=utcnow(),
        )
    )
    started = session.execute(stmt).rowcount > 0
    session.commit()
    return started


def set_error(session: Session, *, study_id: str, error: str | None, attempt: int | None = None) -> None:
    stmt = update(Study).where(Study.id == study_id)
    if attempt is not None:
        stmt = stmt.where(Study.attempts == attempt)
    session.execute(stmt.values(error=error))
    session.commit()


def get_study(session: Session, *, study_id: str) -> Study | None:
    return session.scalar(select(Study).where(Study.id == study_id))


def list_studies(session: Session, *, offset: int, limit: int) -> tuple[list[Study], int]:
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    rows = session.scalars(
        select(Study).order_by(Study.created_at.desc(), Study.id).offset(offset).limit(limit)
    )
    return list(rows), total


def set_job(session: Session, *, study_id: str, ray_job_id: str) -> None:
    session.execute(update(Study).where(Study.id == study_id).values(ray_job_id=ray_job_id))
    session.commit()


def set_status(
    session: Session,
    *,
    study_id: str,
    status: StudyStatus,
    error: str | None = None,
    only_from: tuple | None = None,
    attempt: int | None = None,
) -> bool:
    """Move a study to `status`; with `only_from`, only if it is in one of those states; with `attempt`,
    only if the study is still at that driver attempt (a dead driver's late words are dropped). True if
    moved."""
    values: dict[str, Any] = {"status": status.value}
    if status == StudyStatus.running:
        values["started_at"] = utcnow()
    if status.terminal:
        values["finished_at"] = utcnow()
    if error is not None:
        values["error"] = error
    stmt = update(Study).where(Study.id == study_id)
    if only_from:
        stmt = stmt.where(Study.status.in_([s.value for s in only_from]))
    if attempt is not None:
        stmt = stmt.where(Study.attempts == attempt)
    moved = session.execute(stmt.values(**values)).rowcount > 0
    session.commit()
    return moved


def heartbeat(session: Session, *, study_id: str) -> None:
    session.execute(update(Study).where(Study.id == study_id).values(heartbeat_at=utcnow()))
    session.commit()


def get_status(session: Session, *, study_id: str) -> StudyStatus | None:
    value = session.scalar(select(Study.status).where(Study.id == study_id))
    return StudyStatus(value) if value else None


# --- trials: read from Optuna's schema ---------------------------------------------------------------

EPOCH_ATTR_PREFIX = "epoch:"


def load_optuna_study(storage: optuna.storages.BaseStorage, *, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # the driver has not created it yet
        return None


def reap_running_trials(storage: optuna.storages.BaseStorage, *, name: str) -> int:
    """Mark RUNNING trials FAIL. Optuna's heartbeat does not run under ask-and-tell (OptunaSearch),
    so trials of a driver that ended or died would stay RUNNING forever otherwise. How many."""
    return len(reap_running_trial_numbers(storage, name=name))


def reap_running_trial_numbers(storage: optuna.storages.BaseStorage, *, name: str) -> list[int]:
    """`reap_running_trials`, answering the numbers of the trials it failed."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:  # the driver never created it
        return []
    reaped = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            reaped.append(t.number)
        except RuntimeError:  # finished between our read and write
            pass
    return reaped


def epoch_history(trial: optuna.trial.FrozenTrial) -> list[dict[str, Any]]:
    keys = sorted(k for k in trial.user_attrs if k.startswith(EPOCH_ATTR_PREFIX))
    return [trial.user_attrs[k] for k in keys]


# Optuna's own tables, named as its RDB schema names them (optuna-dashboard reads the same), with only the
# columns counted here: the trial count of a study is a grouped query, not a load of every trial.
_OPTUNA_STUDIES = table("studies", column("study_id"), column("study_name"))
_OPTUNA_TRIALS = table("trials", column("study_id"), column("state"))


def trial_counts(session: Session, *, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Trials by Optuna state ("COMPLETE", "RUNNING", ...) of each named Optuna study, in one query."""
    if not names:
        return {}
    studies, trials = _OPTUNA_STUDIES, _OPTUNA_TRIALS
    stmt = (
        select(studies.c.study_name, trials.c.state, func.count())
        .join_from(trials, studies, trials.c.study_id == studies.c.study_id)
        .where(studies.c.study_name.in_(list(names)))
        .group_by(studies.c.study_name, trials.c.state)
    )
    counts: dict[str, dict[str, int]] = {}
    for name, state, n in session.execute(stmt):
        counts.setdefault(name, {})[str(state)] = int(n)
    return counts
