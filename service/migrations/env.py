"""Alembic environment, configured in code by `service.migrate` (no alembic.ini)."""

from alembic import context

from service.db import Base
from service.migrate import VERSION_TABLE


def run() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        # Only our tables: never touch Optuna's.
        include_name=lambda name, type_, parent: type_ != "table" or name.startswith("transched_"),
    )
    with context.begin_transaction():
        context.run_migrations()


run()
