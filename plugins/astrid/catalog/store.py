"""The observation catalog: registration, atomic claims with leases, idempotent result writes.

Concurrency model
-----------------
Many runs (realtime, batch chunks, retries, a CLI) share one catalog. Work is handed out by
:meth:`Catalog.claim`, which atomically moves observations to ``claimed`` with a lease
(``claimed_by`` = run id, ``lease_until``):

* PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in the same transaction, so
  concurrent claimers never block on, or double-claim, each other's rows.
* SQLite: one ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING ...`` inside
  ``BEGIN IMMEDIATE`` (writers are serialised up front, so no lock-upgrade deadlocks); connections
  use WAL and a 30 s busy timeout.

A run whose lease expired (its worker died) loses the observation: the next ``claim`` by any
*other* run counts the expiry as a failed attempt (``attempts + 1``, ``last_error`` names the dead
run) and takes it over while ``attempts < max_attempts``; past that it is left ``failed``, so a
poison observation that kills its worker is not retried forever. The dead run's late
:meth:`Catalog.complete` is refused with :class:`CatalogError`.

A run that claims again with the *same* run id (an Airflow task retry) gets its own still-claimed
observations back first, with a renewed lease, so a retried task resumes its own work.

Results are idempotent per (observation, model version): :meth:`Catalog.complete` replaces the
detection set and marks the observation inferred in one transaction; calling it again with the
same model version is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from astrid.catalog.models import (
    RUN_KINDS,
    AlertStateRow,
    DetectionRow,
    InferenceResultRow,
    InferenceRunRow,
    InferenceStatisticsRow,
    ObservationRow,
    ObservationStatus,
)
from astrid.errors import CatalogError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
MAX_ERROR_CHARS = 4000
# pg_advisory_xact_lock key serialising concurrent Catalog.migrate() calls ("astridmg").
MIGRATION_LOCK_KEY = int.from_bytes(b"astridmg", "big") & 0x7FFF_FFFF_FFFF_FFFF
_CHUNK = 500

_O = ObservationRow.__table__
_D = DetectionRow.__table__
_R = InferenceRunRow.__table__
_A = AlertStateRow.__table__
_RES = InferenceResultRow.__table__
_ST = InferenceStatisticsRow.__table__
_S = ObservationStatus
PHOTOMETRY = ("flux_err", "snr", "mag", "mag_err")  # optional detection measurements (astrid.photometry)


def _observation_id(observation: int | Claim) -> int:
    """The catalog id of a claim or of an id: the catalog's write methods take either."""
    return observation.observation_id if isinstance(observation, Claim) else int(observation)


