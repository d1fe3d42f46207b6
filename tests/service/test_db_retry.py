"""Database outages, in-process: which errors are transient (real errors of a locked SQLite file and of a
PostgreSQL server that refuses or drops the connection), the retry across a real held lock, the retrying
Optuna storage (a lost answer of a committed write is not a second trial), and the API's 503."""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from fastapi.testclient import TestClient
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from service import deps
from service.api import create_app
from service.db import make_engine, make_sessionmaker
from service.db_retry import (
    OUTAGE,
    DbRetry,
    Outage,
    RetryingStorage,
    is_transient,
    retrying_storage,
    short,
    with_session,
)
from service.settings import Settings
from tests.conftest import PG_ADMIN_URL, free_port, fresh_database
from tests.service.conftest import SPEC, FakeCluster

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def write_lock(db: Path, *, for_s: float | None = None) -> Iterator[None]:
    """Another connection holds SQLite's write lock (BEGIN EXCLUSIVE) on `db`: until the block ends, or
    for `for_s` seconds from a thread while the block runs."""
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(for_s, conn.rollback) if for_s is not None else None
    if release:
        release.start()
    try:
        yield
    finally:
        if release:
            release.join()
        else:
            conn.rollback()
        conn.close()


def _storage(db: Path, timeout_s: float = 0.2) -> RDBStorage:
    return RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": timeout_s}})


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "t.db"
    _storage(path).engine.dispose()  # Optuna's schema, made once
    return path


# --- the classifier -----------------------------------------------------------------------------------------


def test_a_locked_sqlite_write_is_transient_also_as_optunas_wrapped_error(db):
    storage = _storage(db)
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    with write_lock(db), pytest.raises(StorageInternalError) as caught:
        storage.set_study_user_attr(study_id, "k", 1)
    assert is_transient(caught.value)  # StorageInternalError from OperationalError from sqlite3's error
    assert short(caught.value) == "OperationalError: database is locked"


def test_a_wrong_query_or_a_duplicate_is_not_transient(db):
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn, pytest.raises(sa_exc.OperationalError) as no_table:
        conn.execute(text("SELECT * FROM no_such_table"))
    storage = _storage(db)
    storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "dup")
    with pytest.raises(optuna.exceptions.DuplicatedStudyError) as dup:
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "dup")
    assert not is_transient(no_table.value)  # sqlite3 reports it as an OperationalError too
    assert not is_transient(dup.value)
    assert not is_transient(ValueError("x"))


def test_postgresql_refusing_or_dropping_the_connection_is_transient(tmp_path):
    refused = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", pool_timeout_s=1)
    with pytest.raises(sa_exc.OperationalError) as caught:
        refused.connect()
    assert is_transient(caught.value)
    with fresh_database("postgresql", tmp_path) as url:
        engine = make_engine(url)
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:  # as a restart or an admin does
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(sa_exc.DBAPIError) as killed:
                conn.execute(text("SELECT 1"))
        engine.dispose()
    assert is_transient(killed.value), short(killed.value)


def test_an_exhausted_pool_is_transient(db):
    engine = create_engine(f"sqlite:///{db}", pool_size=1, max_overflow=0, pool_timeout=0.1)
    with engine.connect(), pytest.raises(sa_exc.TimeoutError) as caught:
        engine.connect()  # "QueuePool limit of size 1 overflow 0 reached"
    assert is_transient(caught.value)
    engine.dispose()


# --- the retry ----------------------------------------------------------------------------------------------


def test_a_write_waits_out_a_held_lock_and_the_outage_is_logged_once(db, caplog):
    storage = RetryingStorage(_storage(db), DbRetry(30, max_wait_s=0.3, outage=Outage(settle_s=1.0)))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    caplog.set_level(logging.DEBUG, logger="transched.db")
    start = time.monotonic()
    for _ in range(2):  # two lock holders in a row, 0.3 s apart: one outage
        with write_lock(db, for_s=1.0):
            storage.set_study_user_attr(study_id, "k", "v")
        time.sleep(0.3)
    assert time.monotonic() - start >= 2.0
    assert storage.get_study_user_attrs(study_id) == {"k": "v"}
    time.sleep(1.0)
    storage.set_study_user_attr(study_id, "k", "w")  # calls succeed past settle_s: the outage is over
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # the outage's start and its end, not one line per attempt
    assert "database unavailable (OperationalError: database is locked" in warnings[0]
    back = re.fullmatch(
        r"database available again: it was unavailable for (\S+)s \(\d+ failed attempts\)", warnings[1]
    )
    assert back and 1.5 < float(back[1]) < 5, warnings[1]  # from the first lock's start to the second's end


def test_an_outage_the_process_outlived_is_said_over_at_its_end(db, caplog):
    outage = Outage(settle_s=60.0)  # longer than the test: only `close` can end it
    storage = RetryingStorage(_storage(db), DbRetry(30, max_wait_s=0.3, outage=outage))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    caplog.set_level(logging.WARNING, logger="transched.db")
    with write_lock(db, for_s=1.0):
        storage.set_study_user_attr(study_id, "k", "v")
    warned = lambda: [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]  # noqa: E731
    assert len(warned()) == 1  # begun, not yet over: settle_s has not passed
    outage.close()
    assert len(warned()) == 2 and warned()[1].startswith("database available again"), warned()
    outage.close()  # said once
    assert len(warned()) == 2


