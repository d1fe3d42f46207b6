"""Keyword-only functions over the study table (SQLAlchemy 2.0 `select()`), and Optuna's trials."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import optuna
from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    DateTime,
    Enum,
    Float,
    Integer,
    String,
    Text,
    and_,
    case,
    column,
    delete,
    func,
    insert,
    or_,
    over,
    select,
    table,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from service.db import Study, StudyStatus, utcnow

# The states in which a study holds (or is about to hold) a driver: what the admission limit counts.
ACTIVE = (StudyStatus.pending, StudyStatus.running, StudyStatus.stopping)


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


def _update_live_attempt(session: Session, *, study_id: str, attempt: int, **values: Any) -> bool:
    """Set `values` on the study only while it is live (pending or running) at attempt `attempt`: the one
    guard of every hand-over between drivers. False (nothing written) if it ended, is stopping, or
    belongs to another attempt."""
    stmt = (
        update(Study)
        .where(
            Study.id == study_id,
            Study.attempts == attempt,
            Study.status.in_([StudyStatus.pending.value, StudyStatus.running.value]),
        )
        .values(**values, heartbeat_at=utcnow())
    )
    changed = session.execute(stmt).rowcount > 0
    session.commit()
    return changed


def claim_attempt(session: Session, *, study_id: str, attempts: int, ray_job_id: str, note: str) -> bool:
    """Take the study for a new driver: pending again, attempt `attempts + 1`, its new job id. Only if no
    one else took it since it was read as at attempt `attempts` (another API process, a request)."""
    return _update_live_attempt(
        session,
        study_id=study_id,
        attempt=attempts,
        status=StudyStatus.pending.value,
        attempts=attempts + 1,
        ray_job_id=ray_job_id,
        error=note,
    )


def start_attempt(session: Session, *, study_id: str, attempt: int) -> bool:
    """The driver of attempt `attempt` takes the study (pending or running -> running); False if the study
    ended, is stopping, or belongs to a newer attempt: that driver must not run."""
    return _update_live_attempt(
        session,
        study_id=study_id,
        attempt=attempt,
        status=StudyStatus.running.value,
        started_at=func.coalesce(Study.started_at, utcnow()),
    )


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


def reap_running_trials(
    storage: optuna.storages.BaseStorage,
    *,
    name: str,
    state: optuna.trial.TrialState = optuna.trial.TrialState.FAIL,
) -> int:
    """Mark RUNNING trials FAIL (or `state`: PRUNED for those a stop cut). Optuna's heartbeat does not run
    under ask-and-tell (the driver's ledger), so trials of a driver that ended or died would stay RUNNING
    forever otherwise. How many."""
    return len(reap_running_trial_numbers(storage, name=name, state=state))


def reap_running_trial_numbers(
    storage: optuna.storages.BaseStorage,
    *,
    name: str,
    state: optuna.trial.TrialState = optuna.trial.TrialState.FAIL,
) -> list[int]:
    """`reap_running_trials`, answering the numbers of the trials it marked."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:  # the driver never created it
        return []
    reaped = []
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, state)
            reaped.append(t.number)
        except RuntimeError:  # finished between our read and write
            pass
    return reaped


def epoch_history(trial: optuna.trial.FrozenTrial) -> list[dict[str, Any]]:
    keys = sorted(k for k in trial.user_attrs if k.startswith(EPOCH_ATTR_PREFIX))
    return [trial.user_attrs[k] for k in keys]