def _utcnow(now: datetime | None = None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


@dataclass(frozen=True)
class Claim:
    """One observation handed to one run. ``lease_until`` is ``None`` for read-only views (labelled())."""

    observation_id: int
    name: str
    science_uri: str
    reference_uri: str
    difference_uri: str | None
    truth_uri: str | None
    run_id: str | None
    lease_until: datetime | None
    attempts: int = 0

    def to_xcom(self) -> dict[str, Any]:
        """JSON-serialisable dict (``lease_until`` as an ISO-8601 string)."""
        data = asdict(self)
        data["lease_until"] = self.lease_until.isoformat() if self.lease_until is not None else None
        return data

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> Claim:
        """Inverse of :meth:`to_xcom`; unknown keys are ignored, missing required keys raise CatalogError."""
        optional = {
            "difference_uri": None,
            "truth_uri": None,
            "run_id": None,
            "lease_until": None,
            "attempts": 0,
        }
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data:
                values[f.name] = data[f.name]
            elif f.name in optional:
                values[f.name] = optional[f.name]
            else:
                raise CatalogError(
                    f"claim XCom {dict(data)!r} lacks {f.name!r}: was it made by Claim.to_xcom()?"
                )
        lease = values.get("lease_until")
        if isinstance(lease, str):
            values["lease_until"] = datetime.fromisoformat(lease)
        return cls(**values)


@dataclass
class NewObservation:
    """Input to :meth:`Catalog.register`. Labelled observations must carry their ``truth_uri``."""

    name: str
    science_uri: str
    reference_uri: str
    difference_uri: str | None = None
    truth_uri: str | None = None
    labelled: bool = False
    survey: str = "synthetic"
    instrument: str | None = None
    filter: str | None = None
    mjd: float | None = None
    exptime: float | None = None
    ra_center: float | None = None
    dec_center: float | None = None
    content_hash: str | None = None
    arrived_at: datetime | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class Registered:
    """What :meth:`Catalog.register_unique` did: ``created`` is False when the same content
    (``content_hash``) was already registered, under ``name``."""

    observation_id: int
    name: str
    created: bool
    status: str
    arrived_at: datetime | None


_FILE_COLUMNS = ("science_uri", "reference_uri", "difference_uri")


_CLAIM_COLUMNS = (
    _O.c.id,
    _O.c.name,
    _O.c.science_uri,
    _O.c.reference_uri,
    _O.c.difference_uri,
    _O.c.truth_uri,
    _O.c.claimed_by,
    _O.c.lease_until,
    _O.c.attempts,
    _O.c.mjd,
)


def _claim_from_row(row: Any, run_id: str | None = None, lease: bool = True) -> Claim:
    return Claim(
        observation_id=row.id,
        name=row.name,
        science_uri=row.science_uri,
        reference_uri=row.reference_uri,
        difference_uri=row.difference_uri,
        truth_uri=row.truth_uri,
        run_id=run_id if run_id is not None else (row.claimed_by if lease else None),
        lease_until=row.lease_until if lease else None,
        attempts=row.attempts,
    )


def _registered(row: Any, *, created: bool) -> Registered:
    status = row.status.value if isinstance(row.status, ObservationStatus) else str(row.status)
    return Registered(row.id, row.name, created, status, row.arrived_at)


def _same_files_or_refuse(stored: Any, wanted: Mapping[str, Any]) -> None:
    differ = [c for c in _FILE_COLUMNS if getattr(stored, c) != wanted[c]]
    if differ:
        column = differ[0]
        raise CatalogError(
            f"observation {stored.name!r} is already registered with {column} "
            f"{getattr(stored, column)!r}, not {wanted[column]!r}: re-registering a name never "
            f"replaces its files; register the new files under another name"
        )


def _plain(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for key, value in out.items():
        if isinstance(value, ObservationStatus):
            out[key] = value.value
    return out


def _detection_rows(
    observation_id: int, model_version: str, run_id: str, detections: Sequence[Any], now: datetime
) -> list[dict[str, Any]]:
    return [
        {
            "observation_id": observation_id,
            "model_version": model_version,
            "x": _finite("x", d.x, observation_id, optional=False),
            "y": _finite("y", d.y, observation_id, optional=False),
            "ra": _finite("ra", d.ra, observation_id, optional=True),
            "dec": _finite("dec", d.dec, observation_id, optional=True),
            "score": _finite("score", d.score, observation_id, optional=False),
            "flux": _finite("flux", getattr(d, "flux", None), observation_id, optional=True),
            **{k: _finite(k, getattr(d, k, None), observation_id, optional=True) for k in PHOTOMETRY},
            "stamp_uri": getattr(d, "stamp_uri", None),
            "run_id": run_id,
            "created_at": now,
        }
        for d in detections
    ]


def _finite(name: str, value: Any, observation_id: int, *, optional: bool) -> float | None:
    if value is None:
        if optional:
            return None
        raise CatalogError(f"detection for observation {observation_id} has no {name}")
    number = float(value)
    if not math.isfinite(number):
        raise CatalogError(f"detection for observation {observation_id} has a non-finite {name}: {value!r}")
    return number


class Catalog:
    """The observation catalog on PostgreSQL or SQLite. Thread-safe; make one per process."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = sa.make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
            raise CatalogError(
                f"SQLite {sqlite3.sqlite_version} is too old for the catalog (needs 3.35+ for RETURNING): "
                "use PostgreSQL or a newer Python/SQLite"
            )
        self.engine = sa.create_engine(self.url, echo=echo, pool_pre_ping=True)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine, memory=self.url.database in (None, "", ":memory:"))
        # A forked child (executor workers) must not reuse the parent's pooled sockets/handles.
        engine_ref = weakref.ref(self.engine)
        os.register_at_fork(after_in_child=lambda: _dispose_after_fork(engine_ref))

    def __repr__(self) -> str:
        return f"Catalog({self.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        """Close pooled connections (call in a forked child, or when done)."""
        self.engine.dispose()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sa.Connection]:
        """One transaction. On SQLite, ``write`` transactions start with ``BEGIN IMMEDIATE``."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(astrid_write=True)
            with conn.begin():
                yield conn

    @property
    def _pg(self) -> bool:
        return self.dialect == "postgresql"

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    # ------------------------------------------------------------------ schema

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option(
            "sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%")
        )
        return cfg

    def migrate(self, revision: str = "head") -> None:
        """``alembic upgrade <revision>`` in one transaction. Idempotent; safe to call concurrently
        (a PostgreSQL advisory lock / SQLite ``BEGIN IMMEDIATE`` serialises callers, and the second
        finds the schema already at head)."""
        from alembic import command

        cfg = self._alembic_config()
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if not self._pg:
                # SQLite batch migrations copy and drop tables: with foreign keys on, dropping
                # `observations` would cascade-delete every detection. Off (outside a transaction,
                # as SQLite requires) for the migration, checked before commit, on again after.
                raw.execute("PRAGMA foreign_keys = OFF")
            try:
                conn.execution_options(astrid_write=True)
                with conn.begin():
                    if self._pg:
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                        )
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
                    if not self._pg:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise CatalogError(f"migration to {revision} broke foreign keys: {broken[:5]}")
            finally:
                if not self._pg:
                    raw.execute("PRAGMA foreign_keys = ON")

    def revision(self) -> str | None:
        """The schema revision the database is at (``None`` before :meth:`migrate`)."""
        from alembic.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision shipped with this code."""
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    # ------------------------------------------------------------------ registration

    def register(
        self, observations: Iterable[NewObservation], status: ObservationStatus | str = _S.PREPROCESSED
    ) -> list[int]:
        """Insert observations; a name registered again *with the same files* is left untouched and
        its id returned (idempotent). A name registered again with other files is refused
        (:class:`CatalogError`, nothing of the batch registered): the old files would silently win.

        Returns ids in input order.
        """
        status = _status(status)
        items = list(observations)
        if not items:
            return []
        now = _utcnow()
        rows = [self._new_row(obs, status, now) for obs in items]
        ids: dict[str, int] = {}
        with self._tx() as conn:
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                conn.execute(self._insert(_O).on_conflict_do_nothing(index_elements=["name"]), chunk)
                wanted = {r["name"]: r for r in chunk}
                stored = conn.execute(
                    sa.select(_O.c.name, _O.c.id, *(_O.c[c] for c in _FILE_COLUMNS)).where(
                        _O.c.name.in_(list(wanted))
                    )
                )
                for row in stored:
                    _same_files_or_refuse(row, wanted[row.name])
                    ids[row.name] = row.id
        return [ids[obs.name] for obs in items]

    @staticmethod
    def _new_row(obs: NewObservation, status: ObservationStatus, now: datetime) -> dict[str, Any]:
        if not obs.name or not obs.science_uri or not obs.reference_uri:
            raise CatalogError(f"observation {obs.name!r} needs a name, science_uri and reference_uri")
        if obs.labelled and not obs.truth_uri:
            raise CatalogError(f"labelled observation {obs.name!r} has no truth_uri: keep its ground truth")
        row = {**asdict(obs), "status": status, "attempts": 0, "created_at": now, "updated_at": now}
        if row["arrived_at"] is not None:
            row["arrived_at"] = _utcnow(row["arrived_at"])
        return row

    def register_unique(
        self, observation: NewObservation, status: ObservationStatus | str = _S.PREPROCESSED
    ) -> Registered:
        """Register one observation from outside, idempotent by ``content_hash``, in one transaction.

        * new content under a new name: inserted (``created=True``);
        * the same content again (any name): the existing observation (``created=False``);
        * other content under an existing name: :class:`CatalogError` naming both, nothing changed.

        Concurrent callers with the same content get one row between them (the unique constraint
        on ``content_hash`` decides; the loser sees the winner's row).
        """
        if not observation.content_hash:
            raise CatalogError(f"register_unique({observation.name!r}) needs a content_hash")
        status = _status(status)
        row = self._new_row(observation, status, _utcnow())
        columns = (_O.c.id, _O.c.name, _O.c.status, _O.c.arrived_at, _O.c.content_hash, _O.c.created_at)
        with self._tx() as conn:
            inserted = conn.execute(
                self._insert(_O).values(**row).on_conflict_do_nothing().returning(*columns)
            ).one_or_none()
            if inserted is not None:
                return _registered(inserted, created=True)
            same = conn.execute(
                sa.select(*columns).where(_O.c.content_hash == observation.content_hash)
            ).one_or_none()
            if same is not None:
                return _registered(same, created=False)
            other = conn.execute(sa.select(*columns).where(_O.c.name == observation.name)).one_or_none()
        if other is None:  # pragma: no cover - a conflict that is neither key cannot happen
            raise CatalogError(f"observation {observation.name!r} could not be registered (unique conflict)")
        raise CatalogError(
            f"observation id {observation.name!r} is already taken by other files (registered "
            f"{other.created_at:%Y-%m-%d %H:%M:%S} UTC, content {other.content_hash or 'unhashed'}"
            f"{'' if other.content_hash else ', seeded'}): choose another --id, or leave --id out "
            f"to get one derived from the content"
        )

    # ------------------------------------------------------------------ claims

    def claim(
        self,
        limit: int,
        run_id: str,
        lease: timedelta,
        *,
        max_attempts: int = 3,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Atomically claim up to ``limit`` observations for ``run_id`` for ``lease``.

        Claimable, own claims first then oldest (mjd, id) first:

        * ``claimed`` by this same ``run_id`` (a retried task resumes its work; lease renewed);
        * ``preprocessed``;
        * ``claimed`` by another run whose lease expired: counted as a failed attempt, then taken
          over like a failed one;
        * ``failed`` with ``attempts < max_attempts``.

        Only rows with a difference image: one still waiting for its subtraction (no
        ``difference_uri``, claimed or failed there) belongs to :meth:`claim_for_subtraction`.
        ``now`` overrides the clock (tests, replays).
        """
        if not run_id:
            raise CatalogError("claim() needs a run_id")
        # a row without a difference image is the subtraction step's (claim_for_subtraction)
        ready = _O.c.difference_uri.is_not(None)
        own = sa.and_(_O.c.status == _S.CLAIMED, _O.c.claimed_by == run_id, ready)
        claimable = sa.or_(
            _O.c.status == _S.PREPROCESSED,
            own,
            sa.and_(_O.c.status == _S.FAILED, _O.c.attempts < max_attempts, ready),
        )
        return self._claim(limit, run_id, lease, claimable, now)

    def claim_for_subtraction(
        self,
        limit: int,
        run_id: str,
        lease: timedelta,
        *,
        max_attempts: int = 3,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Atomically claim up to ``limit`` observations that still need their difference image
        (no ``difference_uri``), leased to ``run_id``, for the subtraction step
        (:mod:`astrid.preprocess`): ``ingested`` ones, this run's own claims, and ``failed`` ones
        with ``attempts < max_attempts`` (a subtraction that died or hit a storage error).

        The same leases as :meth:`claim`; the two never hand out the same row, because inference
        claims only rows that have a difference. Finish each with :meth:`complete_subtraction`,
        :meth:`reject` (an unusable pair) or :meth:`fail`.
        """
        if not run_id:
            raise CatalogError("claim_for_subtraction() needs a run_id")
        waiting = _O.c.difference_uri.is_(None)
        claimable = sa.and_(
            waiting,
            sa.or_(
                _O.c.status == _S.INGESTED,
                sa.and_(_O.c.status == _S.CLAIMED, _O.c.claimed_by == run_id),
                sa.and_(_O.c.status == _S.FAILED, _O.c.attempts < max_attempts),
            ),
        )
        return self._claim(limit, run_id, lease, claimable, now)

    def _claim(
        self, limit: int, run_id: str, lease: timedelta, claimable: Any, now: datetime | None
    ) -> list[Claim]:
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise CatalogError(f"claim() lease must be a positive timedelta, got {lease!r}")
        if limit <= 0:
            return []
        now = _utcnow(now)
        until = now + lease
        order = (
            sa.case((_O.c.claimed_by == run_id, 0), else_=1),
            _O.c.mjd.asc().nulls_last(),
            _O.c.id,
        )
        values = {"status": _S.CLAIMED, "claimed_by": run_id, "lease_until": until, "updated_at": now}
        with self._tx() as conn:
            self._expire_leases(conn, run_id, now)
            pick = sa.select(_O.c.id).where(claimable).order_by(*order).limit(limit)
            if self._pg:
                ids = list(conn.scalars(pick.with_for_update(skip_locked=True)))
                if not ids:
                    return []
                stmt = sa.update(_O).where(_O.c.id.in_(ids))
            else:
                stmt = sa.update(_O).where(_O.c.id.in_(pick.scalar_subquery()))
            rows = conn.execute(stmt.values(**values).returning(*_CLAIM_COLUMNS)).all()
        rows.sort(key=lambda r: (r.mjd is None, r.mjd if r.mjd is not None else 0.0, r.id))
        return [_claim_from_row(r) for r in rows]

    def _expire_leases(self, conn: sa.Connection, run_id: str, now: datetime) -> None:
        """Turn other runs' expired claims into failed attempts (claimable while attempts allow)."""
        expired = sa.and_(_O.c.status == _S.CLAIMED, _O.c.lease_until < now, _O.c.claimed_by != run_id)
        if self._pg:
            ids = list(conn.scalars(sa.select(_O.c.id).where(expired).with_for_update(skip_locked=True)))
            if not ids:
                return
            where: Any = _O.c.id.in_(ids)
        else:
            where = expired
        message = sa.literal("lease of run ") + _O.c.claimed_by + sa.literal(" expired without a result")
        conn.execute(
            sa.update(_O)
            .where(where)
            .values(
                status=_S.FAILED,
                attempts=_O.c.attempts + 1,
                last_error=message,
                lease_until=None,
                updated_at=now,
            )
        )

    def _lock_observation(self, conn: sa.Connection, observation_id: int) -> Any:
        stmt = sa.select(
            _O.c.id, _O.c.name, _O.c.status, _O.c.claimed_by, _O.c.model_version, _O.c.lease_until
        ).where(_O.c.id == observation_id)
        if self._pg:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).one_or_none()
        if row is None:
            raise CatalogError(f"observation {observation_id} is not in the catalog")
        return row

    def _read_rows(self, stmt: Any) -> list[dict[str, Any]]:
        """The rows a read-only query returns, as plain dicts (JSON-ready values)."""
        with self._tx(write=False) as conn:
            return [_plain(r) for r in conn.execute(stmt)]

    @staticmethod
    def _finish_claim(
        conn: sa.Connection, observation_id: int, status: ObservationStatus, now: datetime, **values: Any
    ) -> None:
        """End a run's claim on one observation: its new ``status`` and ``values``, the lease
        cleared. ``claimed_by`` stays, so a retried task of the same run is recognised as done."""
        conn.execute(
            sa.update(_O)
            .where(_O.c.id == observation_id)
            .values(status=status, lease_until=None, updated_at=now, **values)
        )

    @staticmethod
    def _refuse(row: Any, run_id: str, action: str) -> CatalogError:
        holder = f"claimed by run {row.claimed_by!r}" if row.status == _S.CLAIMED else f"{row.status.value}"
        if row.status != _S.CLAIMED and row.claimed_by:
            holder += f" (last run {row.claimed_by!r})"
        return CatalogError(
            f"observation {row.id} ({row.name}) is {holder}, not claimed by run {run_id!r}: "
            f"refusing to {action} (its lease expired and another run took it over?)"
        )

    def complete(
        self,
        observation: int | Claim,
        run_id: str,
        model_version: str,
        detections: Sequence[Any],
        *,
        now: datetime | None = None,
    ) -> int:
        """Store the detections of one observation and mark it inferred, in one transaction.

        ``detections`` are objects with ``x, y, ra, dec, score, flux`` attributes (and optionally
        the photometry ``flux_err, snr, mag, mag_err`` and ``stamp_uri``). The previous
        detections of (observation, model_version) are replaced. Allowed only while ``run_id``
        holds the claim (even past its lease, as long as nobody took it over); if the observation
        is already inferred by ``model_version`` this is a no-op returning the stored count.
        Returns the number of detections stored.
        """
        observation_id = _observation_id(observation)
        if not model_version:
            raise CatalogError("complete() needs a model_version")
        now = _utcnow(now)
        rows = _detection_rows(observation_id, model_version, run_id, detections, now)
        with self._tx() as conn:
            row = self._lock_observation(conn, observation_id)
            if row.status == _S.INFERRED and row.model_version == model_version:
                return self._count_detections(conn, observation_id, model_version)
            if row.status != _S.CLAIMED or row.claimed_by != run_id:
                raise self._refuse(row, run_id, f"store {model_version} detections")
            self._replace_results(conn, observation_id, model_version, run_id, rows, now)
            self._finish_claim(
                conn, observation_id, _S.INFERRED, now, model_version=model_version, inferred_at=now
            )
        return len(rows)

    def complete_subtraction(
        self,
        observation: int | Claim,
        run_id: str,
        *,
        difference_uri: str,
        reference_uri: str,
        meta: Mapping[str, Any],
        now: datetime | None = None,
    ) -> None:
        """Record a claimed observation's difference image (and its reference, resampled onto the
        science grid) and mark it ``preprocessed``: claimable by inference. ``meta`` entries are
        merged into the observation's ``meta`` (``awaiting`` is dropped). Allowed only while
        ``run_id`` holds the claim; a no-op when this run already completed it (a retried task)."""
        observation_id = _observation_id(observation)
        if not difference_uri or not reference_uri:
            raise CatalogError("complete_subtraction() needs a difference_uri and a reference_uri")
        now = _utcnow(now)
        with self._tx() as conn:
            row = self._lock_observation(conn, observation_id)
            current = conn.execute(
                sa.select(_O.c.meta, _O.c.difference_uri).where(_O.c.id == observation_id)
            ).one()
            if current.difference_uri and row.claimed_by == run_id:
                return  # done by this run already (and maybe claimed by its inference since)
            if row.status != _S.CLAIMED or row.claimed_by != run_id:
                raise self._refuse(row, run_id, "store its difference image")
            merged = {k: v for k, v in dict(current.meta or {}).items() if k != "awaiting"}
            merged.update(meta)
            self._finish_claim(
                conn,
                observation_id,
                _S.PREPROCESSED,
                now,
                difference_uri=difference_uri,
                reference_uri=reference_uri,
                meta=merged,
            )

    def _replace_results(
        self,
        conn: sa.Connection,
        observation_id: int,
        model_version: str,
        run_id: str,
        rows: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        """The detection set of (observation, model version) becomes ``rows``; the pair is marked done."""
        conn.execute(
            sa.delete(_D).where(_D.c.observation_id == observation_id, _D.c.model_version == model_version)
        )
        if rows:
            conn.execute(sa.insert(_D), rows)
        stmt = self._insert(_RES).values(
            observation_id=observation_id,
            model_version=model_version,
            run_id=run_id,
            detections=len(rows),
            created_at=now,
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["observation_id", "model_version"],
                set_={
                    "run_id": stmt.excluded.run_id,
                    "detections": stmt.excluded.detections,
                    "created_at": now,
                },
            )
        )

    def store_results(
        self,
        observation_id: int,
        run_id: str,
        model_version: str,
        detections: Sequence[Any],
        *,
        now: datetime | None = None,
    ) -> int:
        """Reprocessing: store ``model_version``'s detections of an observation *beside* the others,
        without claiming it or touching its status (the live queue is never disturbed).

        Idempotent per (observation, model version): running it again replaces that version's
        set, never another version's. Returns the number of detections stored.
        """
        if not model_version:
            raise CatalogError("store_results() needs a model_version")
        now = _utcnow(now)
        rows = _detection_rows(observation_id, model_version, run_id, detections, now)
        with self._tx() as conn:
            exists = conn.scalar(sa.select(_O.c.id).where(_O.c.id == observation_id))
            if exists is None:
                raise CatalogError(f"observation {observation_id} is not in the catalog")
            self._replace_results(conn, observation_id, model_version, run_id, rows, now)
        return len(rows)

    def reprocess_candidates(
        self,
        model_version: str,
        *,
        mjd_from: float | None = None,
        mjd_to: float | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[Claim]:
        """Observations observed in ``[mjd_from, mjd_to)`` that ``model_version`` has not processed
        yet (no ``inference_results`` row, not live-inferred by it), not rejected, not waiting for
        its subtraction (no difference image to detect on yet), by id from
        ``after_id`` on (a caller pages with the last id it saw, so one that fails is not offered
        again in the same pass).

        Read-only: nothing is claimed (``run_id``/``lease_until`` are ``None``), so the live queue
        keeps its work; whatever a stopped reprocessing run left is simply still a candidate.
        """
        done = sa.select(_RES.c.id).where(
            _RES.c.observation_id == _O.c.id, _RES.c.model_version == model_version
        )
        stmt = sa.select(*_CLAIM_COLUMNS).where(
            _O.c.id > after_id,
            _O.c.status != _S.REJECTED,
            # still in the subtraction queue (claim_for_subtraction): nothing to detect on yet
            sa.or_(
                _O.c.difference_uri.is_not(None), _O.c.status.not_in([_S.INGESTED, _S.CLAIMED, _S.FAILED])
            ),
            ~sa.exists(done),
            ~sa.and_(_O.c.status == _S.INFERRED, _O.c.model_version == model_version),
        )
        if mjd_from is not None:
            stmt = stmt.where(_O.c.mjd >= mjd_from)
        if mjd_to is not None:
            stmt = stmt.where(_O.c.mjd < mjd_to)
        stmt = stmt.order_by(_O.c.id).limit(limit)
        with self._tx(write=False) as conn:
            return [_claim_from_row(r, lease=False) for r in conn.execute(stmt)]

    def results(self, observation_id: int) -> dict[str, int]:
        """{model version: detections} for every version that has processed the observation."""
        stmt = sa.select(_RES.c.model_version, _RES.c.detections).where(
            _RES.c.observation_id == observation_id
        )
        with self._tx(write=False) as conn:
            return dict(conn.execute(stmt.order_by(_RES.c.model_version)).tuples().all())

    @staticmethod
    def _count_detections(conn: sa.Connection, observation_id: int, model_version: str) -> int:
        return conn.scalar(
            sa.select(sa.func.count())
            .select_from(_D)
            .where(_D.c.observation_id == observation_id, _D.c.model_version == model_version)
        )

    def fail(self, observation: int | Claim, run_id: str, error: str, *, now: datetime | None = None) -> int:
        """Mark a claimed observation failed (``attempts + 1``, lease cleared, ``last_error`` kept,
        truncated). Repeating it for the same run is a no-op. Returns ``attempts``."""
        observation_id = _observation_id(observation)
        now = _utcnow(now)
        text = str(error)
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 20] + " …[truncated]"
        with self._tx() as conn:
            row = self._lock_observation(conn, observation_id)
            if not (row.status == _S.FAILED and row.claimed_by == run_id):
                if row.status != _S.CLAIMED or row.claimed_by != run_id:
                    raise self._refuse(row, run_id, "mark it failed")
                self._finish_claim(
                    conn, observation_id, _S.FAILED, now, attempts=_O.c.attempts + 1, last_error=text
                )
            return conn.scalar(sa.select(_O.c.attempts).where(_O.c.id == observation_id))

    def reject(
        self, observation: int | Claim, run_id: str, reason: str, *, now: datetime | None = None
    ) -> None:
        """Mark a claimed observation rejected (bad data; terminal), keeping ``reason``."""
        observation_id = _observation_id(observation)
        now = _utcnow(now)
        with self._tx() as conn:
            row = self._lock_observation(conn, observation_id)
            if row.status == _S.REJECTED and row.claimed_by == run_id:
                return
            if row.status != _S.CLAIMED or row.claimed_by != run_id:
                raise self._refuse(row, run_id, "reject it")
            self._finish_claim(
                conn, observation_id, _S.REJECTED, now, rejection_reason=str(reason)[:MAX_ERROR_CHARS]
            )

    def release(self, run_id: str, *, now: datetime | None = None) -> int:
        """Return a run's unfinished claims to the queue they came from (clean abort):
        ``preprocessed``, or ``ingested`` for one still without its difference image. Returns how many."""
        now = _utcnow(now)
        back = sa.case((_O.c.difference_uri.is_(None), _S.INGESTED.value), else_=_S.PREPROCESSED.value)
        with self._tx() as conn:
            result = conn.execute(
                sa.update(_O)
                .where(_O.c.status == _S.CLAIMED, _O.c.claimed_by == run_id)
                .values(status=back, claimed_by=None, lease_until=None, updated_at=now)
            )
            return result.rowcount

    # ------------------------------------------------------------------ runs

    _RUN_FIELDS = frozenset(c.name for c in _R.c) - {"id", "created_at", "updated_at"}

    def record_run(self, **values: Any) -> dict[str, Any]:
        """Insert or update the run ``(dag_id, run_id)``: only the given fields are written, so
        re-running a DAG run overwrites its row and never double counts. Returns the row."""
        unknown = set(values) - self._RUN_FIELDS
        if unknown:
            raise CatalogError(
                f"record_run() got unknown field(s) {sorted(unknown)}; known: {sorted(self._RUN_FIELDS)}"
            )
        if not values.get("dag_id") or not values.get("run_id"):
            raise CatalogError("record_run() needs dag_id and run_id")
        kind = values.get("kind")
        if kind is not None and kind not in RUN_KINDS:
            raise CatalogError(f"record_run() kind={kind!r} is not one of {', '.join(RUN_KINDS)}")
        now = _utcnow()
        stmt = self._insert(_R).values(**values, created_at=now, updated_at=now)
        update = {k: stmt.excluded[k] for k in values if k not in ("dag_id", "run_id")}
        update["updated_at"] = stmt.excluded.updated_at
        stmt = stmt.on_conflict_do_update(index_elements=["dag_id", "run_id"], set_=update)
        with self._tx() as conn:
            conn.execute(stmt)
            row = conn.execute(
                sa.select(_R).where(_R.c.dag_id == values["dag_id"], _R.c.run_id == values["run_id"])
            ).one()
        return _plain(row)

    def runs(self, since: datetime | None = None, dag_id: str | None = None) -> list[dict[str, Any]]:
        """Recorded runs, **newest first** (``started_at``, then insertion; runs without a start
        time last); ``since`` keeps runs started at or after it, ``dag_id`` one DAG's runs."""
        stmt = sa.select(_R).order_by(_R.c.started_at.desc().nulls_last(), _R.c.id.desc())
        if since is not None:
            stmt = stmt.where(_R.c.started_at >= since)
        if dag_id is not None:
            stmt = stmt.where(_R.c.dag_id == dag_id)
        return self._read_rows(stmt)

    # ------------------------------------------------------------------ alerts

    def alert_due(
        self,
        key: str,
        cooldown: timedelta,
        *,
        payload: Any = None,
        now: datetime | None = None,
    ) -> bool:
        """Atomically decide whether alert ``key`` may be sent now, and record it if so.

        True (and ``last_sent_at = now``, ``count + 1``, ``suppressed = 0``, payload stored) when
        never sent or last sent at least ``cooldown`` ago; otherwise False (``suppressed + 1``).
        One statement (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``): concurrent callers
        get exactly one True per cool-down window.
        """
        now = _utcnow(now)
        text = payload if payload is None or isinstance(payload, str) else json.dumps(payload, default=str)
        stmt = self._insert(_A).values(key=key, last_sent_at=now, count=1, suppressed=0, last_payload=text)
        due = _A.c.last_sent_at <= now - cooldown
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "last_sent_at": sa.case((due, stmt.excluded.last_sent_at), else_=_A.c.last_sent_at),
                "count": sa.case((due, _A.c.count + 1), else_=_A.c.count),
                "suppressed": sa.case((due, 0), else_=_A.c.suppressed + 1),
                "last_payload": sa.case((due, stmt.excluded.last_payload), else_=_A.c.last_payload),
            },
        ).returning(_A.c.suppressed)
        with self._tx() as conn:
            return conn.execute(stmt).scalar_one() == 0

    def alert_state(self, key: str) -> dict[str, Any] | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(_A).where(_A.c.key == key)).one_or_none()
        return None if row is None else _plain(row)

    # ------------------------------------------------------------------ reads

    def labelled(self, limit: int) -> list[Claim]:
        """Up to ``limit`` labelled observations (with truth), by id; read-only, nothing is claimed.

        Rejected (bad-data) observations are left out. ``run_id``/``lease_until`` are ``None``.
        """
        stmt = (
            sa.select(*_CLAIM_COLUMNS)
            .where(_O.c.labelled.is_(True), _O.c.truth_uri.is_not(None), _O.c.status != _S.REJECTED)
            .order_by(_O.c.id)
            .limit(limit)
        )
        with self._tx(write=False) as conn:
            return [_claim_from_row(r, lease=False) for r in conn.execute(stmt)]

    def status_counts(self) -> dict[str, int]:
        """Observations per status; every status is present (0 when none)."""
        counts = dict.fromkeys((s.value for s in _S), 0)
        with self._tx(write=False) as conn:
            for status, n in conn.execute(sa.select(_O.c.status, sa.func.count()).group_by(_O.c.status)):
                counts[status.value] = n
        return counts

    def observations(
        self, status: ObservationStatus | str | None = None, *, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Observations (all, or those with ``status``) as dicts, by id."""
        stmt = sa.select(_O).order_by(_O.c.id)
        if status is not None:
            stmt = stmt.where(_O.c.status == _status(status))
        if limit is not None:
            stmt = stmt.limit(limit)
        return self._read_rows(stmt)

    def get(self, observation: int | str) -> dict[str, Any]:
        """One observation by id (int) or name (str); CatalogError when unknown."""
        column = _O.c.name if isinstance(observation, str) else _O.c.id
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(_O).where(column == observation)).one_or_none()
        if row is None:
            raise CatalogError(f"observation {observation!r} is not in the catalog")
        return _plain(row)

    def detections(
        self, observation_id: int | None = None, model_version: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored detections, ordered by observation, model version, highest score first."""
        stmt = sa.select(_D).order_by(_D.c.observation_id, _D.c.model_version, _D.c.score.desc(), _D.c.id)
        if observation_id is not None:
            stmt = stmt.where(_D.c.observation_id == observation_id)
        if model_version is not None:
            stmt = stmt.where(_D.c.model_version == model_version)
        return self._read_rows(stmt)

    # ------------------------------------------------------------------ drift statistics

    def record_statistics(
        self,
        observation_id: int,
        run_id: str,
        model_version: str,
        *,
        sky: float | None,
        seeing_px: float | None,
        noise: float | None,
        megapixels: float,
        detections: int,
        now: datetime | None = None,
    ) -> None:
        """Record what one inference saw and found (:mod:`astrid.drift` reads it). Upserted by
        (observation, model version): a retried task rewrites its row, never adds a second."""
        now = _utcnow(now)
        values = {
            "observation_id": int(observation_id),
            "model_version": model_version,
            "run_id": run_id,
            "recorded_at": now,
            "sky": _optional_float(sky),
            "seeing_px": _optional_float(seeing_px),
            "noise": _optional_float(noise),
            "megapixels": float(megapixels),
            "detections": int(detections),
        }
        stmt = self._insert(_ST).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["observation_id", "model_version"],
            set_={k: stmt.excluded[k] for k in values if k not in ("observation_id", "model_version")},
        )
        with self._tx() as conn:
            conn.execute(stmt)

    def statistics(
        self,
        *,
        model_version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded inference statistics in ``[since, until)`` (one model version, or all), oldest first."""
        stmt = sa.select(_ST).order_by(_ST.c.recorded_at, _ST.c.id)
        if model_version is not None:
            stmt = stmt.where(_ST.c.model_version == model_version)
        if since is not None:
            stmt = stmt.where(_ST.c.recorded_at >= _utcnow(since))
        if until is not None:
            stmt = stmt.where(_ST.c.recorded_at < _utcnow(until))
        return self._read_rows(stmt)

    def statistics_scores(self, model_version: str, since: datetime, until: datetime) -> list[float]:
        """The scores of ``model_version``'s detections in the observations whose statistics it
        recorded in ``[since, until)`` (the score distribution of that window)."""
        recorded = sa.and_(
            _ST.c.observation_id == _D.c.observation_id,
            _ST.c.model_version == _D.c.model_version,
            _ST.c.recorded_at >= _utcnow(since),
            _ST.c.recorded_at < _utcnow(until),
        )
        stmt = sa.select(_D.c.score).where(_D.c.model_version == model_version, sa.exists().where(recorded))
        with self._tx(write=False) as conn:
            return [float(v) for v in conn.scalars(stmt)]

    def first_statistics_at(self, model_version: str) -> datetime | None:
        """When ``model_version`` first recorded statistics (it started serving), if ever."""
        stmt = sa.select(sa.func.min(_ST.c.recorded_at)).where(_ST.c.model_version == model_version)
        with self._tx(write=False) as conn:
            first = conn.scalar(stmt)
        if first is None:
            return None
        return _utcnow(first if isinstance(first, datetime) else datetime.fromisoformat(str(first)))

    def gate_outcomes(self, since: datetime, until: datetime) -> list[bool]:
        """For each observation the live queue finished in ``[since, until)``: was it rejected by
        the quality gate (``True``) or inferred (``False``)? Failed ones are left out."""
        since, until = _utcnow(since), _utcnow(until)
        rejected = sa.and_(_O.c.status == _S.REJECTED, _O.c.updated_at >= since, _O.c.updated_at < until)
        inferred = sa.and_(_O.c.status == _S.INFERRED, _O.c.inferred_at >= since, _O.c.inferred_at < until)
        stmt = sa.select(_O.c.status).where(sa.or_(rejected, inferred))
        with self._tx(write=False) as conn:
            return [status == _S.REJECTED for status in conn.scalars(stmt)]

    def stuck_claims(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Observations still ``claimed`` whose lease has expired (their run died or hangs)."""
        now = _utcnow(now)
        stmt = (
            sa.select(_O)
            .where(_O.c.status == _S.CLAIMED, _O.c.lease_until < now)
            .order_by(_O.c.lease_until, _O.c.id)
        )
        return self._read_rows(stmt)


def _optional_float(value: Any) -> float | None:
    """A statistic as stored: NaN/inf (not measurable) become NULL, never a wrong number."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _status(value: ObservationStatus | str) -> ObservationStatus:
    try:
        return ObservationStatus(value)
    except ValueError:
        choices = ", ".join(s.value for s in ObservationStatus)
        raise CatalogError(f"unknown observation status {value!r}: expected one of {choices}") from None


def _dispose_after_fork(engine_ref: weakref.ref[sa.Engine]) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.dispose(close=False)


def _configure_sqlite(engine: sa.Engine, *, memory: bool) -> None:
    """WAL + busy timeout on every connection; take over BEGIN so writers use BEGIN IMMEDIATE."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("astrid_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
