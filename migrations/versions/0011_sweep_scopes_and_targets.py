"""Sweeps vary scope and target mass: jobs.sweep_setting joins a job's sweep cell, and the recommendation
stores its scope and target mass (sweeps.recommended_scope, sweeps.recommended_target_mass).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD_CELL = ["sweep_id", "case_name", "sweep_multiplier", "sweep_head_fraction"]


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_setting", sa.String(64), nullable=True))
        batch.drop_constraint("uq_jobs_sweep_cell", type_="unique")
        batch.create_unique_constraint("uq_jobs_sweep_cell", [*OLD_CELL, "sweep_setting"])
    # A sweep's jobs so far ran its one scope and target mass: one cell each, as before.
    op.execute("UPDATE jobs SET sweep_setting = '' WHERE sweep_id IS NOT NULL")
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("recommended_scope", sa.String(16), nullable=True))
        batch.add_column(sa.Column("recommended_target_mass", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("recommended_target_mass")
        batch.drop_column("recommended_scope")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_sweep_cell", type_="unique")
        batch.drop_column("sweep_setting")
        batch.create_unique_constraint("uq_jobs_sweep_cell", OLD_CELL)