def test_past_the_budget_the_error_is_raised(db):
    storage = RetryingStorage(_storage(db, timeout_s=0.1), DbRetry(1.0, max_wait_s=0.2))
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    start = time.monotonic()
    with write_lock(db), pytest.raises(StorageInternalError):
        storage.set_study_user_attr(study_id, "k", "v")
    assert 1.0 <= time.monotonic() - start < 5


def test_a_wrong_write_is_not_retried(db):
    calls = []
    retry = DbRetry(30)
    with pytest.raises(ValueError):
        retry.call(lambda: calls.append(1) or int("x"))
    assert calls == [1]


def test_a_session_write_is_retried_in_a_new_session(db):
    engine = make_engine(f"sqlite:///{db}", busy_timeout_ms=100)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    seen = []

    def insert(session, *, x):
        seen.append(session)
        session.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
        session.commit()
        return x

    with write_lock(db, for_s=1.0):
        assert with_session(make_sessionmaker(engine), DbRetry(30, max_wait_s=0.2), insert, x=7) == 7
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM t")).scalars().all() == [7]
    assert len(seen) >= 2 and len(set(map(id, seen))) == len(seen)  # each attempt in a session of its own
    engine.dispose()


# --- the storage proxy: non-idempotent writes whose answer is lost -----------------------------------------


class LosesAnswers:
    """The real storage, except that the first call of `lose` commits and then fails as a dropped
    connection does: the write is in the database, the caller never hears of it."""

    def __init__(self, inner, lose: str):
        self.inner, self.lose, self.lost = inner, lose, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.lose or self.lost:
            return attr

        def commit_then_drop(*args, **kwargs):
            attr(*args, **kwargs)
            self.lost += 1
            raise sa_exc.DisconnectionError("connection dropped after COMMIT")

        return commit_then_drop


@pytest.mark.parametrize("cached", [False, True])
def test_a_lost_create_new_trial_adopts_the_committed_trial_not_a_second_one(db, cached):
    if cached:  # as the driver runs it: Optuna's trial cache over the RDB storage, whose insert is lost
        inner = _CachedStorage(LosesAnswers(_storage(db), "_create_new_trial"))
    else:
        inner = LosesAnswers(_storage(db), "create_new_trial")
    storage = RetryingStorage(inner, DbRetry(10, max_wait_s=0.1))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    study.tell(trial, 0.5)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    states = [t.state for t in study.get_trials()]
    assert (storage.inner._backend if cached else storage.inner).lost == 1
    assert states == [TrialState.COMPLETE] * 4  # no duplicate left RUNNING


@pytest.mark.parametrize("ask_from", ["queue", "new"])
def test_a_lost_state_change_counts_as_done(db, ask_from):
    lossy = LosesAnswers(_storage(db), "set_trial_state_values")
    storage = RetryingStorage(lossy, DbRetry(10, max_wait_s=0.1))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    if ask_from == "queue":  # WAITING -> RUNNING is the lost write; ask must not skip the trial
        study.enqueue_trial({"x": 0.25})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, trial.params["x"])  # RUNNING -> COMPLETE (lost when not asked from the queue)
    assert storage.inner.lost == 1
    assert [(t.state, t.value) for t in study.get_trials()] == [(TrialState.COMPLETE, trial.params["x"])]


def test_the_proxy_pickles_as_tune_saves_its_searcher(db):
    storage = retrying_storage(_storage(db), DbRetry(42))
    again = pickle.loads(pickle.dumps(storage))
    assert (again.retry.budget_s, again.retry.outage) == (42, OUTAGE)
    again.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "after-pickle")
    assert again.get_study_id_from_name("after-pickle") == storage.get_study_id_from_name("after-pickle")


# --- the API ------------------------------------------------------------------------------------------


def test_the_api_answers_503_with_retry_after_while_the_database_is_locked(settings, tmp_path):
    settings = settings.model_copy(update={"sqlite_busy_timeout_ms": 200, "db_retry_after_s": 7})
    db = tmp_path / "transched.db"
    with TestClient(create_app(settings, cluster=FakeCluster())) as client:
        with write_lock(db):
            created = client.post("/studies", json=SPEC)
            listed = client.get("/studies")  # WAL: readers pass a writer's lock
        assert created.status_code == 503, created.text
        assert created.headers["retry-after"] == "7"
        assert created.json() == {"detail": "the database is unavailable for now; retry later"}
        assert listed.status_code == 200 and listed.json()["total"] == 0  # the refused POST stored nothing
        assert client.post("/studies", json=SPEC).status_code == 202  # and once the lock is gone


def test_the_api_answers_503_while_postgresql_is_unreachable(tmp_path):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"  # nothing listens there
    app = create_app(Settings(data_dir=tmp_path, database_url=url), cluster=FakeCluster())
    # No lifespan (it would migrate the database first): the handler reaches the database per request.
    engine = make_engine(url, pool_timeout_s=1)
    app.dependency_overrides[deps._state] = lambda: _Bare(engine)
    answer = TestClient(app, raise_server_exceptions=False).get("/healthz")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"


class _Bare:
    """The app state a handler reads (its sessions and cluster), without the lifespan."""

    def __init__(self, engine):
        self.sessions, self.cluster = make_sessionmaker(engine), None


def test_openapi_documents_503_with_retry_after(settings):
    paths = create_app(settings).openapi()["paths"]
    for path, method in [("/studies", "get"), ("/studies/{study_id}", "get"), ("/healthz", "get")]:
        answer = paths[path][method]["responses"]["503"]
        assert "Retry-After" in answer["headers"], path
    assert "database" in paths["/studies"]["post"]["responses"]["503"]["description"]
