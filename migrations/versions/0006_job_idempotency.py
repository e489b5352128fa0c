"""Idempotent chat completions: jobs.idempotency_key (unique) and jobs.request_hash.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch.create_index("ix_jobs_request_hash", ["request_hash"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_request_hash")
        batch.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
