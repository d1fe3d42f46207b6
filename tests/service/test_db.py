"""The study store's database on a real SQLite file and a real PostgreSQL database: the engine, the
migrations, and a database made by an older version upgraded with its studies intact."""

from datetime import UTC

import optuna
import pytest
from sqlalchemy import text

from service import repository as repo
from service.db import create_schema, make_engine, make_optuna_storage, make_sessionmaker


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}", busy_timeout_ms=1234)
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == 1234


def test_schema_is_at_the_newest_migration_and_matches_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from service.db import Base
    from service.migrate import VERSION_TABLE, current, head

    assert current(engine) == head()
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, parent: type_ != "table" or name.startswith("transched_"),
            },
        )
        assert compare_metadata(ctx, Base.metadata) == []


def test_upgrading_twice_is_a_no_op_and_leaves_optunas_tables_alone(url, engine):
    from sqlalchemy import inspect

    make_optuna_storage(url)  # Optuna creates its tables (and its own alembic_version)
    create_schema(engine)
    tables = set(inspect(engine).get_table_names())
    assert {
        "transched_studies",
        "transched_alembic_version",
        "studies",
        "trials",
        "alembic_version",
    } <= tables


def test_a_database_made_at_the_first_migration_upgrades_with_its_finished_study_intact(url, tmp_path):
    from datetime import datetime

    from fastapi.testclient import TestClient
    from sqlalchemy import JSON, DateTime, String, column, insert, table

    from service.api import create_app
    from service.migrate import current, head, upgrade
    from service.schemas import StudySpec
    from service.settings import Settings
    from tests.service.conftest import FakeCluster

    engine = make_engine(url)
    upgrade(engine, "0001")
    assert current(engine) == "0001"
    spec = StudySpec(n_trials=1, methods=["multitask"]).model_dump(mode="json")
    studies = table(
        "transched_studies",
        *(column(c, String) for c in ("id", "name", "status", "optuna_study_name", "ray_job_id")),
        column("spec", JSON),
        *(column(c, DateTime(timezone=True)) for c in ("created_at", "started_at", "finished_at")),
    )
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(studies).values(
                id="old1", name="old study", status="completed", optuna_study_name="transched-old1",
                ray_job_id="transched-old1", spec=spec, created_at=now, started_at=now, finished_at=now,
            )
        )  # fmt: skip
    storage = make_optuna_storage(url)
    ot = optuna.create_study(study_name="transched-old1", storage=storage, direction="maximize")
    trial = ot.ask()
    trial.suggest_float("alpha", -6, 6)
    trial.set_user_attr("sampled", {"method": "multitask", "alpha": trial.params["alpha"]})
    trial.set_user_attr("total_steps", 100)
    ot.tell(trial, 0.75)
    engine.dispose()

    app = create_app(Settings(database_url=url, data_dir=tmp_path), cluster=FakeCluster())
    with TestClient(app) as client:  # the lifespan migrates to head
        engine = make_engine(url)
        assert current(engine) == head()
        with make_sessionmaker(engine)() as s:
            old = repo.get_study(s, study_id="old1")
            assert (old.name, old.status, old.spec, old.heartbeat_at) == (
                "old study",
                "completed",
                spec,
                None,
            )
        engine.dispose()
        study = client.get("/studies/old1").json()
        assert study["status"] == "completed" and study["trial_counts"] == {"COMPLETE": 1}
        best = client.get("/studies/old1/best").json()
    assert best["val_acc"] == 0.75 and best["method"] == "multitask"
    assert best["config"]["alpha"] == trial.params["alpha"]


def test_a_database_made_before_migrations_existed_is_adopted_not_recreated(tmp_path):
    from service.migrate import VERSION_TABLE, current, head, upgrade

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0001")  # the schema the pre-Alembic create_all made, without a migration history:
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(
            text(
                "INSERT INTO transched_studies (id, name, spec, status, optuna_study_name, created_at)"
                " VALUES ('k1', 'kept', '{}', 'completed', 'transched-k1', '2026-11-01 00:00:00')"
            )
        )
    assert current(engine) is None
    create_schema(engine)
    assert current(engine) == head()
    with make_sessionmaker(engine)() as s:
        assert repo.get_study(s, study_id="k1").name == "kept"


