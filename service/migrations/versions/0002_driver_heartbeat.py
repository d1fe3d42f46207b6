"""The driver's heartbeat, and listing order by creation time.

A running driver writes `heartbeat_at` every few seconds, so a study whose driver died without a word
(node lost, job killed) can be told from one that is merely slow.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("transched_studies") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_transched_studies_created_at", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("transched_studies") as batch:
        batch.drop_index("ix_transched_studies_created_at")
        batch.drop_column("heartbeat_at")
