"""Database faults against the running service, for real: `transched serve` with its own Ray head runs a
digits study, and mid-study another process holds SQLite's write lock for over a minute, or PostgreSQL's
connections to the study's database are killed in a tight loop. The study must complete with every trial
stored once (0 lost, 0 duplicated, 0 left RUNNING) while the API answers 200 or 503 with Retry-After,
never 500. And 50 concurrent submits on PostgreSQL against a real uvicorn server get no 500."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import optuna
import psycopg
import pytest
import uvicorn
from sqlalchemy import make_url

from service.api import create_app
from service.db import make_optuna_storage
from service.settings import Settings
from tests.conftest import PG_ADMIN_URL, free_port, fresh_database
from tests.service.conftest import SPEC, FakeCluster
from tests.service.test_end_to_end import _serve

pytestmark = pytest.mark.slow

EPOCHS = 8
N_TRIALS = 6
STUDY = {
    "name": "dbfault",
    "trainer": {"source": "digits", "target": "digits", "n_target": 60, "epochs": EPOCHS, "batch_size": 32},
    "methods": ["smooth", "finetune"],
    "n_trials": N_TRIALS,
    "max_concurrent_trials": 2,
    "cpus_per_trial": 1,
    "seed": 5,
}
LOCK_S = 65  # longer than SQLite's busy timeout (30 s) twice over: the retry, not the timeout, waits it out
KILL_S = 30

# Another process (a backup tool, a sqlite3 shell) takes SQLite's write lock and keeps it.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.rollback()
print("released", flush=True)
"""


class ApiWatch:
    """GET the study every half second from a thread while the fault lasts; every answer's code is kept,
    and each 503's Retry-After."""

    def __init__(self, api: str, study_id: str):
        self.api, self.study_id = api, study_id
        self.codes: Counter[int] = Counter()
        self.retry_after: set[str | None] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.record(httpx.get(f"{self.api}/studies/{self.study_id}", timeout=120))
            self._stop.wait(0.5)

    def record(self, resp: httpx.Response) -> None:
        self.codes[resp.status_code] += 1
        if resp.status_code == 503:
            self.retry_after.add(resp.headers.get("retry-after"))
            assert resp.json().keys() == {"detail"}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(180)


def _submit_and_wait_for_trials(api: str, complete: int) -> dict[str, Any]:
    resp = httpx.post(f"{api}/studies", json=STUDY, timeout=60)
    assert resp.status_code == 202, resp.text
    study_id = resp.json()["id"]
    deadline = time.monotonic() + 300
    while True:
        study = httpx.get(f"{api}/studies/{study_id}", timeout=60).json()
        if study["trial_counts"].get("COMPLETE", 0) >= complete:
            return study
        assert study["status"] in ("pending", "running"), study
        assert time.monotonic() < deadline, study
        time.sleep(0.5)