def test_engine_and_optuna_storage_are_made_from_settings_with_a_pool_override(tmp_path):
    from service.db import engine_from, optuna_storage_from
    from service.settings import Settings

    settings = Settings(
        database_url="postgresql+psycopg://u@127.0.0.1:1/x", db_pool_size=7, db_max_overflow=3
    )
    engine = engine_from(settings)
    assert (engine.pool.size(), engine.pool._max_overflow) == (7, 3)
    small = engine_from(settings, pool_size=1, max_overflow=0)
    assert (small.pool.size(), small.pool._max_overflow) == (1, 0)
    sqlite = Settings(data_dir=tmp_path, sqlite_busy_timeout_ms=4321)
    storage = optuna_storage_from(sqlite)
    assert storage.engine.url.database == str((tmp_path / "transched.db").resolve())
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 4321


def test_optunas_schema_in_a_new_database_is_the_one_our_direct_reads_are_written_for(url):
    from service.db import OPTUNA_SCHEMA_VERSION, check_optuna_schema

    storage = make_optuna_storage(url)
    try:
        assert storage.get_current_version() == storage.get_head_version() == OPTUNA_SCHEMA_VERSION
        check_optuna_schema(storage)  # passes
    finally:
        storage.engine.dispose()


def test_a_database_behind_our_optuna_schema_is_refused_with_the_upgrade_command(tmp_path, monkeypatch):
    from service.db import check_optuna_schema

    storage = make_optuna_storage(f"sqlite:///{tmp_path / 'o.db'}")
    monkeypatch.setattr(storage, "get_current_version", lambda: "v3.0.0.d")  # made by an older optuna
    with pytest.raises(RuntimeError, match=r"is v3\.0\.0\.d.*written for schema v3\.2\.0\.a") as refused:
        check_optuna_schema(storage)
    assert "optuna storage upgrade --storage" in str(refused.value)
    storage.engine.dispose()


def test_the_server_refuses_to_start_on_an_optuna_schema_it_is_not_written_for(
    settings, cluster, monkeypatch
):
    """As if optuna were upgraded past the schema service/repository.py reads: the API does not start (and
    its supervisor settles no study), and it says which versions and what to do."""
    from fastapi.testclient import TestClient

    import service.db
    from service.api import create_app

    monkeypatch.setattr(service.db, "OPTUNA_SCHEMA_VERSION", "v9.9.9.z")
    started = []
    monkeypatch.setattr("service.api.Supervisor.start", lambda self: started.append(self))
    with pytest.raises(RuntimeError) as refused, TestClient(create_app(settings, cluster=cluster)):
        pass
    message = str(refused.value)
    assert "schema in the database is v3.2.0.a" in message and "written for schema v9.9.9.z" in message
    assert "refusing to start" in message and f"installed optuna {optuna.__version__}" in message
    assert "requirements.lock" in message and not started


def _open_app_state(url: str, data_dir: str) -> str:
    """A fresh process setting the store up as the API's start does (service.deps.AppState.open)."""
    from pathlib import Path

    from service.deps import AppState
    from service.settings import Settings

    try:
        settings = Settings(data_dir=Path(data_dir), database_url=url)
        AppState.open(settings, cluster=object(), connect=lambda settings: None).close()
    except Exception as exc:  # the answer is the test's, not a traceback in a child
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return "ok"


def test_api_replicas_starting_together_on_a_new_postgresql_database_all_come_up(tmp_path):
    """Issue 18: two replicas of a rolling deploy on a new database both created the schema, and one
    crashed (UniqueViolation on a table's type). Four processes set it up at once: all succeed, and the
    schema is whole. (Without service.db.schema_lock, 7 of 12 such processes failed here.)"""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from service.migrate import current, head
    from tests.conftest import fresh_database

    with fresh_database("postgresql", tmp_path) as url:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(4, mp_context=spawn) as pool:
            answers = list(pool.map(_open_app_state, [url] * 4, [str(tmp_path / f"r{i}") for i in range(4)]))
        assert answers == ["ok"] * 4, answers
        engine = make_engine(url)
        try:
            assert current(engine) == head()
            with engine.connect() as connection:
                tables = set(connection.execute(text("SELECT tablename FROM pg_tables")).scalars())
            assert {"transched_studies", "studies", "trials", "trial_user_attributes"} <= tables
        finally:
            engine.dispose()
