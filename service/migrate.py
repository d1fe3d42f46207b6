"""Schema migrations of our tables: `transched db upgrade`, and at server start-up."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

logger = logging.getLogger(__name__)

VERSION_TABLE = "transched_alembic_version"  # Optuna's own migrations use the default alembic_version


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "service:migrations")
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    from sqlalchemy import inspect

    cfg = _config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        if current(engine) is None and inspect(connection).has_table("transched_studies"):
            # Made before migrations existed (by create_all), which is revision 0001's schema.
            logger.warning("database has our tables but no migration history: stamping it at 0001")
            command.stamp(cfg, "0001")
        command.upgrade(cfg, revision)
    logger.info("database schema at %s", current(engine))


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()
