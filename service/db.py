"""The SQL study store: our table of studies beside Optuna's own schema, in one database.

Trials are not copied into our tables: they live in Optuna's RDB schema (written by the driver's ledger,
service.ledger), so ``optuna.load_study(study_name=..., storage=URL)`` and optuna-dashboard read them
as they are.
"""

from __future__ import annotations

import contextlib
import enum
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, DateTime, Engine, Integer, String, Text, create_engine, event, make_url, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

if TYPE_CHECKING:
    from collections.abc import Iterator

    from optuna.storages import RDBStorage

    from service.settings import Settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class StudyStatus(enum.StrEnum):
    queued = "queued"  # stored; waits for a slot (TRANSCHED_MAX_RUNNING_STUDIES) before its driver starts
    pending = "pending"  # admitted and submitted to Ray (or resumed); the driver has not started yet
    running = "running"
    stopping = "stopping"  # a stop was asked for; running trials are being ended
    completed = "completed"
    stopped = "stopped"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (StudyStatus.completed, StudyStatus.stopped, StudyStatus.failed)


class Study(Base):
    __tablename__ = "transched_studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.pending.value, index=True)
    optuna_study_name: Mapped[str] = mapped_column(String(128), unique=True)
    ray_job_id: Mapped[str | None] = mapped_column(String(128), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Drivers started after the first one died (service.supervisor); the driver of attempt k runs job
    # `<first job id>-r<k>` and only that driver may run the study.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # POST /studies's Idempotency-Key and the hash of the body it came with (same key, same body: same study).
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)


def make_engine(
    url: str,
    *,
    busy_timeout_ms: int = 30_000,
    pool_size: int = 5,
    max_overflow: int = 5,
    pool_timeout_s: float = 10.0,
) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a driver writes; the busy timeout waits out the writer's
            # lock instead of failing with "database is locked".
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # Bounded pool with pre-ping: one API process plus one driver per running study stay far under
    # PostgreSQL's default of 100 connections, and a connection dropped while idle is replaced.
    # A request that finds every connection busy waits `pool_timeout_s`, then is answered 503 (service.api).
    return create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_s
    )


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


# The key of the PostgreSQL advisory lock that schema set-up holds: any 64-bit number the database's
# other users do not take ("transch" in ASCII).
SCHEMA_LOCK_KEY = 0x7472616E736368


@contextlib.contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's schema set-up for this process: our migrations, Optuna's tables (its
    RDBStorage creates them on first use) and their indexes. Two API replicas starting together on a
    new PostgreSQL database both create the same tables and types otherwise, and one of them fails
    (issue 18). A session-level advisory lock on a connection of its own, released at the end (and by
    PostgreSQL if the process dies). SQLite serves one host: nothing to hold."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
            connection.commit()


def create_schema(engine: Engine) -> None:
    """Our tables at the newest migration (Alembic; see service/migrations)."""
    from service.migrate import upgrade

    upgrade(engine)


def make_optuna_storage(
    url: str,
    *,
    busy_timeout_ms: int = 30_000,
    pool_size: int = 5,
    max_overflow: int = 5,
    pool_timeout_s: float = 10.0,
):
    """Optuna's RDB storage on the same database (it creates its own tables on first use)."""
    import optuna

    if url.startswith("sqlite"):
        kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_ms / 1000}}
    else:
        kwargs = {
            "pool_pre_ping": True,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "pool_timeout": pool_timeout_s,
        }
    # No heartbeat: Optuna's heartbeat only runs inside study.optimize(), never under ask-and-tell.
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


# The revision of Optuna's RDB schema (its alembic_version) that our direct reads and writes of its tables
# are written for: service/repository.py's `_OPTUNA_*` tables (and the trial writes beside it). Optuna 5.1's
# head; `RDBStorage.get_current_version()` of a database Optuna has just made says it.
OPTUNA_SCHEMA_VERSION = "v3.2.0.a"


def check_optuna_schema(storage: RDBStorage) -> None:
    """Refuse to run on an Optuna schema other than the one `OPTUNA_SCHEMA_VERSION` names: the service
    reads (and writes) Optuna's tables directly, past its storage API, and a different schema would be
    misread silently. Raises RuntimeError naming the versions found and expected and what to do."""
    import optuna

    found = storage.get_current_version()
    if found == OPTUNA_SCHEMA_VERSION:
        return
    expected, head = OPTUNA_SCHEMA_VERSION, storage.get_head_version()
    where = f"Optuna's schema in the database is {found}; this service reads Optuna's tables directly"
    where += f" and is written for schema {expected}"
    if head == expected:  # the installed Optuna is the one we are written for: the database is behind
        todo = (
            f"upgrade the database's Optuna schema to {expected}: `optuna storage upgrade --storage "
            "<the database URL>` (back it up first)"
        )
    else:
        todo = (
            f"the installed optuna {optuna.__version__} has schema {head}: install the optuna this "
            f"service is pinned to (requirements.lock; its schema is {expected}), or port "
            "service/repository.py's Optuna tables to the new schema and set OPTUNA_SCHEMA_VERSION "
            "(service/db.py)"
        )
    raise RuntimeError(f"{where}: refusing to start. To fix it, {todo}.")


def _db_args(settings: Settings, pool_size: int | None, max_overflow: int | None) -> dict[str, Any]:
    return {
        "busy_timeout_ms": settings.sqlite_busy_timeout_ms,
        "pool_size": settings.db_pool_size if pool_size is None else pool_size,
        "max_overflow": settings.db_max_overflow if max_overflow is None else max_overflow,
        "pool_timeout_s": settings.db_pool_timeout_s,
    }


def engine_from(
    settings: Settings, *, pool_size: int | None = None, max_overflow: int | None = None
) -> Engine:
    """The engine of the study store `settings` names; a driver passes smaller pools (see README)."""
    return make_engine(settings.resolved_database_url, **_db_args(settings, pool_size, max_overflow))


def optuna_storage_from(
    settings: Settings, *, pool_size: int | None = None, max_overflow: int | None = None
) -> RDBStorage:
    """Optuna's storage on the same database, with the same arguments as `engine_from`."""
    return make_optuna_storage(settings.resolved_database_url, **_db_args(settings, pool_size, max_overflow))