# Optuna's own tables, named and typed as its RDB schema (optuna/storages/_rdb/models.py) has them, with
# only the columns read here (optuna-dashboard and `optuna.load_study` read the same rows). Every read
# below touches only the rows its answer needs: a grouped count, a LIMIT/OFFSET page of trial ids with the
# values, params and user attrs of those ids only, the best trial by an ORDER BY ... LIMIT over the study's
# COMPLETE trials. Enum columns carry Optuna's enum types (PostgreSQL stores them as its own ENUM types).
_STATE = Enum(TrialState, name="trialstate")
_VALUE_TYPE = Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype")
_DIRECTION = Enum(StudyDirection, name="studydirection")
_OPTUNA_STUDIES = table("studies", column("study_id", Integer), column("study_name", String))
_OPTUNA_TRIALS = table(
    "trials",
    column("trial_id", Integer),
    column("number", Integer),
    column("study_id", Integer),
    column("state", _STATE),
    column("datetime_start", DateTime),
    column("datetime_complete", DateTime),
)
_OPTUNA_VALUES = table(
    "trial_values",
    column("trial_id", Integer),
    column("objective", Integer),
    column("value", Float),
    column("value_type", _VALUE_TYPE),
)
_OPTUNA_PARAMS = table(
    "trial_params",
    column("param_id", Integer),
    column("trial_id", Integer),
    column("param_name", String),
    column("param_value", Float),
    column("distribution_json", Text),
)
_OPTUNA_USER_ATTRS = table(
    "trial_user_attributes", column("trial_id", Integer), column("key", String), column("value_json", Text)
)
_OPTUNA_DIRECTIONS = table(
    "study_directions",
    column("study_id", Integer),
    column("objective", Integer),
    column("direction", _DIRECTION),
)


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
        counts.setdefault(name, {})[state.name] = int(n)
    return counts


def _study_trials(name: str):  # the trials of one named Optuna study
    studies, trials = _OPTUNA_STUDIES, _OPTUNA_TRIALS
    return trials.join(studies, trials.c.study_id == studies.c.study_id), studies.c.study_name == name


def trial_page(session: Session, *, name: str, offset: int, limit: int) -> tuple[list[FrozenTrial], int]:
    """Trials `offset`..`offset + limit` of a named Optuna study by number, and its trial count: the
    page's rows only, however many trials the study has."""
    trials = _OPTUNA_TRIALS
    joined, of_study = _study_trials(name)
    total = session.scalar(select(func.count()).select_from(joined).where(of_study)) or 0
    ids = session.scalars(
        select(trials.c.trial_id)
        .select_from(joined)
        .where(of_study)
        .order_by(trials.c.number, trials.c.trial_id)
        .offset(offset)
        .limit(limit)
    ).all()
    return frozen_trials(session, trial_ids=ids), total


def _local_naive(utc: datetime | None) -> datetime | None:
    # Optuna stores naive UTC and hands back naive local time (TrialModel.datetime_start).
    return None if utc is None else utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def _stored_value(value: float | None, value_type: str) -> float:
    return {"INF_POS": float("inf"), "INF_NEG": float("-inf")}.get(value_type, value)  # type: ignore[return-value]


def frozen_trials(session: Session, *, trial_ids: Sequence[int]) -> list[FrozenTrial]:
    """The trials of these ids, in this order, as Optuna's `FrozenTrial`s: number, state, values,
    datetimes, params with their distributions and user attrs, as `Study.get_trials()` has them (not
    their system attrs or intermediate values, which the service does not show). Four queries."""
    ids = list(trial_ids)
    if not ids:
        return []
    t, v, p, a = _OPTUNA_TRIALS, _OPTUNA_VALUES, _OPTUNA_PARAMS, _OPTUNA_USER_ATTRS
    # The trials' rows (their states) first: each query sees what was committed when it ran, and Optuna
    # commits a trial's values with its COMPLETE state, so values read after the state are there. Read
    # the other way round, a trial told meanwhile showed COMPLETE with no value.
    rows = {row.trial_id: row for row in session.execute(select(t).where(t.c.trial_id.in_(ids)))}
    values: dict[int, dict[int, float]] = {}
    for tid, objective, value, vtype in session.execute(
        select(v.c.trial_id, v.c.objective, v.c.value, v.c.value_type).where(v.c.trial_id.in_(ids))
    ):
        values.setdefault(tid, {})[objective] = _stored_value(value, vtype)
    params: dict[int, list[tuple[str, float, str]]] = {}
    for tid, pname, pvalue, dist in session.execute(
        select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json)
        .where(p.c.trial_id.in_(ids))
        .order_by(p.c.param_id)
    ):
        params.setdefault(tid, []).append((pname, pvalue, dist))
    attrs: dict[int, dict[str, Any]] = {}
    found = session.execute(select(a.c.trial_id, a.c.key, a.c.value_json).where(a.c.trial_id.in_(ids))).all()
    # One parse of all the page's attrs (each a JSON document, as Optuna wrote it): thousands of
    # json.loads calls were 40% of a page's time.
    for (tid, key, _), value in zip(found, json.loads(f"[{','.join(r[2] for r in found)}]"), strict=True):
        attrs.setdefault(tid, {})[key] = value
    return [_frozen(rows[i], values.get(i), params.get(i, []), attrs.get(i, {})) for i in ids if i in rows]


