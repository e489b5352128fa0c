"""The deployment identity: a one-row table holding a uuid made once, when the database is created or upgraded.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""
import uuid

import sqlalchemy as sa
from alembic import op

from shared.store.tables import UTCDateTime, utcnow

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "deployment",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.bulk_insert(table, [{"id": str(uuid.uuid4()), "created_at": utcnow()}])


def downgrade() -> None:
    op.drop_table("deployment")
