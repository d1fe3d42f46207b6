"""Shared by B5 and B6: a study store filled with many trials fast, and the API served over it.

Trials are written straight into Optuna's schema with bulk SQL (what OptunaSearch writes, row for row:
the trial, its value, its params with their distributions, and the driver's user attrs including one
`epoch:NNNNN` attr per epoch), so 10,000 trials take seconds, not the ~10 minutes of 280,000 single
writes through `optuna.Study`. The API runs in its own process (uvicorn, no Ray cluster: reads only).
`database` and `free_port` serve the tests too (tests/conftest.py): one way to make a fresh database.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx

PG_ADMIN_URL = os.environ.get("TRANSCHED_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
EPOCHS = 20  # per-epoch user attrs of each trial
SPEC = {"name": "bench", "methods": ["smooth", "multitask"], "n_trials": 100}
SMALL_STUDIES = 9  # besides the big one, so GET /studies pages over several studies


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresUnreachable(RuntimeError):
    pass


@contextlib.contextmanager
def database(backend: str, tmp: Path, *, prefix: str = "transched_bench") -> Iterator[str]:
    """A new, empty database of `backend` (an SQLite file in `tmp`, or a PostgreSQL database of its own on
    the server at PG_ADMIN_URL), dropped afterwards. The tests' `fresh_database` is this one."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'transched.db'}"
        return
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True)
    except psycopg.OperationalError as exc:
        raise PostgresUnreachable(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _trial_rows(study_id: int, first_id: int, n: int, rng: random.Random) -> dict[str, list[dict]]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json

    methods = ["smooth", "multitask"]
    dists = {
        "method": CategoricalDistribution(methods),
        "t0": FloatDistribution(0.0, 1.0),
        "tau": FloatDistribution(0.01, 0.5),
    }
    as_json = {k: distribution_to_json(d) for k, d in dists.items()}
    rows: dict[str, list[dict]] = {
        "trials": [],
        "trial_values": [],
        "trial_params": [],
        "trial_user_attributes": [],
    }
    start = datetime(2026, 1, 1)
    for number in range(n):
        tid, state = first_id + number, ("COMPLETE" if number % 10 else "PRUNED")
        sampled = {"method": rng.choice(methods), "t0": rng.random(), "tau": rng.uniform(0.01, 0.5)}
        begun = start + timedelta(seconds=30 * number)
        rows["trials"].append(
            {"trial_id": tid, "number": number, "study_id": study_id, "state": state, "datetime_start": begun,
             "datetime_complete": begun + timedelta(seconds=29)}
        )  # fmt: skip
        value = rng.uniform(0.5, 0.98)
        if state == "COMPLETE":
            rows["trial_values"].append(
                {"trial_id": tid, "objective": 0, "value": value, "value_type": "FINITE"}
            )
        for name, v in sampled.items():
            internal = methods.index(v) if name == "method" else v
            rows["trial_params"].append(
                {
                    "trial_id": tid,
                    "param_name": name,
                    "param_value": internal,
                    "distribution_json": as_json[name],
                }
            )
        attrs = {
            "sampled": {**sampled, "schedule": False, "trial_number": number},
            "node": "bench-node", "node_id": uuid.uuid4().hex, "device": "cpu", "total_steps": 1000,
            "test_acc": value - 0.01, "restarts": 0,
            "info": {"data_sizes": {"source": 1500, "target": 125, "val": 125}, "init": "pretrained"},
        }  # fmt: skip
        for epoch in range(1, EPOCHS + 1):
            attrs[f"epoch:{epoch:05d}"] = {
                "epoch": epoch, "step": 50 * epoch, "train_loss": 1.0 / epoch,
                "val_acc": value * epoch / EPOCHS, "val_loss": 1.0 / epoch,
                "lambda": min(1.0, epoch / EPOCHS), "lr": 0.01, "time_s": 0.5 * epoch,
            }  # fmt: skip
        for key, v in attrs.items():
            rows["trial_user_attributes"].append({"trial_id": tid, "key": key, "value_json": json.dumps(v)})
    return rows


def populate(url: str, *, n_trials: int, small_studies: int = SMALL_STUDIES, seed: int = 0) -> str:
    """A completed study of `n_trials` trials plus `small_studies` of 10 trials, in our table and Optuna's
    schema; returns the big study's id."""
    import optuna
    from optuna.storages._rdb import models
    from sqlalchemy import func, insert, select, text, update

    from service import repository as repo
    from service.db import (
        Study,
        StudyStatus,
        create_schema,
        make_engine,
        make_optuna_storage,
        make_sessionmaker,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine, storage, rng = make_engine(url), make_optuna_storage(url), random.Random(seed)
    create_schema(engine)
    sessions, big = make_sessionmaker(engine), ""
    for i, n in enumerate([n_trials] + [10] * small_studies):
        study_id = uuid.uuid4().hex
        with sessions() as s:
            repo.create_study(s, name=f"bench-{i}", spec=SPEC, study_id=study_id)
            repo.set_status(s, study_id=study_id, status=StudyStatus.completed)
            s.execute(update(Study).where(Study.id == study_id).values(ray_job_id=f"job-{i}"))
            s.commit()
        big = big or study_id
        ostudy = optuna.create_study(
            study_name=f"transched-{study_id}", storage=storage, direction="maximize"
        )
        with engine.begin() as conn:
            first = (conn.scalar(select(func.max(models.TrialModel.trial_id))) or 0) + 1
            for name, rows in _trial_rows(ostudy._study_id, first, n, rng).items():
                table = models.BaseModel.metadata.tables[name]
                for k in range(0, len(rows), 5000):
                    conn.execute(insert(table), rows[k : k + 5000])
            if engine.dialect.name == "postgresql":  # explicit ids: move the sequence past them
                seq = "pg_get_serial_sequence('trials', 'trial_id')"
                conn.execute(text(f"SELECT setval({seq}, max(trial_id)) FROM trials"))
    with engine.connect() as conn:  # planner statistics, as autovacuum / a running database would have
        conn.execute(text("ANALYZE"))
        conn.commit()
    storage.engine.dispose()
    engine.dispose()
    return big


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def api_server(url: str, data_dir: Path) -> Iterator[tuple[httpx.Client, int]]:
    """The API served by uvicorn in its own process over `url`, without a Ray cluster: (client, pid)."""
    port = free_port()
    env = {**os.environ, "TRANSCHED_DATABASE_URL": url, "TRANSCHED_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.api_store", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield client, proc.pid
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used: unlike wall time, not inflated by other load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_gets(client: httpx.Client, path: str, n: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `n` GETs of `path` (after `warmup`), each checked to be a 200."""
    out = []
    for i in range(warmup + n):
        t = time.perf_counter()
        resp = client.get(path)
        elapsed = time.perf_counter() - t
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path}: {resp.status_code} {resp.text[:300]}")
        if i >= warmup:
            out.append(elapsed)
    return out


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _serve(port: int) -> None:
    import uvicorn

    from service.api import create_app
    from service.ray_cluster import RayUnavailable
    from service.settings import Settings

    def no_cluster(_settings: Settings):
        raise RayUnavailable("benchmark: reads only, no cluster")

    app = create_app(Settings(), connect=no_cluster)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def temp_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="transched-bench-")


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
