"""Token logprobs stored with a run (completions' echo and logprobs, chat logprobs).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("logprobs", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "logprobs")
