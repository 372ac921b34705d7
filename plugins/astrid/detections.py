"""The detections API's core: filtered, paginated search with a cone search, and its exports.

No Airflow imports: :mod:`astrid.airflow.api` validates the request, calls :func:`search` on the
catalog and returns :func:`to_csv` / :func:`to_votable` / the JSON rows; a notebook can do the same.

Cone search (``ra``, ``dec``, ``radius`` in degrees, as the IVOA Simple Cone Search takes them):
the SQL query keeps a box that contains the cone (``dec ± radius``, and ``ra ± asin(sin r /
cos dec)``, split in two where it crosses RA = 0/360; no RA limit when the cone holds a pole),
then the exact angular separation (``astropy.coordinates.angular_separation``, Vincenty's
formula, exact at every distance) decides. Results are ordered by score (highest first), then id,
so pages are stable; a page is ``limit`` rows from ``offset`` and says where the next starts.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa

from astrid.catalog.models import DetectionRow, InferenceResultRow, ObservationRow

MAX_LIMIT = 10_000  # rows per page
MAX_OFFSET = 1_000_000
MAX_RADIUS = 10.0  # degrees: a cone search, not a sky dump
SCAN_CHUNK = 2_000  # candidate rows read at a time while a cone is filtered exactly
_D = DetectionRow.__table__
_O = ObservationRow.__table__
_RES = InferenceResultRow.__table__

# name -> (unit, UCD, description): the columns of every export, in order; units go into the VOTable
COLUMNS: dict[str, tuple[str | None, str | None, str]] = {
    "id": (None, "meta.id;meta.main", "detection id in the AstrID catalog"),
    "observation_id": (None, "meta.id", "observation id in the AstrID catalog"),
    "observation": (None, "meta.id", "observation name"),
    "run_id": (None, "meta.id", "the run that stored the detection (<dag id>:<dag run id> for DAG runs)"),
    "model_version": (None, "meta.version", "model version that found it"),
    "mjd": ("d", "time.epoch;obs", "observation start (MJD-OBS, UTC)"),
    "filter": (None, "instr.filter", "observation filter"),
    "x": ("pix", "pos.cartesian.x;instr.det", "0-based column of the detection"),
    "y": ("pix", "pos.cartesian.y;instr.det", "0-based row of the detection"),
    "ra": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS, from the frame's WCS)"),
    "dec": ("deg", "pos.eq.dec;meta.main", "declination (ICRS, from the frame's WCS)"),
    "score": (None, "stat.probability", "U-Net transient probability"),
    "flux": (None, "phot.flux", "aperture flux (r = 3 px) on the difference image, in its units (ADU)"),
    "flux_err": (None, "stat.error;phot.flux", "1 sigma error of flux"),
    "snr": (None, "stat.snr", "flux / flux_err"),
    "mag": (
        "mag",
        "phot.mag",
        "AB magnitude of the aperture flux (header zero point), no aperture correction",
    ),
    "mag_err": ("mag", "stat.error;phot.mag", "1 sigma error of mag"),
    "separation": ("arcsec", "pos.angDistance", "distance from the cone's centre (cone searches only)"),
    "created_at": (None, "time.creation", "when the detection was stored (ISO 8601, UTC)"),
    "has_stamp": (None, "meta.code", "stamps (science, reference, difference, probability) were written"),
}


@dataclass(frozen=True)
class Cone:
    """A cone on the sky: centre (``ra``, ``dec``) and ``radius``, all in degrees."""

    ra: float
    dec: float
    radius: float

    def box(self) -> tuple[float, float, list[tuple[float, float]] | None]:
        """(dec_min, dec_max, RA ranges or ``None`` for all RA) of a box holding the cone."""
        eps = 1e-9  # rounding margin: the exact test decides, the box only has to contain
        dec_min, dec_max = max(-90.0, self.dec - self.radius - eps), min(90.0, self.dec + self.radius + eps)
        if abs(self.dec) + self.radius >= 90.0 - eps:  # a pole is inside (or on) the cone
            return dec_min, dec_max, None
        ratio = math.sin(math.radians(self.radius)) / math.cos(math.radians(self.dec))
        half = math.degrees(math.asin(min(1.0, ratio))) + eps
        if half >= 180.0:
            return dec_min, dec_max, None
        ra = self.ra % 360.0
        lo, hi = ra - half, ra + half
        if lo < 0.0:
            return dec_min, dec_max, [(0.0, hi), (lo + 360.0, 360.0)]
        if hi > 360.0:
            return dec_min, dec_max, [(lo, 360.0), (0.0, hi - 360.0)]
        return dec_min, dec_max, [(lo, hi)]

    def separation(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Angular distance (degrees) from the centre to each (ra, dec)."""
        from astropy.coordinates import angular_separation

        sep = angular_separation(
            np.radians(self.ra), np.radians(self.dec), np.radians(np.asarray(ra)), np.radians(np.asarray(dec))
        )
        return np.degrees(np.asarray(sep))