def frozen_trials_by_id(session: Session, *, trial_ids: Sequence[int]) -> dict[int, FrozenTrial]:
    """`frozen_trials` keyed by trial id (an id with no trial is left out)."""
    ids = list(dict.fromkeys(trial_ids))
    found = (
        {
            row.trial_id
            for row in session.execute(
                select(_OPTUNA_TRIALS.c.trial_id).where(_OPTUNA_TRIALS.c.trial_id.in_(ids))
            )
        }
        if ids
        else set()
    )
    kept = [i for i in ids if i in found]
    return dict(zip(kept, frozen_trials(session, trial_ids=kept), strict=True))


def trials_by_number(session: Session, numbers: dict[str, int]) -> dict[str, FrozenTrial]:
    """The trial of each named Optuna study with the given number (left out where there is none)."""
    if not numbers:
        return {}
    studies, trials = _OPTUNA_STUDIES, _OPTUNA_TRIALS
    which = or_(*(and_(studies.c.study_name == n, trials.c.number == k) for n, k in numbers.items()))
    rows = session.execute(
        select(studies.c.study_name, trials.c.trial_id)
        .join_from(trials, studies, trials.c.study_id == studies.c.study_id)
        .where(which)
    ).all()
    by_id = frozen_trials_by_id(session, trial_ids=[tid for _, tid in rows])
    return {name: by_id[tid] for name, tid in rows if tid in by_id}


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> Any:  # a study's trials share a few distributions
    return json_to_distribution(distribution_json)


def _frozen(row: Any, values: dict[int, float] | None, params: list, attrs: dict[str, Any]) -> FrozenTrial:
    dists = {name: _distribution(dist) for name, _, dist in params}
    return FrozenTrial(
        number=row.number,
        state=row.state,
        value=None,
        values=[values[k] for k in sorted(values)] if values else None,
        datetime_start=_local_naive(row.datetime_start),
        datetime_complete=_local_naive(row.datetime_complete),
        params={name: dists[name].to_external_repr(value) for name, value, _ in params},
        distributions=dists,
        user_attrs=attrs,
        system_attrs={},
        intermediate_values={},
        trial_id=row.trial_id,
    )


def _best_first(direction_col: Any) -> list[Any]:
    """ORDER BY terms putting a study's best first value first under its direction (objective 0),
    infinities ranked as Optuna ranks them, the earliest trial on ties."""
    v, t = _OPTUNA_VALUES, _OPTUNA_TRIALS
    rank = case((v.c.value_type == "INF_NEG", -1), (v.c.value_type == "INF_POS", 1), else_=0)
    sign = case((direction_col == StudyDirection.MAXIMIZE, -1), else_=1)
    return [sign * rank, sign * func.coalesce(v.c.value, 0.0), t.c.number]


def _complete_ranked():  # COMPLETE trials with their first value and their study's direction
    t, v, d = _OPTUNA_TRIALS, _OPTUNA_VALUES, _OPTUNA_DIRECTIONS
    return (
        t.join(v, and_(v.c.trial_id == t.c.trial_id, v.c.objective == 0))
        .join(d, and_(d.c.study_id == t.c.study_id, d.c.objective == 0))
        .join(_OPTUNA_STUDIES, _OPTUNA_STUDIES.c.study_id == t.c.study_id)
    ), t.c.state == TrialState.COMPLETE


