"""Surviving database outages: which errors are worth waiting out, a retry policy with backoff, and an
Optuna storage that retries every call.

A study's driver is the only writer of its study while it runs (its ledger writes the trials, the driver its
study row), so a locked SQLite file, a restarted PostgreSQL or killed connections must not end it:
each database call is retried with exponential backoff and jitter until it succeeds or `budget_s` (the
setting TRANSCHED_DB_RETRY_S) has passed. The API does not wait: it answers 503 with Retry-After
(`service.api`), using the same `is_transient`.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, TypeVar

import tenacity
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa_exc

logger = logging.getLogger("transched.db")

T = TypeVar("T")

# SQLite's errors that pass: another writer's lock outlasting the busy timeout, a file briefly unreachable.
_SQLITE_TRANSIENT = re.compile(r"locked|busy|unable to open|disk i/o", re.IGNORECASE)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes: Optuna wraps SQLAlchemy's error (StorageInternalError from ...), which
    wraps the driver's (psycopg, sqlite3)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def _transient_one(e: BaseException) -> bool:
    # QueuePool's "limit ... reached" (sa_exc.TimeoutError): every connection busy, not a broken database.
    if isinstance(e, sa_exc.DisconnectionError | sa_exc.TimeoutError | ConnectionError | TimeoutError):
        return True
    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, sqlite3.OperationalError):
        return bool(_SQLITE_TRANSIENT.search(str(e)))
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    # psycopg's OperationalError covers connection refused/lost, admin shutdown (57P01, what
    # pg_terminate_backend and a restart send), too many connections, serialization failures, deadlocks.
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """True if `exc` (or anything in its cause chain) says the database is unreachable or busy for now,
    not that the request or the data is wrong."""
    return any(_transient_one(e) for e in _chain(exc))


def short(exc: BaseException) -> str:
    """The first line of the deepest cause: what the database said, without SQL or traceback."""
    deepest = list(_chain(exc))[-1]
    text = str(deepest).strip().splitlines()
    return f"{type(deepest).__name__}: {text[0][:200] if text else ''}"


class Outage:
    """The outage log of a process: a WARNING when the database first fails, one when it is back, however
    many calls, attempts and retrying objects (the searcher's storage, the driver's own writes) it spans.
    It is over when calls have succeeded for `settle_s` with no failure between: connections killed in a
    loop fail and succeed by turns, and that is one outage, not one per kill."""

    def __init__(self, settle_s: float = 10.0):
        self.settle_s = settle_s
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first failed call of the outage began
        self._last_failure = 0.0
        self._last_success = 0.0
        self._failures = 0

    def failed(self, what: str, state: tenacity.RetryCallState, budget_s: float) -> None:
        exc = state.outcome.exception() if state.outcome else None
        with self._lock:
            first = self._since is None
            if first:  # tenacity's start_time is time.monotonic() when the failing call began
                self._since, self._failures = state.start_time, 0
            self._last_failure, self._failures = time.monotonic(), self._failures + 1
        if first:
            logger.warning(
                "database unavailable (%s, in %s): retrying for up to %.0fs", short(exc), what, budget_s
            )
        else:
            logger.debug("database still unavailable (attempt %d, %s)", state.attempt_number, what)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            self._last_success = time.monotonic()
            since, last, failures = self._since, self._last_failure, self._failures
            if since is None or time.monotonic() - last < self.settle_s:
                return
            self._since = None
        self._over(since, last, failures)

    def close(self) -> None:
        """The process is done (a driver at its end): an outage whose calls have gone through since its
        last failure is over, though `settle_s` may not have passed yet; said so, not left unsaid."""
        with self._lock:
            since, last, failures = self._since, self._last_failure, self._failures
            if since is None or self._last_success < last:
                return
            self._since = None
        self._over(since, last, failures)

    @staticmethod
    def _over(since: float, last: float, failures: int) -> None:
        logger.warning(
            "database available again: it was unavailable for %.1fs (%d failed attempts)",
            last - since,
            failures,
        )


OUTAGE = Outage()  # this process's


class DbRetry:
    """Retries a database call across an outage: exponential backoff with jitter (0.5 s doubling, at most
    `max_wait_s` apart) until it succeeds or `budget_s` has passed, then the last error is raised. The
    outage is logged by `outage` (default: this process's), not once per attempt."""

    def __init__(self, budget_s: float, *, max_wait_s: float = 10.0, outage: Outage | None = None):
        self.budget_s, self.max_wait_s = budget_s, max_wait_s
        self.outage = outage or OUTAGE

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the searcher, and with it its storage
        return {"budget_s": self.budget_s, "max_wait_s": self.max_wait_s}  # unpickled: that process's log

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def call(self, fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_transient),
            wait=tenacity.wait_exponential_jitter(initial=0.5, max=self.max_wait_s),
            stop=tenacity.stop_after_delay(self.budget_s),
            before_sleep=lambda state: self.outage.failed(
                what or getattr(fn, "__name__", "?"), state, self.budget_s
            ),
            reraise=True,
        )
        result = retrying(fn, *args, **kwargs)
        self.outage.succeeded()
        return result


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.retry.call(getattr(self.inner, name), *args, what=name, **kwargs)

    method.__name__ = name
    method.__doc__ = f"`{name}` of the wrapped storage, retried across a database outage."
    return method


