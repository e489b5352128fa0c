"""Sweeps vary the boilerplate's M: the recommendation stores it (sweeps.recommended_boilerplate_multiplier).

A sweep job's boilerplate M joins its cell through jobs.sweep_setting (shared.calibration.cell_key), whose keys
for a boilerplate M of 1 are those stored before, so no job row changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("recommended_boilerplate_multiplier", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("recommended_boilerplate_multiplier")