def best_trial_ids(session: Session, *, names: Sequence[str]) -> dict[str, int]:
    """The id of the best COMPLETE trial of each named Optuna study that has one (the earliest on ties),
    in one query whatever the number of studies: a window over the studies' complete trials."""
    if not names:
        return {}
    joined, complete = _complete_ranked()
    s, d, t = _OPTUNA_STUDIES, _OPTUNA_DIRECTIONS, _OPTUNA_TRIALS
    position = over(func.row_number(), partition_by=t.c.study_id, order_by=_best_first(d.c.direction))
    ranked = (
        select(s.c.study_name, t.c.trial_id, position.label("position"))
        .select_from(joined)
        .where(complete, s.c.study_name.in_(list(names)))
        .subquery()
    )
    rows = session.execute(select(ranked.c.study_name, ranked.c.trial_id).where(ranked.c.position == 1))
    return dict(rows.tuples().all())


def best_trials(session: Session, *, names: Sequence[str]) -> dict[str, FrozenTrial]:
    """The best COMPLETE trial of each named Optuna study that has one (the earliest on ties)."""
    ids = best_trial_ids(session, names=names)
    by_id = frozen_trials_by_id(session, trial_ids=list(ids.values()))
    return {name: by_id[i] for name, i in ids.items() if i in by_id}


def complete_trials_best_first(session: Session, *, name: str, batch: int = 50) -> Iterator[FrozenTrial]:
    """The COMPLETE trials of a named Optuna study, best first (the earliest on ties), fetched `batch`
    at a time: a caller looking for the best trial of some kind reads only as far as its first match."""
    joined, complete = _complete_ranked()
    d, s, t = _OPTUNA_DIRECTIONS, _OPTUNA_STUDIES, _OPTUNA_TRIALS
    stmt = select(t.c.trial_id).select_from(joined).where(complete, s.c.study_name == name)
    stmt = stmt.order_by(*_best_first(d.c.direction))
    offset = 0
    while True:
        ids = session.scalars(stmt.offset(offset).limit(batch)).all()
        yield from frozen_trials(session, trial_ids=ids)
        if len(ids) < batch:
            return
        offset += batch


_OPTUNA_INTERMEDIATE = table(
    "trial_intermediate_values",
    column("trial_id", Integer),
    column("step", Integer),
    column("intermediate_value", Float),
    column(
        "intermediate_value_type",
        Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype"),
    ),
)


def _intermediate_repr(value: float) -> tuple[float | None, str]:
    # As Optuna's TrialIntermediateValueModel.intermediate_value_to_stored_repr stores it.
    if math.isnan(value):
        return None, "NAN"
    if math.isinf(value):
        return None, "INF_POS" if value > 0 else "INF_NEG"
    return value, "FINITE"


def write_trial_facts(
    session: Session,
    *,
    trial_id: int,
    attrs: dict[str, Any],
    step: int | None = None,
    value: float | None = None,
) -> bool:
    """Set user attrs of a RUNNING trial (and its intermediate `value` at `step`) in one transaction, as
    Optuna's `set_trial_user_attr` / `set_trial_intermediate_value` would one transaction each (values as
    JSON, an existing key or step replaced). False, and nothing written, if the trial is not RUNNING
    (Optuna refuses to change a finished trial). Safe to repeat: a retried call writes the same rows."""
    t, a, iv = _OPTUNA_TRIALS, _OPTUNA_USER_ATTRS, _OPTUNA_INTERMEDIATE
    state = session.scalar(select(t.c.state).where(t.c.trial_id == trial_id))
    if state != TrialState.RUNNING:
        session.rollback()
        return False
    if attrs:
        session.execute(delete(a).where(a.c.trial_id == trial_id, a.c.key.in_(list(attrs))))
        session.execute(
            insert(a),
            [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()],
        )
    if step is not None and value is not None:
        stored, kind = _intermediate_repr(float(value))
        session.execute(delete(iv).where(iv.c.trial_id == trial_id, iv.c.step == step))
        session.execute(
            insert(iv).values(
                trial_id=trial_id, step=step, intermediate_value=stored, intermediate_value_type=kind
            )
        )
    session.commit()
    return True


_OPTUNA_SYSTEM_ATTRS = table(
    "trial_system_attributes", column("trial_id", Integer), column("key", String), column("value_json", Text)
)