class RetryingStorage(BaseStorage):
    """An Optuna storage whose every call is retried across a database outage (see `DbRetry`); the driver
    and `optuna.load_study` use it as they use any storage.

    Retrying is safe because the driver is its study's only writer: user attrs, intermediate values and
    system attrs are upserts, params ignore the duplicate a repeated insert makes, and a study created
    twice is loaded (`create_study(load_if_exists=True)`). The two writes that are not idempotent are
    checked before they are repeated, in case the first attempt committed and only its answer was lost:
    a repeated `create_new_trial` first adopts a trial that appeared since the call began, and a
    repeated state change that finds the trial already in that state counts as done."""

    def __init__(self, inner: BaseStorage, retry: DbRetry, rdb: Any = None):
        self.inner, self.retry, self.rdb = inner, retry, rdb

    @property
    def engine(self) -> Any:
        """The engine of the RDBStorage behind it (`rdb`), for the service's own reads and writes of
        Optuna's tables, as on the RDBStorage the API holds."""
        return self.rdb.engine

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        before = self.retry.call(self.trial_numbers, study_id, what="create_new_trial")
        attempts = 0

        def once() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                new = self.trial_numbers(study_id) - before
                if new:  # the lost attempt's commit went through: that trial is ours, not a second one
                    number = min(new)
                    trial_id = self.inner.get_trial_id_from_study_id_trial_number(study_id, number)
                    logger.warning(
                        "adopted trial %d (id %d), created by an attempt whose answer was lost",
                        number,
                        trial_id,
                    )
                    return trial_id
            return self.inner.create_new_trial(study_id, template_trial)

        return self.retry.call(once, what="create_new_trial")

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        attempts = 0

        def once() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                done = self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if attempts > 1 and self.inner.get_trial(trial_id).state == state:
                    return True  # the lost attempt finished it
                raise
            if not done and attempts > 1 and self.inner.get_trial(trial_id).state == state:
                return True  # the lost attempt moved it WAITING -> RUNNING: it is ours
            return done

        return self.retry.call(once, what="set_trial_state_values")

    def trial_numbers(self, study_id: int) -> set[int]:
        """The numbers of the study's trials, as the wrapped storage has them now (not retried)."""
        return {t.number for t in self.inner.get_all_trials(study_id, deepcopy=False)}

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self.retry.call(self.inner.get_all_trials, study_id, deepcopy, states, what="get_all_trials")

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.retry.call(self.inner.create_new_study, directions, study_name, what="create_new_study")

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        self.retry.call(
            self.inner.set_trial_param,
            trial_id,
            param_name,
            param_value_internal,
            distribution,
            what="set_trial_param",
        )

    get_all_studies = _delegate("get_all_studies")  # -> list[FrozenStudy], a type Optuna does not export
    delete_study = _delegate("delete_study")
    set_study_user_attr = _delegate("set_study_user_attr")
    set_study_system_attr = _delegate("set_study_system_attr")
    get_study_id_from_name = _delegate("get_study_id_from_name")
    get_study_name_from_id = _delegate("get_study_name_from_id")
    get_study_directions = _delegate("get_study_directions")
    get_study_user_attrs = _delegate("get_study_user_attrs")
    get_study_system_attrs = _delegate("get_study_system_attrs")
    get_trial_id_from_study_id_trial_number = _delegate("get_trial_id_from_study_id_trial_number")
    get_trial_number_from_id = _delegate("get_trial_number_from_id")
    get_trial_param = _delegate("get_trial_param")
    set_trial_intermediate_value = _delegate("set_trial_intermediate_value")
    set_trial_user_attr = _delegate("set_trial_user_attr")
    set_trial_system_attr = _delegate("set_trial_system_attr")
    get_trial = _delegate("get_trial")
    get_n_trials = _delegate("get_n_trials")
    get_best_trial = _delegate("get_best_trial")
    get_trial_params = _delegate("get_trial_params")
    get_trial_user_attrs = _delegate("get_trial_user_attrs")
    get_trial_system_attrs = _delegate("get_trial_system_attrs")
    remove_session = _delegate("remove_session")
    check_trial_is_updatable = _delegate("check_trial_is_updatable")


def retrying_storage(storage: BaseStorage, retry: DbRetry) -> RetryingStorage:
    """`storage` (an RDBStorage) behind Optuna's own trial cache, every call retried across outages."""
    from optuna.storages import get_storage

    return RetryingStorage(get_storage(storage), retry, rdb=storage)


def with_session(sessions: Callable[[], Any], retry: DbRetry, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """`fn(session, **kwargs)` in a new session, the whole of it retried across an outage: a session whose
    connection died is not reused, and closing it (a ROLLBACK after a read) is inside the retry too."""

    def once() -> T:
        with sessions() as session:
            return fn(session, **kwargs)

    return retry.call(once, what=getattr(fn, "__name__", "?"))
