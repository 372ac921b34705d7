"""Observation catalog: SQLAlchemy 2 models, alembic migrations, and :class:`Catalog` (claims, leases,
idempotent writes). See :mod:`astrid.catalog.store` for the concurrency model."""

from astrid.catalog.models import (
    AlertStateRow,
    DetectionRow,
    InferenceResultRow,
    InferenceRunRow,
    ObservationRow,
    ObservationStatus,
)
from astrid.catalog.store import Catalog, Claim, NewObservation, Registered

__all__ = [
    "AlertStateRow",
    "Catalog",
    "Claim",
    "DetectionRow",
    "InferenceResultRow",
    "InferenceRunRow",
    "NewObservation",
    "ObservationRow",
    "ObservationStatus",
    "Registered",
]
