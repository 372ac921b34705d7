"""Inference statistics: per (observation, model version), the input's sky, seeing and noise, its
size and the detections found, recorded by the live inference path for the nightly drift check.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00

Chained after 0003 (detection photometry, branch h16), itself after 0002 (ingestion, branch h14),
so the history stays linear whatever order the branches are merged in. Written by hand, like 0001;
the unit tests check that the models and the migrations agree.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_statistics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("observation_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("sky", sa.Float(), nullable=True),
        sa.Column("seeing_px", sa.Float(), nullable=True),
        sa.Column("noise", sa.Float(), nullable=True),
        sa.Column("megapixels", sa.Float(), nullable=False),
        sa.Column("detections", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_statistics")),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name=op.f("fk_inference_statistics_observation_id_observations"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "observation_id",
            "model_version",
            name=op.f("uq_inference_statistics_observation_id_model_version"),
        ),
    )
    op.create_index(
        "ix_inference_statistics_model_version_recorded_at",
        "inference_statistics",
        ["model_version", "recorded_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_inference_statistics_model_version_recorded_at", table_name="inference_statistics")
    op.drop_table("inference_statistics")
