"""Keyword-only functions over the study table (SQLAlchemy 2.0 `select()`), and Optuna's trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from service.db import Study, StudyStatus, utcnow


def create_study(session: Session, *, name: str, spec: dict[str, Any], study_id: str) -> Study:
    study = Study(
        id=study_id,
        name=name,
        spec=spec,
        status=StudyStatus.pending.value,
        optuna_study_name=f"transched-{study_id}",
    )
    session.add(study)
    session.commit()
    return study


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
) -> bool:
    """Move a study to `status`; with `only_from`, only if it is in one of those states. True if moved."""
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


def reap_running_trials(
    storage: optuna.storages.BaseStorage,
    *,
    name: str,
    state: optuna.trial.TrialState = optuna.trial.TrialState.FAIL,
) -> int:
    """Mark RUNNING trials FAIL (or `state`: PRUNED for those a stop cut). Optuna's heartbeat does not run
    under ask-and-tell (OptunaSearch), so trials of a driver that ended or died would stay RUNNING forever
    otherwise."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:  # the driver never created it
        return 0
    n = 0
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, state)
            n += 1
        except RuntimeError:  # finished between our read and write
            pass
    return n


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
