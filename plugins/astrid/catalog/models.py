"""SQLAlchemy 2 typed ORM for the observation catalog.

The schema itself is versioned by alembic (``astrid/catalog/migrations``); these classes must
describe exactly what the migrations create (``tests/unit/test_catalog.py`` compares them).

Timestamps are timezone-aware UTC everywhere. On PostgreSQL they are ``timestamptz``; on SQLite
they are stored as naive UTC text in SQLAlchemy's fixed-width format, so ``<``/``>`` on the column
compare correctly. :class:`UTCDateTime` does the conversion in both directions.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from astrid.dag_kinds import REPROCESS_KIND, RUN_TYPES

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class ObservationStatus(enum.StrEnum):
    """Lifecycle: ``ingested → preprocessed → claimed → inferred | failed | rejected``.

    ``failed`` observations with ``attempts < max_attempts`` are claimable again; ``rejected``
    (bad data, refused by the quality gate) is terminal.
    """

    INGESTED = "ingested"
    PREPROCESSED = "preprocessed"
    CLAIMED = "claimed"
    INFERRED = "inferred"
    FAILED = "failed"
    REJECTED = "rejected"


# inference_runs.kind: a DAG kind, a CLI run, or a reprocessing run (astrid.reprocess; migration
# 0002). A new kind changes this CHECK constraint, so it needs a migration.
RUN_KINDS = (*RUN_TYPES, "cli", REPROCESS_KIND)


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive inputs are taken to be UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}  # noqa: RUF012


def _status_type() -> sa.Enum:
    # VARCHAR + an explicit, named CHECK constraint (see __table_args__), identical on both DBs.
    return sa.Enum(
        ObservationStatus,
        name="observation_status",
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


_NOW = sa.func.now()


class ObservationRow(Base):
    """One science/reference/difference triplet and where it is in the lifecycle."""

    __tablename__ = "observations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    survey: Mapped[str] = mapped_column(sa.String(64))
    instrument: Mapped[str | None] = mapped_column(sa.String(64))
    filter: Mapped[str | None] = mapped_column(sa.String(32))
    mjd: Mapped[float | None] = mapped_column(sa.Float)
    exptime: Mapped[float | None] = mapped_column(sa.Float)
    ra_center: Mapped[float | None] = mapped_column(sa.Float)
    dec_center: Mapped[float | None] = mapped_column(sa.Float)
    science_uri: Mapped[str] = mapped_column(sa.Text)
    reference_uri: Mapped[str] = mapped_column(sa.Text)
    difference_uri: Mapped[str | None] = mapped_column(sa.Text)
    truth_uri: Mapped[str | None] = mapped_column(sa.Text)
    labelled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    status: Mapped[ObservationStatus] = mapped_column(
        _status_type(), default=ObservationStatus.PREPROCESSED, server_default="preprocessed"
    )
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    rejection_reason: Mapped[str | None] = mapped_column(sa.Text)
    claimed_by: Mapped[str | None] = mapped_column(sa.String(255))
    lease_until: Mapped[datetime | None]
    model_version: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    inferred_at: Mapped[datetime | None]
    # 0002: ingestion from outside (astrid ingest / POST /astrid/observations)
    content_hash: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    arrived_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)

    detections: Mapped[list[DetectionRow]] = relationship(
        back_populates="observation", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        sa.CheckConstraint(_in("status", ObservationStatus), name="status"),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        sa.CheckConstraint("NOT labelled OR truth_uri IS NOT NULL", name="labelled_has_truth"),
        sa.CheckConstraint(
            "status <> 'claimed' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
            name="claim_has_lease",
        ),
        # claim(): claimable rows by status, oldest first
        sa.Index("ix_observations_status_mjd_id", "status", "mjd", "id"),
        # claim()/stuck_claims(): expired leases
        sa.Index("ix_observations_status_lease_until", "status", "lease_until"),
        # release()/complete(): a run's claims
        sa.Index("ix_observations_claimed_by", "claimed_by"),
        sa.Index("ix_observations_labelled", "labelled"),
    )


class DetectionRow(Base):
    """One candidate transient found by ``model_version`` in an observation.

    The detections of one (observation, model_version) are replaced as a set, in the transaction
    that marks the observation inferred: results are idempotent per (observation, model version).
    """

    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(primary_key=True)
    observation_id: Mapped[int] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(sa.String(128))
    x: Mapped[float] = mapped_column(sa.Float)
    y: Mapped[float] = mapped_column(sa.Float)
    ra: Mapped[float | None] = mapped_column(sa.Float)
    dec: Mapped[float | None] = mapped_column(sa.Float)
    score: Mapped[float] = mapped_column(sa.Float)
    flux: Mapped[float | None] = mapped_column(sa.Float)
    run_id: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    # 0003: photometry (astrid.photometry) and the stamps' URI prefix (astrid.stamps)
    flux_err: Mapped[float | None] = mapped_column(sa.Float)
    snr: Mapped[float | None] = mapped_column(sa.Float)
    mag: Mapped[float | None] = mapped_column(sa.Float)
    mag_err: Mapped[float | None] = mapped_column(sa.Float)
    stamp_uri: Mapped[str | None] = mapped_column(sa.Text)

    observation: Mapped[ObservationRow] = relationship(back_populates="detections")

    __table_args__ = (
        sa.Index("ix_detections_observation_id_model_version", "observation_id", "model_version"),
        sa.Index("ix_detections_model_version", "model_version"),
        sa.Index("ix_detections_run_id", "run_id"),  # GET /astrid/detections?run_id=
        sa.Index("ix_detections_dec_ra", "dec", "ra"),  # the cone search's box
    )


class InferenceResultRow(Base):
    """That ``model_version`` has processed an observation (with ``detections`` found), whatever
    the path: the live queue (:meth:`Catalog.complete`) or reprocessing
    (:meth:`Catalog.store_results`). One row per (observation, model version): reprocessing is
    resumable (done pairs are skipped) and an observation with no detections still counts as done."""

    __tablename__ = "inference_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    observation_id: Mapped[int] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(sa.String(128))
    run_id: Mapped[str] = mapped_column(sa.String(255))
    detections: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)

    __table_args__ = (
        sa.UniqueConstraint("observation_id", "model_version"),
        sa.Index("ix_inference_results_model_version", "model_version"),
        sa.Index("ix_inference_results_run_id", "run_id"),  # 0003: GET /astrid/observations?run_id=
    )


class InferenceStatisticsRow(Base):
    """What the input of one inference looked like, and what came out (migration 0004): the sky
    level, seeing and noise of the observation, its size and the detections ``model_version``
    found — recorded by the live inference path (:func:`astrid.pipeline.run_inference`) so the
    nightly drift check (:mod:`astrid.drift`) can compare windows. One row per (observation,
    model version); reprocessing does not write here (old inputs would look like new ones)."""

    __tablename__ = "inference_statistics"

    id: Mapped[int] = mapped_column(primary_key=True)
    observation_id: Mapped[int] = mapped_column(sa.ForeignKey("observations.id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(sa.String(128))
    run_id: Mapped[str] = mapped_column(sa.String(255))
    recorded_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    sky: Mapped[float | None] = mapped_column(sa.Float)  # science background (robust median)
    seeing_px: Mapped[float | None] = mapped_column(sa.Float)  # FWHM in pixels (header)
    noise: Mapped[float | None] = mapped_column(sa.Float)  # difference-image robust sigma
    megapixels: Mapped[float] = mapped_column(sa.Float)
    detections: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        sa.UniqueConstraint("observation_id", "model_version"),
        sa.Index("ix_inference_statistics_model_version_recorded_at", "model_version", "recorded_at"),
    )


class InferenceRunRow(Base):
    """One DAG run (or CLI run) of the detector: counts, timings, outcome. Upserted by (dag_id, run_id)."""

    __tablename__ = "inference_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(sa.String(255))
    dag_id: Mapped[str] = mapped_column(sa.String(255))
    kind: Mapped[str | None] = mapped_column(sa.String(16))
    model_version: Mapped[str | None] = mapped_column(sa.String(128))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    claimed: Mapped[int] = mapped_column(default=0, server_default="0")
    processed: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")
    rejected: Mapped[int] = mapped_column(default=0, server_default="0")
    detections: Mapped[int] = mapped_column(default=0, server_default="0")
    processing_seconds: Mapped[float | None] = mapped_column(sa.Float)
    success_rate: Mapped[float | None] = mapped_column(sa.Float)
    status: Mapped[str | None] = mapped_column(sa.String(32))
    details: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(server_default=_NOW)

    __table_args__ = (
        sa.UniqueConstraint("dag_id", "run_id"),
        sa.CheckConstraint(f"kind IS NULL OR {_in('kind', RUN_KINDS)}", name="kind"),
        sa.Index("ix_inference_runs_started_at", "started_at"),
    )


class AlertStateRow(Base):
    """Cool-down state of one alert key (see :meth:`Catalog.alert_due`)."""

    __tablename__ = "alert_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), unique=True)
    last_sent_at: Mapped[datetime]
    count: Mapped[int] = mapped_column(default=0, server_default="0")
    suppressed: Mapped[int] = mapped_column(default=0, server_default="0")
    last_payload: Mapped[str | None] = mapped_column(sa.Text)
