"""The ledger: the one owner of a study's trials.

Everything the service knows of a trial lives in Optuna's study in the SQL store (optuna-dashboard and
`optuna.load_study` read the same rows), and this module is the one place that knows how:

- `TrialRecord`: a trial's facts, typed (its sampled config, origin, where it ran, epochs, error, ...),
  with the one mapping to and from Optuna's user attributes (`TrialRecord.from_trial`, `.attrs`);
- `Plan` / `plan_study`: what a driver runs: the trials still missing to the study's `n_trials`, first
  the configs a dead driver left unfinished (each resumes from its epoch checkpoint), then the method
  points of arms not tried yet. Raising the target or seeding from other studies' trials is one more
  input to the plan;
- `Ledger`: the driver's writer. TPE samples from an in-memory copy of the study (the *shadow*, loaded
  with the stored trials once), so asking for a config reads nothing; a trial is created with its params
  and attributes in one transaction, each reported result (its attributes and intermediate value) is one
  transaction, and the tell (state, value, completion time) is one more, all written to Optuna's tables
  as Optuna's own storage writes them (service.repository). Every write is committed before the
  searcher returns to Tune (issue 8: a result Tune has moved past is never lost), and retried across a
  database outage;
- `best_trial`: the one definition of a study's best trial (the highest value, the earliest trial on
  ties), used by `/best`, the report and the driver's summary line.

Optuna is used through its public API only: `create_study`/`ask`/`tell`/`enqueue_trial`/`add_trials` on
the shadow, `BaseStorage` calls (reaping, reading a trial) on the store. A trial's writes go to Optuna's
tables directly, one transaction each where Optuna's storage API makes one per attribute (B2 in
BENCHMARKS.md: that was most of the driver's cost of a trial), which is why the server and the driver
check Optuna's schema version at start (service.db.check_optuna_schema).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from service import repository as repo
from service.repository import EPOCH_ATTR_PREFIX, epoch_history

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from service.db_retry import DbRetry

logger = logging.getLogger("transched.ledger")

OBJECTIVE_NAME = "val_acc"  # the objective's name in Optuna: a trial's best validation accuracy

# --- a trial's record and its user attributes ---------------------------------------------------------

# The user attribute keys of a trial, each the record field of the same meaning (see TrialRecord.attrs).
SAMPLED = "sampled"  # the sampled config, constants of the space included (Optuna's params lack them)
RETRY_OF = "retry_of"  # origin: reruns trial n, a dead driver's, from its last epoch checkpoint
REUSED_FROM = "reused_from"  # origin: the result of trial n, whose config was the same (service.reuse)
WARM_FROM = "warm_from"  # origin: "<study id>:<trial number>", a trial of an earlier study run again
# Facts a reusing trial copies from the trial whose result it reuses (with its epochs).
COPIED = ("test_acc", "best_epoch", "total_steps", "info", "node", "node_id", "device")
# The attributes a trial's run writes, record field = attribute key (epochs and rungs are apart).
RUN_FIELDS = (
    "node",
    "node_id",
    "device",
    "started_at",
    "finished_at",
    "restarts",
    "total_steps",
    "best_epoch",
    "test_acc",
    "info",
    "error",
    "error_kind",
)

OriginKind = Literal["new", "retry", "reused", "warm"]


@dataclass(frozen=True)
class Origin:
    """Where a trial's config came from: sampled (`new`), the rerun of trial `of` (`retry`), the reused
    result of trial `of` (`reused`), or trial `of` ("<study>:<number>") of an earlier study (`warm`)."""

    kind: OriginKind = "new"
    of: int | str | None = None

    def attrs(self) -> dict[str, Any]:
        key = {"retry": RETRY_OF, "reused": REUSED_FROM, "warm": WARM_FROM}.get(self.kind)
        return {key: self.of} if key else {}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Origin:
        for kind, key in (("retry", RETRY_OF), ("reused", REUSED_FROM), ("warm", WARM_FROM)):
            if attrs.get(key) is not None:
                return cls(kind, attrs[key])  # type: ignore[arg-type]
        return cls()


@dataclass
class TrialRecord:
    """A trial's facts, as the store keeps them (Optuna's state, value and datetimes beside them)."""

    number: int
    sampled: dict[str, Any] = field(default_factory=dict)
    origin: Origin = field(default_factory=Origin)
    state: str = "RUNNING"
    value: float | None = None
    node: str | None = None
    node_id: str | None = None
    device: str | None = None
    started_at: float | None = None  # the trainable's start (time.time()), its first attempt's
    finished_at: float | None = None  # its last report
    restarts: int = 0  # reruns after its worker or node died
    total_steps: int | None = None
    best_epoch: int | None = None
    test_acc: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # the trainer's report of each epoch
    rungs: list[dict[str, Any]] = field(default_factory=list)  # schedule_sh: each compressed rung's end
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None

    @property
    def arm(self) -> str:
        """The study arm the trial belongs to: its method, or ``<method>+schedule``."""
        from search_spaces import arm_name

        return arm_name(self.sampled["method"], bool(self.sampled.get("schedule")))

    def attrs(self) -> dict[str, Any]:
        """The record as Optuna user attributes (what is set; epochs as ``epoch:00001``, ...)."""
        out: dict[str, Any] = {SAMPLED: self.sampled, **self.origin.attrs()}
        for name in RUN_FIELDS:
            value = getattr(self, name)
            unset = value is None or (name == "info" and not value) or (name == "restarts" and value == 0)
            if not unset:
                out[name] = value
        if self.rungs:
            out["rungs"] = self.rungs
        out.update(epoch_attrs(self.epochs))
        return out

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        attrs = trial.user_attrs
        state = trial.state.name
        return cls(
            number=trial.number,
            sampled=sampled_config(trial),
            origin=Origin.from_attrs(attrs),
            state=state,
            value=trial.value if state == "COMPLETE" else None,
            **{name: attrs.get(name) for name in RUN_FIELDS if name not in ("restarts", "info")},
            restarts=attrs.get("restarts", 0),
            info=attrs.get("info") or {},
            epochs=epoch_history(trial),
            rungs=attrs.get("rungs", []),
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
        )


def epoch_key(epoch: int) -> str:
    return f"{EPOCH_ATTR_PREFIX}{int(epoch):05d}"


def epoch_attrs(epochs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {epoch_key(e["epoch"]): e for e in epochs}


def sampled_config(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's sampled config: Optuna's params plus the constants of the space (e.g. the method of a
    one-method study), as the driver stored them."""
    return dict(trial.user_attrs.get(SAMPLED) or trial.params)


