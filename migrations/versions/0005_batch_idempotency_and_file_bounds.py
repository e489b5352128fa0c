"""OpenAI batches: an idempotency key per batch (retried creates return the same batch); files expire.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

from shared.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.create_index("ix_batches_idempotency_key", "batches", ["idempotency_key"], unique=True)
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
    op.create_index("ix_files_expires_at", "files", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_files_expires_at", table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("expires_at")
    op.drop_index("ix_batches_idempotency_key", table_name="batches")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("idempotency_key")