def _wait_for_end(api: str, study_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while True:
        resp = httpx.get(f"{api}/studies/{study_id}", timeout=120)
        if resp.status_code == 200 and resp.json()["status"] in ("completed", "stopped", "failed"):
            return resp.json()
        assert time.monotonic() < deadline, resp.text
        time.sleep(1)


def trial_accounting(database_url: str, optuna_name: str) -> dict[str, int]:
    """Trials stored, lost (of n_trials, not COMPLETE), duplicated (stored beyond n_trials), left RUNNING,
    and COMPLETE trials missing an epoch of their learning curve."""
    storage = make_optuna_storage(database_url)
    try:
        trials = optuna.load_study(study_name=optuna_name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()
    states = Counter(t.state.name for t in trials)
    epochs = [f"epoch:{e:05d}" for e in range(1, EPOCHS + 1)]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        "stored": len(trials),
        "complete": len(complete),
        "lost": N_TRIALS - len(complete),
        "duplicated": max(0, len(trials) - N_TRIALS),
        "running": states["RUNNING"],
        "missing_epochs": sum(1 for t in complete for e in epochs if e not in t.user_attrs),
    }


def _check_survived(server: dict, study: dict, watch: ApiWatch) -> None:
    assert study["status"] == "completed" and study["error"] is None, study
    counts = trial_accounting(server["database_url"], study["optuna_study_name"])
    assert counts == {
        "stored": N_TRIALS,
        "complete": N_TRIALS,
        "lost": 0,
        "duplicated": 0,
        "running": 0,
        "missing_epochs": 0,
    }
    assert set(watch.codes) <= {200, 503}, watch.codes
    assert watch.retry_after <= {"5"}, watch.retry_after
    # The driver waited the outage out: it said so once when it began and once when it ended.
    logs = httpx.get(f"{server['api']}/studies/{study['id']}/logs", timeout=60).text
    assert logs.count("database unavailable (") == 1, logs[-3000:]
    assert "database available again: it was unavailable for " in logs, logs[-3000:]


# `serial`: `make test` runs it alone, after the two-worker part. Beside another module it failed in 2 of
# 5 runs: the driver's blocked write waited out the whole 65 s lock without the 30 s busy timeout firing,
# so no outage was logged (BENCHMARKS.md, "Test suite"). Alone it has always passed. That hang is open;
# the assertions stay as they are.
@pytest.mark.serial
def test_a_sqlite_write_lock_held_over_a_minute_mid_study_loses_nothing(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    gen = _serve(data_dir, f"sqlite:///{data_dir / 'transched.db'}")
    server = next(gen)
    try:
        study = _submit_and_wait_for_trials(server["api"], complete=1)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(data_dir / "transched.db"), str(LOCK_S)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout.readline().strip() == "locked"
        watch = ApiWatch(server["api"], study["id"])
        # A write to the API while the lock lasts: refused with 503 after the busy timeout, nothing stored.
        refused = httpx.post(f"{server['api']}/studies", json={**STUDY, "name": "refused"}, timeout=120)
        assert locker.poll() is None, "the lock ended before the refused POST was answered"
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
        assert locker.stdout.readline().strip() == "released"
        assert locker.wait(30) == 0
        watch.stop()
        study = _wait_for_end(server["api"], study["id"])
        _check_survived(server, study, watch)
        assert watch.codes[200] > 0, watch.codes  # WAL: reads go on while another process holds the lock
        names = [s["name"] for s in httpx.get(f"{server['api']}/studies", timeout=60).json()["items"]]
        assert names == ["dbfault"]  # the refused POST stored nothing
    finally:
        gen.close()


def _kill_connections(database: str, seconds: float) -> int:
    """pg_terminate_backend on every connection to `database` but our own, in a tight loop."""
    killed, end = 0, time.monotonic() + seconds
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        while time.monotonic() < end:
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
            killed += row[0] if row else 0
            time.sleep(0.05)
    return killed


def test_postgresql_connections_killed_in_a_loop_mid_study_lose_nothing(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with fresh_database("postgresql", tmp_path) as url:
        gen = _serve(data_dir, url)
        server = next(gen)
        try:
            study = _submit_and_wait_for_trials(server["api"], complete=1)
            watch = ApiWatch(server["api"], study["id"])
            killed = _kill_connections(make_url(url).database, KILL_S)
            watch.stop()
            study = _wait_for_end(server["api"], study["id"])
            assert killed >= 10, killed  # the driver and the API kept reconnecting, and were cut again
            _check_survived(server, study, watch)
            assert watch.codes[503] > 0, watch.codes  # the API's connections were cut too: 503, not 500
        finally:
            gen.close()


class InFlight:
    """How many calls are inside `wait` at once, at most."""

    def __init__(self):
        self.now = self.most = 0
        self._lock = threading.Lock()

    def wait(self, seconds: float) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(seconds)
        with self._lock:
            self.now -= 1


def test_fifty_concurrent_submits_on_postgresql_get_no_500(tmp_path):
    """A real uvicorn server (its 40 request threads against a pool of 5+5) over a fresh PostgreSQL
    database; the cluster is the fake one with a slow submit (3 s), as a busy Ray job API answers."""
    cluster, in_flight = FakeCluster(), InFlight()
    cluster.before_call = lambda name: in_flight.wait(3.0) if name == "submit_study" else None
    with fresh_database("postgresql", tmp_path) as url:
        # No admission limit: every submit goes to the cluster at once (the queue is tested elsewhere).
        settings = Settings(data_dir=tmp_path, database_url=url, max_running_studies=100)
        port = free_port()
        app = create_app(settings, cluster=cluster)
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline
                time.sleep(0.1)
            api = f"http://127.0.0.1:{port}"

            def submit(i: int) -> httpx.Response:
                return httpx.post(f"{api}/studies", json={**SPEC, "name": f"load-{i}"}, timeout=120)

            with ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(submit, range(50)))
            codes = Counter(a.status_code for a in answers)
            stored = httpx.get(f"{api}/studies?limit=100", timeout=60).json()["items"]
        finally:
            server.should_exit = True
            thread.join(30)
    assert set(codes) <= {202, 503}, codes
    for a in answers:
        assert a.status_code == 202 or a.headers.get("retry-after"), a.text
    assert codes[202] == 50, codes
    # No connection is held while Ray is asked: more submits were under way at once than the pool (5+5) has
    # connections, which would cap them at 10 if each held one.
    assert in_flight.most > 10, in_flight.most
    assert len(stored) == 50 and all(s["ray_job_id"] for s in stored)
