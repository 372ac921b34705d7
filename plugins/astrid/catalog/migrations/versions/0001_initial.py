"""Initial catalog schema: observations, detections, inference_runs, alert_state.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Written by hand (not imported from the models, which will move on); the unit tests check that
the models and this schema agree.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("ingested", "preprocessed", "claimed", "inferred", "failed", "rejected")
RUN_KINDS = ("realtime", "batch", "validation", "cli")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _ts(name: str, nullable: bool = True, now: bool = False) -> sa.Column:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("survey", sa.String(64), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=True),
        sa.Column("filter", sa.String(32), nullable=True),
        sa.Column("mjd", sa.Float(), nullable=True),
        sa.Column("exptime", sa.Float(), nullable=True),
        sa.Column("ra_center", sa.Float(), nullable=True),
        sa.Column("dec_center", sa.Float(), nullable=True),
        sa.Column("science_uri", sa.Text(), nullable=False),
        sa.Column("reference_uri", sa.Text(), nullable=False),
        sa.Column("difference_uri", sa.Text(), nullable=True),
        sa.Column("truth_uri", sa.Text(), nullable=True),
        sa.Column("labelled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="preprocessed"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("rejection_reason", sa.Text(), nullable=True),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        _ts("lease_until"),
        sa.Column("model_version", sa.String(128), nullable=True),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        _ts("inferred_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
        sa.UniqueConstraint("name", name=op.f("uq_observations_name")),
        sa.CheckConstraint(_in("status", STATUSES), name=op.f("ck_observations_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_observations_attempts_non_negative")),
        sa.CheckConstraint(
            "NOT labelled OR truth_uri IS NOT NULL", name=op.f("ck_observations_labelled_has_truth")
        ),
        sa.CheckConstraint(
            "status <> 'claimed' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
            name=op.f("ck_observations_claim_has_lease"),
        ),
    )
    op.create_index("ix_observations_status_mjd_id", "observations", ["status", "mjd", "id"])
    op.create_index("ix_observations_status_lease_until", "observations", ["status", "lease_until"])
    op.create_index("ix_observations_claimed_by", "observations", ["claimed_by"])
    op.create_index("ix_observations_labelled", "observations", ["labelled"])

    op.create_table(
        "detections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("observation_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("ra", sa.Float(), nullable=True),
        sa.Column("dec", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("flux", sa.Float(), nullable=True),
        sa.Column("run_id", sa.String(255), nullable=False),
        _ts("created_at", nullable=False, now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_detections")),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name=op.f("fk_detections_observation_id_observations"),
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_detections_observation_id_model_version", "detections", ["observation_id", "model_version"]
    )
    op.create_index("ix_detections_model_version", "detections", ["model_version"])

    op.create_table(
        "inference_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("dag_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("claimed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rejected", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("detections", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processing_seconds", sa.Float(), nullable=True),
        sa.Column("success_rate", sa.Float(), nullable=True),
        sa.Column("status", sa.String(32), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_runs")),
        sa.UniqueConstraint("dag_id", "run_id", name=op.f("uq_inference_runs_dag_id_run_id")),
        sa.CheckConstraint(f"kind IS NULL OR {_in('kind', RUN_KINDS)}", name=op.f("ck_inference_runs_kind")),
    )
    op.create_index("ix_inference_runs_started_at", "inference_runs", ["started_at"])

    op.create_table(
        "alert_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        _ts("last_sent_at", nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("suppressed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_payload", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_state")),
        sa.UniqueConstraint("key", name=op.f("uq_alert_state_key")),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
    op.drop_index("ix_inference_runs_started_at", table_name="inference_runs")
    op.drop_table("inference_runs")
    op.drop_index("ix_detections_model_version", table_name="detections")
    op.drop_index("ix_detections_observation_id_model_version", table_name="detections")
    op.drop_table("detections")
    op.drop_index("ix_observations_labelled", table_name="observations")
    op.drop_index("ix_observations_claimed_by", table_name="observations")
    op.drop_index("ix_observations_status_lease_until", table_name="observations")
    op.drop_index("ix_observations_status_mjd_id", table_name="observations")
    op.drop_table("observations")
