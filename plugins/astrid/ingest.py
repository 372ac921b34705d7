"""Ingestion: real observations from outside into the catalog, ready for inference.

What :meth:`Ingestor.ingest` does with one science/reference(/difference) triplet:

1. **Read each file once**, bounded: its size is checked against the configured frame limit
   before a byte is read, then it is streamed into a local spool file while its SHA-256 is
   computed. Everything after this works on those exact bytes, so what is validated, what is
   hashed and what is stored are the same (a source rewritten meanwhile cannot slip through).
2. **Validate** with :func:`astrid.imaging.fits.load_triplet`, the loader the workers use: a
   readable FITS image in a 2-D HDU, same shapes, enough finite pixels, within the size limits;
   and a celestial WCS, unless the caller says explicitly that there is none (``require_wcs=False``,
   ``--no-wcs``): then detections get no RA/Dec. Without a difference image each file is read by
   the same reader alone (``read_image``): the reference may have another shape, and is then
   subtracted (below).
3. **Store**: ``copy`` (the default) writes the spooled bytes under the storage root at
   ``ingested/<random token>/<role>.fits``, a fresh place each time, so nothing is ever
   overwritten and the observation cannot change under the catalog afterwards. ``reference``
   registers the files where they are, which must be under the storage root (workers read only
   there); use it when the data already lands in the bucket, to avoid a second copy, and keep
   the files immutable yourself.
4. **Register** in one transaction, idempotent by content hash
   (:meth:`astrid.catalog.Catalog.register_unique`): the same triplet twice is one observation;
   other files under an existing id are refused. ``arrived_at`` (when the request arrived) is
   kept for latency measurement; ``--meta key=value`` pairs and the provenance go into ``meta``.
   On any failure the copied files are deleted: nothing is half-registered.
5. **Ring the doorbell** (:mod:`astrid.events`) after the commit, when a new observation was
   registered. A failed ring is logged, never an error: the realtime cron sweeps the catalog.

Status: with a difference image the observation is ``preprocessed`` (claimable at once).
Without one, AstrID makes it (:mod:`astrid.preprocess`: align the reference to the science,
PSF-match, subtract; on by default, ``ASTRID_INFERENCE_INGEST_SUBTRACT``): the difference, its
noise map and the reference resampled onto the science grid are stored beside the copies, the
catalog's ``reference_uri`` names that aligned reference (the detector's reference channel must be
on the science grid; the original stays as ``meta["subtraction"]["reference_input_uri"]``), the
method and its quality figures go into ``meta["subtraction"]``, and the observation is
``preprocessed``. A pair that gives no honest difference (no overlap, a WCS the stars contradict
and no common star pattern, too few stars for the kernel) is refused like any bad input: nothing
registered. With subtraction off (``--no-subtract``, ``"subtract": false``) the pair is registered
``ingested``, and the DAGs' ``subtract`` task does it. :func:`prepare_difference` is the one
place that decides it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astrid.errors import CatalogError, IngestError, ObservationError, StorageError

__all__ = [
    "INGEST_MODES",
    "IngestRequest",
    "IngestResult",
    "Ingestor",
    "check_name",
    "ingestor_from_config",
    "parse_meta",
    "prepare_difference",
    "read_manifest",
]

INGEST_MODES = ("copy", "reference")
ROLES = ("science", "reference", "difference")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_META_PAIRS = 32
MAX_META_VALUE = 1024
STORE_PREFIX = "ingested"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestRequest:
    """One triplet to ingest. Paths are local paths or URIs (``file://``, ``s3://``);
    ``where`` says where the request came from in error messages (e.g. ``manifest.csv row 3``)."""

    science: str
    reference: str
    difference: str | None = None
    name: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)
    where: str = ""
    require_wcs: bool = True
    subtract: bool | None = None  # no difference given: subtract now (None: the ingestor's default)

    def files(self) -> dict[str, str]:
        given = {"science": self.science, "reference": self.reference, "difference": self.difference}
        return {role: path for role, path in given.items() if path}


@dataclass(frozen=True)
class IngestResult:
    observation_id: int
    name: str
    created: bool
    status: str
    content_hash: str
    arrived_at: datetime | None
    uris: dict[str, str]
    announced: bool = False
    problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "observation_id": self.observation_id,
            "id": self.name,
            "created": self.created,
            "status": self.status,
            "content_hash": self.content_hash,
            "arrived_at": self.arrived_at.isoformat() if self.arrived_at else None,
            "uris": self.uris,
            "announced": self.announced,
            "problems": list(self.problems),
        }


# -------------------------------------------------------------------------------- input checks


def check_name(name: str | None) -> str | None:
    """An observation id given by the caller: 1-128 letters, digits and ``. _ + -``."""
    if name is None:
        return None
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise IngestError(
            f"id {name!r} is not allowed: use 1-128 letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit",
            field="id",
        )
    return name


def parse_meta(pairs: Sequence[str] | Mapping[str, Any]) -> dict[str, str]:
    """``["key=value", ...]`` (CLI) or a mapping (API, manifest) → a checked ``{key: value}``."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else [_split_pair(p) for p in pairs]
    if len(items) > MAX_META_PAIRS:
        raise IngestError(f"meta has {len(items)} pairs, at most {MAX_META_PAIRS} are kept", field="meta")
    meta: dict[str, str] = {}
    for key, value in items:
        if not isinstance(key, str) or not META_KEY.match(key):
            raise IngestError(
                f"meta key {key!r} is not allowed: 1-64 letters, digits, '_', '.' or '-', starting with a letter",
                field="meta",
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise IngestError(
                f"meta {key}: give a string or a number, not {type(value).__name__}", field="meta"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise IngestError(f"meta {key}={value!r} is not a finite number", field="meta")
        text = str(value)
        if len(text) > MAX_META_VALUE or any(ord(ch) < 32 for ch in text):
            raise IngestError(
                f"meta {key}: values are at most {MAX_META_VALUE} printable characters", field="meta"
            )
        if key in meta:
            raise IngestError(f"meta key {key!r} is given twice", field="meta")
        meta[key] = text
    return meta


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, value = str(pair).partition("=")
    if not sep:
        raise IngestError(f"meta {pair!r} is not key=value", field="meta")
    return key.strip(), value


# -------------------------------------------------------------------------------- spooling


class SpooledFile:
    """A local copy of one source file that still *names* the source: what
    :func:`~astrid.imaging.fits.load_triplet` reads, so its errors name the user's file."""

    def __init__(self, path: Path, label: str, sha256: str, size: int, gzipped: bool) -> None:
        self.path, self.label, self.sha256, self.size, self.gzipped = path, label, sha256, size, gzipped

    def __str__(self) -> str:
        return self.label

    def open(self, mode: str = "rb") -> Any:
        if mode != "rb":
            raise ValueError("a spooled source is read-only")
        return self.path.open("rb")

    def stat(self) -> os.stat_result:
        return self.path.stat()

    def joinpath(self, *parts: str) -> Any:  # path-like protocol of astrid.storage.to_path
        raise NotImplementedError("a spooled source is a file, not a directory")

    @property
    def suffix(self) -> str:
        return ".fits.gz" if self.gzipped else ".fits"


@contextmanager
def _reading(what: str, role: str) -> Iterator[None]:
    """A missing or unreadable source as one IngestError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise IngestError(f"{what} does not exist: check the path", field=role) from None
    except (OSError, ValueError) as exc:
        raise IngestError(
            f"{what} cannot be read ({exc}): check the path and credentials", field=role
        ) from None


def spool(source: Any, role: str, label: str, directory: Path, limit: int) -> SpooledFile:
    """Stream ``source`` into ``directory``, hashing it; refuse it past ``limit`` bytes."""
    what = f"{role} file {label}"
    with _reading(what, role):
        size = int(source.stat().st_size)
    if size > limit:
        raise IngestError(
            f"{what} is {size} bytes, more than the largest accepted frame needs ({limit} bytes): cut it into "
            f"smaller frames or raise ASTRID_INFERENCE_MAX_IMAGE_SIDE",
            field=role,
        )
    digest = hashlib.sha256()
    target = directory / role
    total, first = 0, b""
    with _reading(what, role), source.open("rb") as src, target.open("wb") as out:
        while chunk := src.read(_CHUNK):
            first = first or chunk[:2]
            total += len(chunk)
            if total > limit:
                raise IngestError(f"{what} grew past {limit} bytes while being read", field=role)
            digest.update(chunk)
            out.write(chunk)
    return SpooledFile(target, label, digest.hexdigest(), total, first == b"\x1f\x8b")


def content_hash(spooled: Mapping[str, SpooledFile]) -> str:
    """One SHA-256 for the triplet: the roles and their files' SHA-256 (no difference: ``-``)."""
    text = "".join(f"{role}:{spooled[role].sha256 if role in spooled else '-'}\n" for role in ROLES)
    return hashlib.sha256(text.encode()).hexdigest()


# -------------------------------------------------------------------------------- the switch point


@dataclass
class Prepared:
    """What preprocessing decided: the triplet read (its ``difference`` is ``None`` when the pair
    waits for the DAG's subtraction), the status to register with, what it adds to ``meta``, and
    the subtraction's result to store (``None`` when AstrID did not subtract)."""

    triplet: Any
    status: str
    meta: dict[str, Any] = field(default_factory=dict)
    subtraction: Any = None  # astrid.preprocess.Preprocessed


def prepare_difference(
    spooled: Mapping[str, SpooledFile], *, subtract: bool, max_side: int, require_wcs: bool = True
) -> Prepared:
    """THE switch point for image subtraction (issue 20): read and validate the files, and decide.

    * A difference image was given → read the triplet (same shapes) → ``preprocessed``.
    * Only science + reference, ``subtract`` → align, PSF-match and subtract them
      (:func:`astrid.preprocess.subtract_arrays`; their shapes may differ) → ``preprocessed``
      with ``meta["subtraction"]``. A pair that gives no honest difference → :class:`IngestError`
      (field ``reference``) naming both files and the problem.
    * Only science + reference, not ``subtract`` → each read and checked → ``ingested``: the
      DAGs' ``subtract`` task does it (``meta["awaiting"] = "subtraction"``).

    With ``require_wcs``, a science frame without a trustworthy celestial WCS is refused before
    anything is subtracted (say ``require_wcs=False`` for frames that really have none).
    """
    from astrid.imaging.fits import ReadLimits, Triplet, celestial_wcs, file_stem, load_triplet, read_image

    limits = ReadLimits(max_side=max_side)
    if "difference" in spooled:
        triplet = load_triplet(
            spooled["science"], spooled["reference"], spooled["difference"], max_side=max_side
        )
        _check_wcs(triplet.wcs, triplet.problems, require_wcs)
        return Prepared(triplet, "preprocessed")
    problems: list[str] = []
    science, h_sci = read_image(spooled["science"], "science", limits=limits, problems=problems)
    reference, h_ref = read_image(spooled["reference"], "reference", limits=limits, problems=problems)
    name = file_stem(spooled["science"])
    wcs = celestial_wcs(h_sci, science.shape, f"science file {spooled['science']}", problems, limits)
    _check_wcs(wcs, problems, require_wcs)
    if not subtract:
        triplet = Triplet(science, reference, None, h_sci, wcs, name, problems)
        return Prepared(triplet, "ingested", {"awaiting": "subtraction"})
    from astrid.errors import SubtractionError
    from astrid.preprocess import subtract_arrays

    try:
        pre = subtract_arrays(
            science, h_sci, reference, h_ref, name=name, limits=limits,
            label=str(spooled["science"]), problems=problems,
        )  # fmt: skip
    except SubtractionError as exc:
        raise IngestError(
            f"science {spooled['science']} and reference {spooled['reference']} give no usable difference "
            f"image ({type(exc).__name__}: {exc}). Or give a --difference image made elsewhere",
            field="reference",
        ) from None
    return Prepared(pre.triplet, "preprocessed", {}, pre)


def _check_wcs(wcs: Any, problems: Sequence[str], require_wcs: bool) -> None:
    if wcs is None and require_wcs:
        why = "; ".join(p for p in problems if "WCS" in p) or "no celestial WCS"
        raise IngestError(
            f'{why}. If these frames really have no WCS, say so (--no-wcs, or "wcs": false): '
            "detections will then have no RA/Dec",
            field="science",
        )


# -------------------------------------------------------------------------------- the ingestor


def _field_of(message: str) -> str | None:
    mismatch = re.search(r"\bbut (science|reference|difference)\b", message)
    if mismatch:
        return mismatch.group(1)
    first = message.split(" ", 1)[0]
    return first if first in ROLES else None


def _header_facts(header: Any, wcs: Any, shape: tuple[int, int]) -> dict[str, Any]:
    """Survey, instrument, filter, MJD, exposure and the frame's centre from the science header;
    a value that is missing or does not parse is left out (NULL), never guessed."""

    def text(*keys: str, size: int) -> str | None:
        for key in keys:
            value = header.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:size]
        return None

    def number(key: str) -> float | None:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    facts: dict[str, Any] = {
        "survey": text("SURVEY", "TELESCOP", size=64) or "external",
        "instrument": text("INSTRUME", size=64),
        "filter": text("FILTER", "BAND", size=32),
        "mjd": number("MJD-OBS"),
        "exptime": number("EXPTIME"),
    }
    if facts["mjd"] is None and isinstance(header.get("DATE-OBS"), str):
        from astropy.time import Time

        with contextlib.suppress(ValueError, TypeError):
            facts["mjd"] = float(Time(header["DATE-OBS"], scale="utc").mjd)
    if wcs is not None:
        h, w = shape
        ra, dec = (float(v) for v in wcs.all_pix2world([[(w - 1) / 2, (h - 1) / 2]], 0)[0])
        if math.isfinite(ra) and math.isfinite(dec):
            facts["ra_center"], facts["dec_center"] = ra, dec
    return facts


class Ingestor:
    """Ingests triplets into one catalog and storage root (see the module docs for the steps).

    :param subtract: without a difference image, subtract science and reference now (the
        default; ``ASTRID_INFERENCE_INGEST_SUBTRACT``), or register the pair ``ingested`` for the
        DAGs' subtraction task (a request's own ``subtract`` wins).
    :param sources: where files may be read from. ``None`` (the CLI): any path its user can read,
        relative local paths taken from the working directory. A list of roots (the API): only
        files under the storage root or one of these; relative paths are under the storage root;
        anything else is refused before it is touched, so a caller learns nothing about it.
    """

    def __init__(
        self,
        catalog: Any,
        storage: Any,
        *,
        mode: str = "copy",
        max_side: int = 8192,
        doorbell: Any = None,
        sources: Sequence[Any] | None = None,
        spool_dir: str | None = None,
        subtract: bool = True,
    ) -> None:
        if mode not in INGEST_MODES:
            raise IngestError(f"ingest mode {mode!r}: use copy or reference", field="mode")
        self.catalog, self.storage, self.mode, self.max_side = catalog, storage, mode, int(max_side)
        self.subtract = bool(subtract)
        self.doorbell = doorbell
        self.sources = None if sources is None else [storage, *sources]
        self.spool_dir = spool_dir

    # -- where files are read from

    def _open_source(self, role: str, path: str) -> Any:
        from astrid.storage import has_scheme, to_path

        if not isinstance(path, str) or not path.strip() or "\x00" in path:
            raise IngestError(f"{role}: give a path or URI", field=role)
        if self.sources is None:
            if not has_scheme(path):
                path = os.path.abspath(os.path.expanduser(path))
            try:
                return self.storage.resolve(path)  # under the root: its credentials/options apply
            except StorageError:
                return to_path(path)
        for root in self.sources:
            try:
                return root.resolve(path)
            except StorageError:
                continue
        raise IngestError(
            f"{role} file {path!r} is refused: files are read only under the storage root "
            f"{self.storage.uri} or ASTRID_INFERENCE_INGEST_ROOTS; upload it there first",
            field=role,
        )

    # -- the steps

    def ingest(self, request: IngestRequest) -> IngestResult:
        """Validate, store and register one triplet; see the module docs. Raises
        :class:`IngestError` (naming the file or field and the problem) with nothing registered."""
        try:
            return self._ingest(request)
        except IngestError as exc:
            raise self._where(request, exc) from None
        except (ObservationError, CatalogError) as exc:
            raise self._where(request, IngestError(str(exc), field=_field_of(str(exc)))) from None

    @staticmethod
    def _where(request: IngestRequest, exc: IngestError) -> IngestError:
        if not request.where:
            return exc
        return IngestError(f"{request.where}: {exc}", field=exc.field, conflict=exc.conflict)

    def _ingest(self, request: IngestRequest) -> IngestResult:
        from astrid.imaging.fits import max_file_bytes

        arrived_at = datetime.now(UTC)
        name = check_name(request.name)
        user_meta = parse_meta(request.meta)
        opened = {role: self._open_source(role, path) for role, path in request.files().items()}
        with tempfile.TemporaryDirectory(prefix="astrid-ingest-", dir=self.spool_dir) as tmp:
            spooled = {
                role: spool(path, role, request.files()[role], Path(tmp), max_file_bytes(self.max_side))
                for role, path in opened.items()
            }
            subtract = self.subtract if request.subtract is None else bool(request.subtract)
            prepared = prepare_difference(
                spooled, subtract=subtract, max_side=self.max_side, require_wcs=request.require_wcs
            )
            triplet = prepared.triplet
            digest = content_hash(spooled)
            stored, uris = self._store(spooled, opened)
            if prepared.subtraction is not None:
                stored, uris = self._store_subtraction(prepared, stored, uris)
            try:
                result = self._register(
                    request, name, digest, uris, prepared, arrived_at, user_meta, spooled, triplet
                )
            except BaseException:
                self._remove(stored)
                raise
            if not result.created:
                self._remove(stored)  # the same content is already stored with its observation
        return self._announce(result)

    def _store(
        self, spooled: Mapping[str, SpooledFile], opened: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, str]]:
        """(paths written, catalog URIs per role). ``reference`` writes nothing."""
        if self.mode == "reference":
            uris = {}
            for role, path in opened.items():
                try:
                    uris[role] = self.storage.uri_for(path)
                except StorageError:
                    raise IngestError(
                        f"{role} file {spooled[role].label} is not under the storage root {self.storage.uri}: "
                        "files referenced in place must already lie there (or ingest with copying, the default)",
                        field=role,
                    ) from None
            return [], uris
        folder = self.storage.path / STORE_PREFIX / uuid.uuid4().hex
        written: list[Any] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for role, source in spooled.items():
                target = folder / f"{role}{source.suffix}"
                with source.open() as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                written.append(target)
        except BaseException as exc:
            self._remove(written, folder)
            if isinstance(exc, (OSError, ValueError)):
                raise IngestError(
                    f"could not copy into the storage root {self.storage.uri} ({type(exc).__name__}: {exc}): "
                    "check that it is writable",
                    field="storage",
                ) from None
            raise
        return written, {
            role: self.storage.uri_for(path) for role, path in zip(spooled, written, strict=True)
        }

    def _store_subtraction(
        self, prepared: Prepared, stored: list[Any], uris: dict[str, str]
    ) -> tuple[list[Any], dict[str, str]]:
        """Write the difference, noise map and aligned reference AstrID made beside the copies
        (``reference`` mode: in a fresh ``ingested/<token>/`` folder); the catalog's reference is
        the aligned one, the original's URI goes into ``meta["subtraction"]``."""
        folder = stored[0].parent if stored else self.storage.path / STORE_PREFIX / uuid.uuid4().hex
        try:
            written = prepared.subtraction.write(folder)
        except BaseException as exc:
            self._remove(stored, folder)
            if isinstance(exc, (OSError, ValueError)):
                raise IngestError(
                    f"could not write the difference image into the storage root {self.storage.uri} "
                    f"({type(exc).__name__}: {exc}): check that it is writable",
                    field="storage",
                ) from None
            raise
        derived = {role: self.storage.uri_for(path) for role, path in written.items()}
        prepared.meta["subtraction"] = prepared.subtraction.meta(
            noise_uri=derived["noise"], reference_input_uri=uris["reference"], where="ingest"
        )
        uris = {**uris, **derived}  # difference, noise, and the aligned reference
        return [*stored, *written.values()], uris

    def _remove(self, paths: Sequence[Any], folder: Any = None) -> None:
        for path in paths:
            with contextlib.suppress(OSError, ValueError):
                path.unlink()
        folders = [folder] if folder is not None else list({str(p.parent): p.parent for p in paths}.values())
        for each in folders:
            with contextlib.suppress(OSError, ValueError, NotImplementedError):
                each.rmdir()

    def _register(
        self,
        request: IngestRequest,
        name: str | None,
        digest: str,
        uris: Mapping[str, str],
        prepared: Prepared,
        arrived_at: datetime,
        user_meta: Mapping[str, str],
        spooled: Mapping[str, SpooledFile],
        triplet: Any,
    ) -> IngestResult:
        from astrid.catalog import NewObservation

        facts = _header_facts(triplet.header, triplet.wcs, triplet.shape)
        meta = {
            "user": dict(user_meta),
            "ingest": {
                "mode": self.mode,
                "sources": {role: f.label for role, f in spooled.items()},
                "sha256": {role: f.sha256 for role, f in spooled.items()},
                "bytes": {role: f.size for role, f in spooled.items()},
                "shape": list(triplet.shape),
                "wcs": triplet.wcs is not None,
                "problems": list(triplet.problems),
            },
            **prepared.meta,
        }
        new = NewObservation(
            name=name or _derived_name(triplet.name, digest),
            science_uri=uris["science"],
            reference_uri=uris["reference"],
            difference_uri=uris.get("difference"),
            content_hash=digest,
            arrived_at=arrived_at,
            meta=meta,
            **facts,
        )
        try:
            registered = self.catalog.register_unique(new, status=prepared.status)
        except CatalogError as exc:  # the id names other files (DB failures are not CatalogErrors)
            raise IngestError(str(exc), field="id", conflict=True) from None
        return IngestResult(
            observation_id=registered.observation_id,
            name=registered.name,
            created=registered.created,
            status=registered.status,
            content_hash=digest,
            arrived_at=registered.arrived_at,
            uris=dict(uris) if registered.created else self._stored_uris(registered.observation_id),
            problems=tuple(triplet.problems),
        )

    def _stored_uris(self, observation_id: int) -> dict[str, str]:
        row = self.catalog.get(observation_id)
        return {role: row[f"{role}_uri"] for role in ROLES if row[f"{role}_uri"]}

    def _announce(self, result: IngestResult) -> IngestResult:
        if not result.created or self.doorbell is None:
            return result
        from dataclasses import replace

        from astrid.events import Arrival, ring_safely

        arrival = Arrival(
            observation_id=result.observation_id,
            name=result.name,
            status=result.status,
            arrived_at=result.arrived_at.isoformat() if result.arrived_at else None,
        )
        return replace(result, announced=ring_safely(self.doorbell, arrival))

    def ingest_many(
        self, requests: Iterator[IngestRequest], on_result: Callable[[IngestResult], None] | None = None
    ) -> list[IngestResult]:
        """Ingest in order and stop at the first failure (raised; the ones before it stay registered,
        and running the same requests again is safe: ingestion is idempotent)."""
        results = []
        for request in requests:
            results.append(self.ingest(request))
            if on_result is not None:
                on_result(results[-1])
        return results


def _derived_name(stem: str, digest: str) -> str:
    """``<file stem>-<12 hex digits of the content hash>``: unique per content, stable on re-ingest."""
    clean = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._+-")[:100] or "observation"
    return f"{clean}-{digest[:12]}"


# -------------------------------------------------------------------------------- manifests

MANIFEST_FIELDS = ("science", "reference", "difference", "id")


def read_manifest(path: str) -> list[IngestRequest]:
    """Every row of a manifest, parsed and checked before any file is touched.

    CSV (header row; columns ``science``, ``reference``, optional ``difference`` and ``id``; any
    other column is a meta key) or JSON lines (``{"science", "reference", "difference", "id",
    "meta": {...}}``; ``.jsonl``/``.ndjson``, or content starting with ``{``). Relative paths are
    relative to the manifest's folder.
    """
    label = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IngestError(f"manifest {label} does not exist", field="manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"manifest {label} cannot be read ({exc})", field="manifest") from None
    base = Path(path).resolve().parent
    jsonl = label.endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{")
    rows = _json_rows(text, label) if jsonl else _csv_rows(text, label)
    requests = [_request(row, base, f"{label} {unit} {n}") for n, unit, row in rows]
    if not requests:
        raise IngestError(f"manifest {label} lists no observations", field="manifest")
    return requests


def _csv_rows(text: str, label: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in ("science", "reference") if c not in header]
    if missing:
        raise IngestError(
            f"manifest {label}: the header row lacks {', '.join(missing)} (columns: science, reference, "
            "difference, id, then any meta keys)",
            field="manifest",
        )
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise IngestError(
                f"manifest {label} row {number}: more cells than header columns", field="manifest"
            )
        fields = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        meta = {k: v for k, v in fields.items() if k not in MANIFEST_FIELDS and v not in (None, "")}
        yield number, "row", {**{k: fields.get(k) or None for k in MANIFEST_FIELDS}, "meta": meta}


def _json_rows(text: str, label: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"manifest {label} line {number}: not JSON ({exc.msg})", field="manifest"
            ) from None
        if not isinstance(row, dict):
            raise IngestError(f"manifest {label} line {number}: expected a JSON object", field="manifest")
        unknown = set(row) - {*MANIFEST_FIELDS, "meta"}
        if unknown:
            raise IngestError(
                f"manifest {label} line {number}: unknown key(s) {sorted(unknown)} (known: "
                f"{', '.join(MANIFEST_FIELDS)}, meta)",
                field="manifest",
            )
        yield number, "line", row


def _request(row: Mapping[str, Any], base: Path, where: str) -> IngestRequest:
    from astrid.storage import has_scheme

    def located(key: str) -> str | None:
        value = row.get(key)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise IngestError(f"{where}: {key} must be a path string", field=key)
        return value if has_scheme(value) or os.path.isabs(value) else str(base / value)

    try:
        science, reference = located("science"), located("reference")
        if not science or not reference:
            raise IngestError(f"{where}: science and reference are required", field="science")
        meta = row.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise IngestError(f"{where}: meta must be an object of key: value", field="meta")
        return IngestRequest(
            science=science,
            reference=reference,
            difference=located("difference"),
            name=check_name(row.get("id")),
            meta=parse_meta(meta),
            where=where,
        )
    except IngestError as exc:
        if str(exc).startswith(where):
            raise
        raise IngestError(f"{where}: {exc}", field=exc.field) from None


def ingestor_from_config(
    catalog: Any = None, storage: Any = None, *, mode: str | None = None, **kwargs: Any
) -> Ingestor:
    """An :class:`Ingestor` on the configured catalog, storage root, mode, frame limit and doorbell."""
    from astrid.catalog import Catalog
    from astrid.config import load_config
    from astrid.events import doorbell
    from astrid.paths import default_catalog_url, default_storage_uri
    from astrid.storage import StorageRoot

    config = load_config()
    if catalog is None or isinstance(catalog, str):
        catalog = Catalog(catalog or default_catalog_url())
        catalog.migrate()
    if storage is None or isinstance(storage, str):
        storage = StorageRoot.from_uri(storage or default_storage_uri())
    kwargs.setdefault("doorbell", doorbell(config))
    kwargs.setdefault("subtract", config.ingest_subtract)
    return Ingestor(
        catalog, storage, mode=mode or config.ingest_mode, max_side=config.max_image_side, **kwargs
    )
