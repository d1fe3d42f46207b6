"""A fake cluster for the API tests: the app's cluster interface (`service.ray_cluster.Cluster`) in
memory, passed through `create_app(cluster=...)`, so the API runs in milliseconds over a real database.
Trials are written straight into Optuna's schema, as the driver's OptunaSearch writes them."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.ray_cluster import job_metadata, job_submission_id
from service.schemas import StudySpec
from service.settings import Settings

SPEC = {
    "name": "fake",
    "methods": ["smooth", "multitask", {"method": "mixup", "schedule": True}],
    "n_trials": 8,
}


class FakeCluster:
    """Jobs are entries of `jobs` (Ray's status names); a test sets a job's status to play the cluster.
    `before_call` runs at the start of every call (tests use it to look at the database pool)."""

    dashboard_url = "http://fake-ray:8265"

    def __init__(self, resources: dict[str, float] | None = None):
        self.cluster_resources = resources if resources is not None else {"CPU": 8.0}
        self.jobs: dict[str, str] = {}
        self.stopped: list[str] = []
        self.logs: dict[str, str] = {}
        self.submitted: dict[str, dict[str, str]] = {}  # job id -> its metadata
        self.attempts: dict[str, int] = {}  # job id -> the driver attempt it runs
        self.reachable = True  # False: every call fails, as an unreachable dashboard's would
        self.submit_error: Exception | None = None
        self.before_call: Callable[[str], None] = lambda name: None

    def resources(self) -> dict[str, float]:
        self.before_call("resources")
        if not self.reachable:
            raise ConnectionError("the fake cluster is unreachable")
        return dict(self.cluster_resources)

    def submit_study(
        self,
        *,
        study_id: str,
        spec: StudySpec,
        settings: Settings,
        study_url: str | None = None,
        job_id: str | None = None,
        attempt: int = 0,
    ) -> str:
        self.before_call("submit_study")
        if self.submit_error is not None:
            raise self.submit_error
        job_id = job_id or job_submission_id(study_id, spec.name)
        if job_id in self.jobs:  # as Ray's job API: the id exists, and the service takes that as submitted
            return job_id
        self.submitted[job_id] = job_metadata(study_id, spec, study_url)
        self.attempts[job_id] = attempt
        self.jobs[job_id] = "PENDING"
        return job_id

    def job_status(self, job_id: str) -> str | None:
        self.before_call("job_status")
        return self.jobs.get(job_id) if self.reachable else None

    def stop_job(self, job_id: str) -> bool:
        self.before_call("stop_job")
        self.stopped.append(job_id)
        self.jobs[job_id] = "STOPPED"
        return True

    def job_logs(self, job_id: str) -> str | None:
        self.before_call("job_logs")
        return self.logs.get(job_id)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite store at the newest migration, with Optuna's tables: made once, copied for each test
    (migrating a new file takes four times as long as the rest of an API test)."""
    data_dir = tmp_path_factory.mktemp("migrated")
    with TestClient(create_app(Settings(data_dir=data_dir), cluster=FakeCluster())):
        pass
    return data_dir


@pytest.fixture
def settings(tmp_path, migrated_sqlite) -> Settings:
    for db_file in migrated_sqlite.glob("transched.db*"):  # the database, and a WAL file if one is left
        shutil.copy(db_file, tmp_path / db_file.name)
    # No supervisor thread: the tests call service.supervisor.sweep themselves, when they mean to.
    return Settings(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'transched.db'}", supervise_interval_s=0
    )


@pytest.fixture
def client(settings, cluster) -> Iterator[TestClient]:
    with TestClient(create_app(settings, cluster=cluster)) as client:
        yield client


def add_trial(
    storage: Any,
    name: str,
    *,
    method: str,
    value: float | None,
    state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
    schedule: bool = False,
    epochs: list[dict[str, Any]] | None = None,
    **params: float,
) -> None:
    """One trial in Optuna's schema, with the user attrs the driver writes (`sampled`, epochs)."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    sampled = {"method": method, **({"schedule": True} if schedule else {}), **params}
    attrs: dict[str, Any] = {"sampled": sampled, "total_steps": 100}
    attrs |= {f"epoch:{e['epoch']:05d}": e for e in epochs or []}
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: optuna.distributions.FloatDistribution(-10, 10) for k in params},
            user_attrs=attrs,
        )
    )


def make_searcher(
    path: Any, space: Any, *, arms: Any = (), n_trials: int = 8, seed: int = 0, name: str = "s"
):
    """The driver's searcher over a ledger on a SQLite file at `path` (TPE seeded), as run_study makes
    it, and the file's Optuna storage."""
    from service.db import make_engine, make_optuna_storage
    from service.db_retry import DbRetry
    from service.driver import TrialSearcher
    from service.ledger import Ledger, plan_study

    url = f"sqlite:///{path}"
    storage = make_optuna_storage(url)
    plan = plan_study(storage, name=name, n_trials=n_trials, attempt=0, arms=list(arms))
    ledger = Ledger(
        storage,
        name=name,
        connect=make_engine(url).connect,
        db=DbRetry(5),
        sampler=optuna.samplers.TPESampler(seed=seed),
        space=space,
        plan=plan,
    )
    return TrialSearcher(ledger, metric="best_val_acc"), storage


class Store:
    """The test's own handle on the app's database: our table through the repository, trials through
    Optuna (as the driver writes them)."""

    def __init__(self, settings: Settings):
        from service.db import engine_from, make_sessionmaker, optuna_storage_from

        self.engine = engine_from(settings)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = optuna_storage_from(settings)

    def set_status(self, study_id: str, status: str, **values: Any) -> None:
        from sqlalchemy import update

        from service import repository as repo
        from service.db import Study, StudyStatus

        with self.sessions() as s:
            repo.set_status(s, study_id=study_id, status=StudyStatus(status))
            if values:
                s.execute(update(Study).where(Study.id == study_id).values(**values))
                s.commit()

    def close(self) -> None:
        self.engine.dispose()
        self.storage.engine.dispose()


@pytest.fixture
def db(settings):
    """The test's handle on a fresh store (our schema created) of `settings`'s database."""
    from service.db import create_schema

    store = Store(settings)
    create_schema(store.engine)
    yield store
    store.close()


@pytest.fixture
def store(settings, client) -> Iterator[Store]:
    store = Store(settings)  # after `client`: the app's lifespan has made the schema
    yield store
    store.close()


# --- a bare store (no app) on SQLite and on PostgreSQL, for the db and repository tests -------------------


@pytest.fixture
def url(database_url):
    return database_url


@pytest.fixture
def engine(url):
    from service.db import create_schema, make_engine

    engine = make_engine(url, busy_timeout_ms=1234)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine):
    from service.db import make_sessionmaker

    return make_sessionmaker(engine)
