"""OpenAI-compatible API: chat jobs (kind, batch line), run finish reasons, files and batches.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

from shared.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=True))
        batch.add_column(sa.Column("batch_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("custom_id", sa.Text(), nullable=True))
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("finish_reason", sa.String(16), nullable=True))
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("request_total", sa.Integer(), nullable=False),
        sa.Column("line_errors", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        *[sa.Column(f"{name}_at", UTCDateTime(), nullable=True)
          for name in ("expires", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                       "cancelled")],
    )
    op.create_index("ix_batches_status", "batches", ["status"])


def downgrade() -> None:
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_table("batches")
    op.drop_table("files")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("finish_reason")
    op.drop_index("ix_jobs_batch_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("custom_id")
        batch.drop_column("batch_id")
        batch.drop_column("kind")
