"""Scores on runs, calibration sweeps and the jobs they run (runs.finish_reason comes with 0003).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

from shared.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("pack", sa.String(255), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("current_multiplier", sa.Float(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("recommended_multiplier", sa.Float(), nullable=True),
        sa.Column("recommended_layers", sa.String(64), nullable=True),
        sa.Column("recommended_head_fraction", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_sweeps_status", "sweeps", ["status"])
    op.create_index("ix_sweeps_model", "sweeps", ["model"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("scores", sa.JSON(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("case_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("sweep_step", sa.Float(), nullable=True))
        batch.add_column(sa.Column("sweep_head_fraction", sa.Float(), nullable=True))
        batch.create_foreign_key("fk_jobs_sweep_id_sweeps", "sweeps", ["sweep_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_jobs_sweep_id", ["sweep_id"])
        batch.create_unique_constraint("uq_jobs_sweep_cell", ["sweep_id", "case_name", "sweep_step",
                                                              "sweep_head_fraction"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("uq_jobs_sweep_cell", type_="unique")
        batch.drop_index("ix_jobs_sweep_id")
        batch.drop_constraint("fk_jobs_sweep_id_sweeps", type_="foreignkey")
        batch.drop_column("sweep_head_fraction")
        batch.drop_column("sweep_step")
        batch.drop_column("case_name")
        batch.drop_column("sweep_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("scores")
    op.drop_index("ix_sweeps_model", table_name="sweeps")
    op.drop_index("ix_sweeps_status", table_name="sweeps")
    op.drop_table("sweeps")