@dataclass(frozen=True)
class DetectionQuery:
    """What ``GET /astrid/detections`` asks; ``mjd_from`` / ``mjd_to`` bound the observation time
    (``[from, to)``)."""

    run_id: str | None = None
    observation_id: int | None = None
    model_version: str | None = None
    min_score: float | None = None
    mjd_from: float | None = None
    mjd_to: float | None = None
    cone: Cone | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    offset: int
    limit: int
    next_offset: int | None


def mjd(moment: datetime) -> float:
    """The MJD (UTC) of a datetime; a naive one is taken to be UTC."""
    from astropy.time import Time

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return float(Time(moment.astimezone(UTC).replace(tzinfo=None), scale="utc").mjd)


def _select() -> sa.Select:
    return sa.select(
        _D.c.id,
        _D.c.observation_id,
        _O.c.name.label("observation"),
        _D.c.run_id,
        _D.c.model_version,
        _O.c.mjd,
        _O.c.filter,
        _D.c.x,
        _D.c.y,
        _D.c.ra,
        _D.c.dec,
        _D.c.score,
        _D.c.flux,
        _D.c.flux_err,
        _D.c.snr,
        _D.c.mag,
        _D.c.mag_err,
        _D.c.created_at,
        _D.c.stamp_uri,
    ).select_from(_D.join(_O, _D.c.observation_id == _O.c.id))


def _filtered(query: DetectionQuery) -> sa.Select:
    stmt = _select()
    if query.run_id is not None:
        stmt = stmt.where(_D.c.run_id == query.run_id)
    if query.observation_id is not None:
        stmt = stmt.where(_D.c.observation_id == query.observation_id)
    if query.model_version is not None:
        stmt = stmt.where(_D.c.model_version == query.model_version)
    if query.min_score is not None:
        stmt = stmt.where(_D.c.score >= query.min_score)
    if query.mjd_from is not None:
        stmt = stmt.where(_O.c.mjd >= query.mjd_from)
    if query.mjd_to is not None:
        stmt = stmt.where(_O.c.mjd < query.mjd_to)
    if query.cone is not None:
        dec_min, dec_max, ra_ranges = query.cone.box()
        stmt = stmt.where(_D.c.dec.between(dec_min, dec_max), _D.c.ra.is_not(None))
        if ra_ranges is not None:
            stmt = stmt.where(sa.or_(*(_D.c.ra.between(lo, hi) for lo, hi in ra_ranges)))
    return stmt.order_by(_D.c.score.desc(), _D.c.id)