def trial_arm(trial: FrozenTrial) -> str:
    """The study arm a trial belongs to (see TrialRecord.arm)."""
    from search_spaces import arm_name

    p = sampled_config(trial)
    return arm_name(p["method"], bool(p.get("schedule")))


# --- the best trial -----------------------------------------------------------------------------------


def best_first(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """COMPLETE trials, best first: the highest value, the earliest trial on ties (the order of
    `repository.complete_trials_best_first`, which ranks them in SQL)."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    return sorted(done, key=lambda t: (-t.value, t.number))


class BestCache:
    """Best trial numbers by (database, Optuna study name, its number of COMPLETE trials, filter name):
    the best of a study is found once per new completed trial, not on every read. It stays correct while
    a study runs: Optuna never changes a finished trial, so COMPLETE trials only ever join a study, and a
    study with as many as when its best was found has the same ones, and the same best. Bounded."""

    def __init__(self, size: int = 4096):
        self.numbers: OrderedDict[tuple[str, str, int, str | None], int | None] = OrderedDict()
        self.size, self.lock = size, threading.Lock()

    def get(self, key: tuple[str, str, int, str | None]) -> int | None | bool:
        """The cached number (None: no such trial), or False where nothing is cached."""
        with self.lock:
            return self.numbers.get(key, False)

    def put(self, key: tuple[str, str, int, str | None], number: int | None) -> None:
        with self.lock:
            self.numbers[key] = number
            while len(self.numbers) > self.size:
                self.numbers.popitem(last=False)


BEST = BestCache()


def _database(session: Session) -> str:  # one process may read several databases (tests, tools)
    return session.get_bind().url.render_as_string(hide_password=True)


def bests(session: Session, names: list[str]) -> dict[str, FrozenTrial]:
    """The best trial of each named Optuna study that has one: from the cache, or one window query for
    the studies whose completed trials changed since; then those trials."""
    counts = repo.trial_counts(session, names=names)
    db = _database(session)
    keys = {n: (db, n, counts.get(n, {}).get("COMPLETE", 0), None) for n in names}
    numbers = {n: BEST.get(k) for n, k in keys.items() if k[2]}  # no completed trial: no best
    missing = [n for n, i in numbers.items() if i is False]
    for name, trial in repo.best_trials(session, names=missing).items():
        numbers[name] = trial.number
    for name in missing:
        numbers[name] = numbers[name] if numbers[name] is not False else None
        BEST.put(keys[name], numbers[name])  # type: ignore[arg-type]
    wanted = {n: i for n, i in numbers.items() if isinstance(i, int) and i is not False}
    return repo.trials_by_number(session, wanted)


def best_trial(
    storage: BaseStorage,
    *,
    name: str,
    where: Callable[[FrozenTrial], bool] | None = None,
    key: str | None = None,
) -> FrozenTrial | None:
    """THE best trial of a study: its highest-valued COMPLETE trial, the earliest on ties; of those `where`
    keeps if given (`key` names the filter, for the cache). None if there is none. Read from the store:
    one ORDER BY over the study's complete trials once per newly completed trial; with a filter, best
    first only until the first trial it keeps."""
    from sqlalchemy.orm import Session

    with Session(storage.engine) as session:  # type: ignore[attr-defined]  # an RDBStorage: the store
        if where is None:
            return bests(session, [name]).get(name)
        counts = repo.trial_counts(session, names=[name])
        cache_key = (_database(session), name, counts.get(name, {}).get("COMPLETE", 0), key)
        number = BEST.get(cache_key) if key is not None else False
        if number is False:
            best = next((t for t in repo.complete_trials_best_first(session, name=name) if where(t)), None)
            if key is not None:
                BEST.put(cache_key, best.number if best else None)
            return best
        if number is None:
            return None
        return repo.trials_by_number(session, {name: number}).get(name)  # type: ignore[dict-item]


# --- the plan of what a driver runs -------------------------------------------------------------------


@dataclass
class Queued:
    """A config to run before TPE samples: fixed params (all of a retry's, or only the method of a method
    point), with the origin and any user attributes the trial starts with."""

    params: dict[str, Any]
    origin: Origin = field(default_factory=Origin)


@dataclass
class Plan:
    """What a driver runs: `remaining` trials, the `queued` configs first (retries, then method points)."""

    remaining: int
    attempt: int = 0
    queued: list[Queued] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)  # arms some trial of the study has run
    retried: list[int] = field(default_factory=list)  # trials left RUNNING whose configs run again
    finished: list[FrozenTrial] = field(default_factory=list)  # the stored finished trials, for TPE


def plan_study(storage: BaseStorage, *, name: str, n_trials: int, attempt: int, arms: list[str]) -> Plan:
    """Take over the study a dead driver left (for a new study: all its trials, the method points).

    Trials left RUNNING are marked FAIL, and each one's config is queued once more with origin `retry`
    (the trainable resumes it from that trial's last epoch checkpoint); a trial that was itself a retry,
    or whose retry exists, is not retried again (a retry the dead driver never created is: the trial
    keeps the system attr TO_RETRY). Finished trials: COMPLETE, PRUNED, and FAIL except a
    failed trial whose retry is queued (the retry takes its place). The driver runs `n_trials` minus
    those. A WAITING trial (enqueued by an older version) is failed and its config queued in its place.
    Arms no trial has tried get a method point each (a study of several arms), never more than are left.
    """
    import optuna

    state = optuna.trial.TrialState
    plan = Plan(remaining=n_trials, attempt=attempt)
    study = repo.load_optuna_study(storage, name=name)
    if study is not None:
        trials = study.get_trials(deepcopy=False)
        retried_of = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
        for t in trials:  # a dead driver's trial is marked to be retried (durably) before it is failed
            if t.state == state.RUNNING and RETRY_OF not in t.user_attrs and t.number not in retried_of:
                _mark_for_retry(storage, name=name, number=t.number)
        repo.reap_running_trial_numbers(storage, name=name)
        for t in study.get_trials(deepcopy=False):
            if t.system_attrs.get(TO_RETRY) and t.number not in retried_of:
                plan.queued.append(Queued(dict(t.params), Origin("retry", t.number)))
                retried_of.add(t.number)
                plan.retried.append(t.number)
            elif t.state == state.WAITING:  # enqueued by an older version: run as a new trial instead
                _replace_waiting(storage, name=name, number=t.number)
                fixed = dict(t.system_attrs.get("fixed_params") or {})
                plan.queued.append(Queued(fixed, Origin.from_attrs(t.user_attrs)))
        trials = study.get_trials(deepcopy=False)
        plan.finished = [
            t
            for t in trials
            if t.state in (state.COMPLETE, state.PRUNED)
            or (t.state == state.FAIL and t.number not in retried_of and not t.system_attrs.get(REPLACED))
        ]
        plan.remaining = max(n_trials - len(plan.finished), 0)
        for t in trials:  # a replaced WAITING trial did not run: its queued config counts, if it runs
            fixed = t.system_attrs.get("fixed_params") or {}
            if t.system_attrs.get(REPLACED):
                continue
            if t.user_attrs.get(SAMPLED) or fixed.get("method"):
                plan.tried.add(trial_arm(t) if t.user_attrs.get(SAMPLED) else fixed["method"])
        logger.info(
            "attempt %d of %s: %d finished trials kept, %d left RUNNING retried (%s), %d to run",
            attempt, name, len(plan.finished), len(plan.retried), plan.retried, plan.remaining,
        )  # fmt: skip
    if len(arms) > 1:  # each method once before TPE chooses, so every method of the study is tried
        queued = {q.params.get("method") for q in plan.queued}
        points = [Queued({"method": a}) for a in arms if a not in plan.tried and a not in queued]
        plan.queued += points
    plan.queued = plan.queued[: plan.remaining]  # never more than trials are left
    return plan


CREATED_BY = "transched:created_by"  # system attr: the token of the creation that made a trial
REPLACED = "transched:replaced"  # system attr of a WAITING trial failed in place of running it
TO_RETRY = "transched:to_retry"  # system attr of a trial a dead driver left RUNNING: its config runs again


def _mark_for_retry(storage: BaseStorage, *, name: str, number: int) -> None:
    """Mark a trial left RUNNING for a retry before it is failed: a driver that dies before the retry
    is created still leaves the mark, and the next one retries it (the mark and the retry's `retry_of`
    are the only record of it: nothing is enqueued in the store)."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
    storage.set_trial_system_attr(trial_id, TO_RETRY, True)


def _replace_waiting(storage: BaseStorage, *, name: str, number: int) -> None:
    """Fail a WAITING trial (marked REPLACED: not one of the study's count), whose config runs as a new
    trial: Optuna's ask would run it with the store's sampler, not the shadow's."""
    import optuna

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)
    storage.set_trial_system_attr(trial_id, REPLACED, True)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)


