"""Resume attempts and idempotent submission.

`attempts` counts the drivers started again after one died (service.supervisor); `idempotency_key` and
`request_hash` make a retried POST /studies return the study it made the first time.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transched_studies") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("idempotency_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_transched_studies_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("transched_studies") as batch:
        batch.drop_constraint("uq_transched_studies_idempotency_key", type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
        batch.drop_column("attempts")
