"""Detections: photometry and stamps; indexes for the detections API.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:00:00

* ``detections.flux_err``, ``snr``, ``mag``, ``mag_err``: the photometry of :mod:`astrid.photometry`
  (NULL for rows written before 0003, and ``mag``/``mag_err`` without a zero point).
* ``detections.stamp_uri``: the storage URI prefix of the detection's stamps (``.png``, ``.fits``;
  :mod:`astrid.stamps`), NULL when none were written.
* Indexes for ``GET /astrid/detections``: by run, and by (dec, ra) for the cone search's box; and
  ``inference_results`` by run (``GET /astrid/observations?run_id=``: what a run processed).

Written by hand, like 0001; the unit tests check that the models and the migrations agree.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PHOTOMETRY = ("flux_err", "snr", "mag", "mag_err")


def upgrade() -> None:
    with op.batch_alter_table("detections") as batch:
        for name in PHOTOMETRY:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(sa.Column("stamp_uri", sa.Text(), nullable=True))
    op.create_index("ix_detections_run_id", "detections", ["run_id"])
    op.create_index("ix_detections_dec_ra", "detections", ["dec", "ra"])
    op.create_index("ix_inference_results_run_id", "inference_results", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_inference_results_run_id", table_name="inference_results")
    op.drop_index("ix_detections_dec_ra", table_name="detections")
    op.drop_index("ix_detections_run_id", table_name="detections")
    with op.batch_alter_table("detections") as batch:
        batch.drop_column("stamp_uri")
        for name in reversed(PHOTOMETRY):
            batch.drop_column(name)
