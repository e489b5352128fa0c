"""A failed job's machine-readable error code (jobs.error_code), set by the worker where it raises the error.

Jobs that failed before it existed get the code their stored message implies, by the rules the /v1 API applied
to the message until then, so their answers stay the same.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (code, condition on the stored error), first match wins: the order /v1 read the message in.
BACKFILL = (
    ("context_length_exceeded", "error LIKE '%context%' AND error LIKE '%exceeds%'"),
    ("response_format", "error LIKE 'response_format%'"),
    ("out_of_range", "error LIKE '%out of range%'"),
)


def upgrade() -> None:
    op.add_column("jobs", sa.Column("error_code", sa.String(64), nullable=True))
    for code, condition in BACKFILL:
        op.execute(f"UPDATE jobs SET error_code = '{code}' WHERE status = 'failed' AND error_code IS NULL "
                   f"AND {condition}")


def downgrade() -> None:
    op.drop_column("jobs", "error_code")