def _row(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    created = out.get("created_at")
    if isinstance(created, datetime):
        out["created_at"] = created.astimezone(UTC).isoformat().replace("+00:00", "Z")
    out["has_stamp"] = bool(out.pop("stamp_uri", None))
    return out


def _in_cone(conn: sa.Connection, stmt: sa.Select, cone: Cone) -> Iterator[dict[str, Any]]:
    """The rows of the box query that lie inside ``cone``, with their separation, in order."""
    result = conn.execution_options(stream_results=True, yield_per=SCAN_CHUNK).execute(stmt)
    for chunk in result.partitions(SCAN_CHUNK):
        rows = [_row(r) for r in chunk]
        sep = cone.separation([r["ra"] for r in rows], [r["dec"] for r in rows])
        for r, s in zip(rows, sep, strict=True):
            if s <= cone.radius:
                r["separation"] = float(s) * 3600.0
                yield r


def search(catalog: Any, query: DetectionQuery) -> Page:
    """One page of detections matching ``query`` (see the module docstring)."""
    stmt = _filtered(query)
    with catalog.engine.connect() as conn:
        if query.cone is None:
            rows = [_row(r) for r in conn.execute(stmt.limit(query.limit + 1).offset(query.offset))]
        else:
            rows = []
            for i, row in enumerate(_in_cone(conn, stmt, query.cone)):
                if i >= query.offset:
                    rows.append(row)
                if len(rows) > query.limit:
                    break
    more = len(rows) > query.limit
    return Page(rows[: query.limit], query.offset, query.limit, query.offset + query.limit if more else None)


def detection(catalog: Any, detection_id: int) -> dict[str, Any] | None:
    """One detection (the search's row) and its ``stamp_uri``; ``None`` when there is none."""
    with catalog.engine.connect() as conn:
        row = conn.execute(_select().where(_D.c.id == detection_id)).one_or_none()
    if row is None:
        return None
    out = _row(row)
    out["stamp_uri"] = row.stamp_uri
    return out


def run_observations(catalog: Any, run_id: str) -> list[dict[str, Any]]:
    """The observations ``run_id`` processed (``inference_results``), with what it found in each."""
    stmt = (
        sa.select(
            _O.c.id,
            _O.c.name,
            _O.c.mjd,
            _O.c.filter,
            _O.c.status,
            _O.c.ra_center,
            _O.c.dec_center,
            _RES.c.model_version,
            _RES.c.detections,
            sa.select(sa.func.max(_D.c.score))
            .where(_D.c.observation_id == _O.c.id, _D.c.model_version == _RES.c.model_version)
            .scalar_subquery()
            .label("best_score"),
        )
        .select_from(_RES.join(_O, _RES.c.observation_id == _O.c.id))
        .where(_RES.c.run_id == run_id)
        .order_by(_O.c.mjd, _O.c.id)
    )
    with catalog.engine.connect() as conn:
        return [_plain(r) for r in conn.execute(stmt)]


def _plain(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["status"] = getattr(out.get("status"), "value", out.get("status"))
    return out


# -- exports ---------------------------------------------------------------------------------------


def export_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The export's columns: all of :data:`COLUMNS`, ``separation`` only for cone searches."""
    cone = any("separation" in r for r in rows)
    return [c for c in COLUMNS if c != "separation" or cone]


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV with a header; empty cells for missing values."""
    columns = list(columns or export_columns(rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def to_votable(
    rows: Sequence[dict[str, Any]], description: str = "", columns: Sequence[str] | None = None
) -> bytes:
    """A VOTable (astropy.io.votable) with units, UCDs and descriptions on every column."""
    from astropy.io.votable.tree import Field, Resource, TableElement, VOTableFile

    columns = list(columns or export_columns(rows))
    votable = VOTableFile()
    resource = Resource()
    votable.resources.append(resource)
    table = TableElement(votable, name="detections")
    table.description = description or "AstrID detections"
    resource.tables.append(table)
    kinds = {c: _kind(c) for c in columns}
    for name in columns:
        unit, ucd, text = COLUMNS[name]
        datatype, arraysize = kinds[name]
        field = Field(votable, name=name, datatype=datatype, arraysize=arraysize, unit=unit, ucd=ucd)
        field.description = text
        table.fields.append(field)
    table.create_arrays(len(rows))
    for i, row in enumerate(rows):
        values, mask = [], []
        for name in columns:
            value = row.get(name)
            missing = value is None
            values.append(_missing(kinds[name][0]) if missing else value)
            mask.append(missing)
        table.array[i] = tuple(values)
        table.array.mask[i] = tuple(mask)
    buffer = io.BytesIO()
    votable.to_xml(buffer)
    return buffer.getvalue()


_TEXT = {"observation", "run_id", "model_version", "filter", "created_at"}
_INTS = {"id", "observation_id"}


def _kind(name: str) -> tuple[str, str | None]:
    if name in _TEXT:
        return "unicodeChar", "*"
    if name in _INTS:
        return "long", None
    if name == "has_stamp":
        return "boolean", None
    return "double", None


def _missing(datatype: str) -> Any:
    return {"unicodeChar": "", "long": 0, "boolean": False}.get(datatype, math.nan)