def create_running_trial(
    session: Session,
    *,
    study_id: int,
    params: dict[str, tuple[float, str]],
    user_attrs: dict[str, Any],
    system_attrs: dict[str, Any],
) -> tuple[int, int]:
    """A new RUNNING trial of an Optuna study with its params (name -> (internal value, distribution
    JSON)) and attributes, in one transaction, as Optuna's `create_new_trial` with a template writes it
    (numbered like Optuna, under a lock of the study's row: the trials before it in the study). The
    trial's (id, number)."""
    studies, t = _OPTUNA_STUDIES, _OPTUNA_TRIALS
    session.execute(select(studies.c.study_id).where(studies.c.study_id == study_id).with_for_update())
    number = session.scalar(select(func.count()).select_from(t).where(t.c.study_id == study_id)) or 0
    row = {
        "study_id": study_id,
        "number": number,
        "state": TrialState.RUNNING,
        "datetime_start": datetime.now(),
    }
    trial_id = session.execute(insert(t).values(**row).returning(t.c.trial_id)).scalar_one()
    if params:
        session.execute(
            insert(_OPTUNA_PARAMS),
            [
                {"trial_id": trial_id, "param_name": k, "param_value": v, "distribution_json": d}
                for k, (v, d) in params.items()
            ],
        )
    for target, attrs in ((_OPTUNA_USER_ATTRS, user_attrs), (_OPTUNA_SYSTEM_ATTRS, system_attrs)):
        if attrs:
            session.execute(
                insert(target),
                [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()],
            )
    session.commit()
    return trial_id, number


def trial_created_with(session: Session, *, study_id: int, key: str, token: str) -> tuple[int, int] | None:
    """The (id, number) of the study's trial whose system attr `key` is `token`, if there is one: the trial
    a creation whose answer was lost did make."""
    t, a = _OPTUNA_TRIALS, _OPTUNA_SYSTEM_ATTRS
    row = session.execute(
        select(t.c.trial_id, t.c.number)
        .join_from(a, t, a.c.trial_id == t.c.trial_id)
        .where(t.c.study_id == study_id, a.c.key == key, a.c.value_json == json.dumps(token))
    ).first()
    return (row.trial_id, row.number) if row else None


def finish_trial(
    session: Session,
    *,
    trial_id: int,
    state: TrialState,
    value: float | None,
    attrs: dict[str, Any] | None = None,
) -> bool:
    """End a RUNNING trial: its state, its value (objective 0) and completion time, and `attrs` (user
    attrs) with them, in one transaction, as Optuna's `set_trial_state_values` writes them. False, and
    nothing written, if the trial is not RUNNING (ended already: a repeated call finds it so)."""
    t = _OPTUNA_TRIALS
    moved = session.execute(
        update(t)
        .where(t.c.trial_id == trial_id, t.c.state == TrialState.RUNNING)
        .values(state=state, datetime_complete=datetime.now())
    ).rowcount
    if not moved:
        session.rollback()
        return False
    if value is not None:
        stored = (
            (None, "INF_POS")
            if value == math.inf
            else (None, "INF_NEG")
            if value == -math.inf
            else (value, "FINITE")
        )
        session.execute(
            insert(_OPTUNA_VALUES).values(
                trial_id=trial_id, objective=0, value=stored[0], value_type=stored[1]
            )
        )
    if attrs:
        a = _OPTUNA_USER_ATTRS
        session.execute(delete(a).where(a.c.trial_id == trial_id, a.c.key.in_(list(attrs))))
        session.execute(
            insert(a),
            [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()],
        )
    session.commit()
    return True


# Indexes on Optuna's `trials` table for the reads above: a page by number and the counts by state walk an
# index of the study's entries instead of sorting or reading its rows. Optuna's schema check reads only its
# version table, so extra indexes leave `optuna.load_study` and optuna-dashboard as they are.
OPTUNA_INDEXES = {
    "ix_transched_trials_study_number": "trials (study_id, number)",
    "ix_transched_trials_study_state": "trials (study_id, state)",
}


def ensure_optuna_indexes(connection: Connection) -> None:
    """Create the indexes of `OPTUNA_INDEXES` that are missing (idempotent; Optuna's tables must exist)."""
    for name, on in OPTUNA_INDEXES.items():
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON {on}"))