# --- the driver's writer ------------------------------------------------------------------------------


@dataclass
class Draft:
    """A config asked for and not yet a trial of the store: its shadow trial (TPE's pending guess)."""

    shadow: optuna.Trial
    config: dict[str, Any]
    origin: Origin


class Ledger:
    """The driver's account of its study: TPE asks on the in-memory shadow, every fact is written to the
    store (`storage`, the service's retrying RDBStorage; `connect`, opening a connection to the same
    database, `Engine.connect`, for the writes Optuna's API makes one transaction each: a Core connection,
    not an ORM session, as nothing here is an ORM object; `db`, the outage retry)."""

    def __init__(
        self,
        storage: BaseStorage,
        *,
        name: str,
        connect: Callable[[], Connection],
        db: DbRetry,
        sampler: optuna.samplers.BaseSampler,
        space: Callable[[Any], dict[str, Any] | None],
        plan: Plan,
    ):
        import optuna

        self.storage, self.name, self.connect, self.db, self.space = storage, name, connect, db, space
        self.study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True
        )
        self.study_id = storage.get_study_id_from_name(name)
        with _quiet_optuna():
            self.shadow = optuna.create_study(
                storage=optuna.storages.InMemoryStorage(), sampler=sampler, direction="maximize"
            )
            self.shadow.add_trials(plan.finished)  # TPE sees every finished trial of the study
            for queued in plan.queued:
                self.shadow.enqueue_trial(
                    queued.params, user_attrs={"origin": [queued.origin.kind, queued.origin.of]}
                )
        self.live: dict[int, TrialRecord] = {}  # number -> the record of a trial being run
        self.trial_ids: dict[int, int] = {}  # number -> the store's trial id
        self.shadows: dict[int, optuna.Trial] = {}  # number -> its shadow trial
        self.last_values: dict[int, float] = {}  # number -> its latest intermediate value

    def ask(self) -> Draft:
        """The next config: a queued one first, then TPE's (nothing is read or written in the store)."""
        with _quiet_optuna():
            trial = self.shadow.ask()
            constants = self.space(trial) or {}
        kind, of = trial.user_attrs.get("origin", ("new", None))
        return Draft(trial, {**trial.params, **constants}, Origin(kind, of))

    def start(self, draft: Draft, *, copied: TrialRecord | None = None) -> TrialRecord:
        """The draft as a RUNNING trial of the store, with its params and attributes, in one transaction.
        `copied`: a trial whose result this one reuses (its epochs and findings are copied)."""
        from optuna.distributions import distribution_to_json

        record = TrialRecord(number=-1, sampled=draft.config, origin=draft.origin)
        if copied is not None:
            record.epochs = list(copied.epochs)
            for name in COPIED:
                setattr(record, name, getattr(copied, name))
        elif draft.origin.kind == "retry":  # keeps the earlier trial's epochs (those it trains again are
            record.epochs = self.record_of(int(draft.origin.of)).epochs  # stored over them)
        shadow = draft.shadow
        params = {
            name: (dist.to_internal_repr(shadow.params[name]), distribution_to_json(dist))
            for name, dist in shadow.distributions.items()
        }
        trial_id, record.number = self._create(params, record.attrs())
        self.live[record.number], self.trial_ids[record.number] = record, trial_id
        self.shadows[record.number] = draft.shadow
        return record

    def _create(self, params: dict[str, tuple[float, str]], attrs: dict[str, Any]) -> tuple[int, int]:
        """Create the trial (service.repository.create_running_trial), retried across an outage. The
        trial carries a token of its creation: an attempt after one whose answer was lost adopts the
        trial that one made instead of making a second."""
        from service.db_retry import with_session

        token, attempts = uuid.uuid4().hex, 0

        def once(session: Connection) -> tuple[int, int]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                made = repo.trial_created_with(session, study_id=self.study_id, key=CREATED_BY, token=token)
                if made is not None:
                    logger.warning("adopted trial %d, made by an attempt whose answer was lost", made[1])
                    return made
            return repo.create_running_trial(
                session,
                study_id=self.study_id,
                params=params,
                user_attrs=attrs,
                system_attrs={CREATED_BY: token},
            )

        return with_session(self.connect, self.db, once)

    def record_of(self, number: int) -> TrialRecord:
        """A stored trial's record (of a trial this driver runs: the live one)."""
        if number in self.live:
            return self.live[number]
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        return TrialRecord.from_trial(self.storage.get_trial(trial_id))

    def write(
        self, number: int, attrs: dict[str, Any], *, step: int | None = None, value: float | None = None
    ) -> None:
        """Some of a live trial's attributes (and its intermediate `value` at `step`), in one transaction."""
        from service.db_retry import with_session

        written = with_session(
            self.connect, self.db, repo.write_trial_facts,
            trial_id=self.trial_ids[number], attrs=attrs, step=step, value=value,
        )  # fmt: skip
        if not written:
            logger.warning("trial %d is no longer running: its result was not stored", number)
        elif step is not None and value is not None:
            self.last_values[number] = float(value)
            shadow = self.shadows.get(number)
            if shadow is not None:  # TPE ranks a pruned trial by its learning curve, as on the store
                with _quiet_optuna():
                    shadow.report(float(value), step)

    def tell(self, number: int, state: Any, value: float | None = None) -> None:
        """End a live trial: its state (and value) in the store, one transaction, then in the shadow."""
        import optuna

        from service.db_retry import with_session

        if state == optuna.trial.TrialState.PRUNED and value is None:
            value = self.last_values.get(number)  # as Optuna's tell: a pruned trial's last intermediate value
        ended = with_session(
            self.connect,
            self.db,
            repo.finish_trial,
            trial_id=self.trial_ids[number],
            state=state,
            value=value,
        )
        self.last_values.pop(number, None)
        if not ended:  # a repeated call whose first attempt's answer was lost, or a trial reaped meanwhile
            logger.info("trial %d had ended already: %s not written", number, state.name)
        record = self.live.pop(number, None)
        if record is not None:
            record.state, record.value = state.name, value
        shadow = self.shadows.pop(number, None)
        if shadow is not None:
            with _quiet_optuna():
                if state == optuna.trial.TrialState.COMPLETE:
                    self.shadow.tell(shadow, value)
                else:  # Optuna gives a pruned trial its last intermediate value, as the store has it
                    self.shadow.tell(shadow, state=state)

    def complete_configs(self) -> list[tuple[dict[str, Any], int]]:
        """The (sampled config, number) of each COMPLETE trial that trained (not a reused one)."""
        import optuna

        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return [
            (sampled_config(t), t.number)
            for t in done
            if REUSED_FROM not in t.user_attrs and t.user_attrs.get(SAMPLED)
        ]


class _quiet_optuna:
    """Optuna logs each trial it creates or tells at INFO; the shadow's trials are not the study's."""

    def __enter__(self) -> None:
        import optuna

        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        import optuna

        optuna.logging.set_verbosity(self.level)
