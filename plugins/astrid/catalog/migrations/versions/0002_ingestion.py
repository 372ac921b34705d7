"""Ingestion from outside and reprocessing: content hash, arrival time, metadata; per-version results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 00:00:00

* ``observations.content_hash`` (unique; NULL for synthetic/seeded rows): the same FITS triplet
  ingested twice is one observation.
* ``observations.arrived_at``: when the observation reached AstrID (latency is measured from it).
* ``observations.meta`` (JSON): ``--meta key=value`` pairs, ingestion provenance, and later the
  subtraction method and its quality figures.
* ``inference_results``: which model versions have processed an observation (even with no
  detections), so reprocessing is resumable and per-version results live side by side.
* ``inference_runs.kind`` may be ``reprocess``.

Written by hand, like 0001; the unit tests check that the models and the migrations agree.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = ("realtime", "batch", "validation", "cli")
NEW_KINDS = (*OLD_KINDS, "reprocess")


def _kinds(values: Sequence[str]) -> str:
    return f"kind IS NULL OR kind IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("observations") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("arrived_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("meta", sa.JSON(), nullable=True))
        batch.create_unique_constraint(op.f("uq_observations_content_hash"), ["content_hash"])

    op.create_table(
        "inference_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("observation_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("detections", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_results")),
        sa.ForeignKeyConstraint(
            ["observation_id"],
            ["observations.id"],
            name=op.f("fk_inference_results_observation_id_observations"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "observation_id", "model_version", name=op.f("uq_inference_results_observation_id_model_version")
        ),
    )
    op.create_index("ix_inference_results_model_version", "inference_results", ["model_version"])
    # what the live queue has already inferred counts as done for its model version
    op.execute(
        "INSERT INTO inference_results (observation_id, model_version, run_id, detections, created_at) "
        "SELECT o.id, o.model_version, COALESCE(o.claimed_by, 'before-0002'), "
        "(SELECT count(*) FROM detections d WHERE d.observation_id = o.id AND d.model_version = o.model_version), "
        "COALESCE(o.inferred_at, o.updated_at) "
        "FROM observations o WHERE o.status = 'inferred' AND o.model_version IS NOT NULL"
    )

    with op.batch_alter_table("inference_runs") as batch:
        batch.drop_constraint(op.f("ck_inference_runs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_inference_runs_kind"), _kinds(NEW_KINDS))


def downgrade() -> None:
    op.execute("DELETE FROM inference_runs WHERE kind = 'reprocess'")
    with op.batch_alter_table("inference_runs") as batch:
        batch.drop_constraint(op.f("ck_inference_runs_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_inference_runs_kind"), _kinds(OLD_KINDS))
    op.drop_index("ix_inference_results_model_version", table_name="inference_results")
    op.drop_table("inference_results")
    with op.batch_alter_table("observations") as batch:
        batch.drop_constraint(op.f("uq_observations_content_hash"), type_="unique")
        batch.drop_column("meta")
        batch.drop_column("arrived_at")
        batch.drop_column("content_hash")
