"""A calibration sweep advances in stages: jobs.sweep_step -> sweep_multiplier, sweeps.step_index -> stage_index.

"Step" was also a generate() call and a decoded token; a sweep's job holds the grid M it runs (its stage).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _rename(jobs_old: str, jobs_new: str, sweeps_old: str, sweeps_new: str) -> None:
    # uq_jobs_sweep_cell follows the renamed column (PostgreSQL renames in place; SQLite's copy keeps it).
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(jobs_old, new_column_name=jobs_new, existing_type=sa.Float(), existing_nullable=True)
    with op.batch_alter_table("sweeps") as batch:
        batch.alter_column(sweeps_old, new_column_name=sweeps_new, existing_type=sa.Integer(),
                           existing_nullable=False)


def upgrade() -> None:
    _rename("sweep_step", "sweep_multiplier", "step_index", "stage_index")


def downgrade() -> None:
    _rename("sweep_multiplier", "sweep_step", "stage_index", "step_index")
