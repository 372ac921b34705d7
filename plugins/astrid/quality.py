"""Data-quality gate (Great Expectations, GX Core 1.x) run on each claimed observation before inference.

Two steps, kept apart so the cheap one never needs GX:

1. :func:`observation_profile` turns a loaded triplet into one flat row of metrics (numpy only).
2. :class:`QualityGate` validates the rows of a whole run as ONE pandas batch against the
   expectation suite in ``include/expectations/observation_quality.json`` and returns, per row and
   in input order, a :class:`QualityResult` naming every failed expectation, column and value.

The suite is a JSON file so operations can change thresholds without touching code; thresholds can
also be overridden per gate (``QualityGate(overrides={"fwhm_px": {"max_value": 15}})``).
``docs/data-quality.md`` explains every check.

Header conventions read by the profile (science header):

- ``EXPTIME``: exposure time in seconds.
- ``FWHMPIX``: seeing FWHM in pixels; wins when present. Otherwise ``FWHM`` in **arcsec**,
  converted with ``PIXSCALE`` (arcsec/pixel) or, without it, the WCS pixel scale.
- ``SATURATE``: saturation level in image units. Without it, the saturated fraction is the
  fraction of science pixels sitting on a plateau at the image maximum (a clipped image).

GX is imported lazily (importing it takes seconds), and a gate builds its ephemeral GX context on
first use; :meth:`QualityGate.shared` / :func:`check_triplet` reuse one gate per process.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astrid.errors import AstridError, ConfigError
from astrid.imaging.stats import finite_sample, median_sigma

logger = logging.getLogger("astrid.quality")

DEFAULT_SUITE_PATH = (
    Path(__file__).resolve().parents[2] / "include" / "expectations" / "observation_quality.json"
)

#: Columns of :func:`observation_profile` that an expectation may refer to.
PROFILE_COLUMNS = (
    "name",
    "shapes_match",
    "height",
    "width",
    "finite_fraction",
    "has_wcs",
    "wcs_valid",
    "exptime",
    "fwhm_px",
    "saturate_present",
    "saturate_level",
    "saturated_fraction",
    "diff_background",
    "diff_noise",
    "sci_background",
    "sci_noise",
    "dynamic_range",
)

_ROW = "__row__"  # positional row id given to GX, so results map back even with duplicate names
_INDEX_META = "astrid_suite_index"  # set on each GX expectation's meta: maps results back to entries
_STATS_MAX_PIXELS = 1_000_000  # robust statistics on a regular subsample above this size
_EXPECTATION_KEYS = {"type", "kwargs", "meta", "severity", "notes", "description"}
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")


# --------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------


def observation_profile(triplet: Any) -> dict[str, Any]:
    """Per-observation metrics of a loaded triplet: one row of the quality batch.

    ``triplet`` is duck-typed (``astrid.imaging.fits.Triplet``): ``science``, ``reference``,
    ``difference`` arrays, ``header`` (astropy Header of the science frame), ``wcs`` (astropy WCS
    or ``None``), ``name`` and optionally ``problems`` and ``finite_fraction``. Values are plain
    Python scalars (JSON/XCom friendly); unknown numbers are ``nan``. ``problems`` is copied from
    the triplet for context and is not validated.
    """
    images = [np.asarray(getattr(triplet, attr)) for attr in ("science", "reference", "difference")]
    header = getattr(triplet, "header", None)
    if header is None:
        header = {}
    wcs = getattr(triplet, "wcs", None)
    science, _, difference = images

    two_d = all(img.ndim == 2 for img in images)
    shapes_match = two_d and len({img.shape for img in images}) == 1
    height = min(img.shape[0] for img in images) if two_d else 0
    width = min(img.shape[1] for img in images) if two_d else 0

    sci_background, sci_noise = _robust_stats(science)
    diff_background, diff_noise = _robust_stats(difference)
    saturate_level = _header_float(header, "SATURATE")

    return {
        "name": str(getattr(triplet, "name", "") or ""),
        "shapes_match": bool(shapes_match),
        "height": int(height),
        "width": int(width),
        "finite_fraction": _finite_fraction(triplet, images),
        "has_wcs": wcs is not None,
        "wcs_valid": _wcs_valid(wcs, height, width),
        "exptime": _header_float(header, "EXPTIME"),
        "fwhm_px": _fwhm_pixels(header, wcs),
        "saturate_present": not math.isnan(saturate_level),
        "saturate_level": saturate_level,
        "saturated_fraction": _saturated_fraction(science, saturate_level),
        "diff_background": diff_background,
        "diff_noise": diff_noise,
        "sci_background": sci_background,
        "sci_noise": sci_noise,
        "dynamic_range": _dynamic_range(science, sci_background, sci_noise),
        "problems": list(getattr(triplet, "problems", None) or []),
    }


def _finite_fraction(triplet: Any, images: list[np.ndarray]) -> float:
    """Min finite fraction over the three images; the loader's own figure (pre-repair) wins."""
    given = getattr(triplet, "finite_fraction", None)
    if callable(given):
        given = given()
    if isinstance(given, Mapping):
        given = min(given.values()) if given else None
    elif isinstance(given, list | tuple):
        given = min(given) if given else None
    if given is not None:
        return float(given)
    return float(min((np.count_nonzero(np.isfinite(img)) / img.size) if img.size else 0.0 for img in images))


def _header_float(header: Any, key: str) -> float:
    try:
        value = header.get(key)
    except Exception:  # a broken header card must not crash the gate: the value is unknown
        return math.nan
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _pixel_scale_arcsec(header: Any, wcs: Any) -> float:
    scale = _header_float(header, "PIXSCALE")
    if not math.isnan(scale) and scale > 0:
        return scale
    if wcs is None:
        return math.nan
    try:
        from astropy.wcs.utils import proj_plane_pixel_scales

        scales = proj_plane_pixel_scales(wcs.celestial)  # degrees / pixel
        scale = float(np.mean(scales)) * 3600.0
    except Exception:
        return math.nan
    return scale if math.isfinite(scale) and scale > 0 else math.nan


def _fwhm_pixels(header: Any, wcs: Any) -> float:
    """FWHMPIX (px) if present, else FWHM (arcsec) / pixel scale (PIXSCALE or WCS); nan if unknown."""
    fwhm_px = _header_float(header, "FWHMPIX")
    if not math.isnan(fwhm_px):
        return fwhm_px
    fwhm_arcsec = _header_float(header, "FWHM")
    if math.isnan(fwhm_arcsec):
        return math.nan
    return fwhm_arcsec / _pixel_scale_arcsec(header, wcs)


def _wcs_valid(wcs: Any, height: int, width: int) -> bool:
    """Celestial, 2 celestial axes, and finite RA/Dec at the image centre."""
    if wcs is None:
        return False
    try:
        if not wcs.has_celestial:
            return False
        celestial = wcs.celestial
        if celestial.naxis != 2:
            return False
        ra, dec = celestial.pixel_to_world_values((width - 1) / 2.0, (height - 1) / 2.0)
        return bool(np.isfinite(ra) and np.isfinite(dec))
    except Exception:
        return False


def _robust_stats(image: np.ndarray) -> tuple[float, float]:
    """(median, MAD σ) over the finite pixels of a ≤ 1-Mpx sub-grid; (nan, nan) when there are
    none. Unclipped, unlike the model's normalisation: a constant frame must read as zero noise."""
    return median_sigma(finite_sample(image, _STATS_MAX_PIXELS))


def _saturated_fraction(science: np.ndarray, saturate_level: float) -> float:
    if science.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        if not math.isnan(saturate_level):
            return float(np.count_nonzero(science >= saturate_level) / science.size)
        peak = np.max(science, where=np.isfinite(science), initial=-np.inf)
        if not np.isfinite(peak):
            return 0.0
        plateau = int(np.count_nonzero(science == peak))
    return float(plateau / science.size) if plateau > 1 else 0.0


def _dynamic_range(science: np.ndarray, background: float, noise: float) -> float:
    """log10((max - median) / MAD sigma) of the science image: decades above the noise.

    ``inf`` for a constant image (zero noise), ``nan`` without finite pixels.
    """
    if math.isnan(background) or math.isnan(noise):
        return math.nan
    peak = float(np.max(science, where=np.isfinite(science), initial=-np.inf)) - background
    if noise <= 0:
        return math.inf
    if peak <= 0:
        return -math.inf
    return math.log10(peak / noise)


# --------------------------------------------------------------------------------------------
# Suite (JSON, pure Python: errors surface when the gate is created, before GX is imported)
# --------------------------------------------------------------------------------------------


def load_suite_config(
    suite_path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The suite JSON as a dict, with ``overrides`` applied and every entry checked.

    ``overrides`` maps a target to kwargs to update. The target is either a profile column (the
    one expectation on that column that is not ``expect_column_values_to_not_be_null``) or
    ``"<expectation_type>:<column>"`` when a column has several. Raises :class:`ConfigError`
    for an unreadable file, an unknown key or column, or an override matching nothing.
    """
    path = Path(suite_path) if suite_path is not None else DEFAULT_SUITE_PATH
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"quality suite {path} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"quality suite {path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("expectations"), list):
        raise ConfigError(f"quality suite {path} must be an object with an 'expectations' list")
    config.setdefault("name", path.stem)
    for index, entry in enumerate(config["expectations"]):
        where = f"quality suite {path}, expectation #{index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ConfigError(f"{where}: each expectation needs a 'type' string and a 'kwargs' object")
        unknown = set(entry) - _EXPECTATION_KEYS
        if unknown:
            raise ConfigError(
                f"{where} ({entry['type']}): unknown keys {sorted(unknown)}; allowed: {sorted(_EXPECTATION_KEYS)}"
            )
        if not isinstance(entry.get("kwargs"), dict):
            raise ConfigError(f"{where} ({entry['type']}): 'kwargs' must be an object")
        bad = [c for c in _columns_of(entry) if c not in PROFILE_COLUMNS]
        if bad:
            raise ConfigError(
                f"{where} ({entry['type']}): unknown profile column(s) {bad}; known: {list(PROFILE_COLUMNS)}"
            )
    if overrides:
        config = copy.deepcopy(config)
        for target, kwargs in overrides.items():
            entry = _override_target(config["expectations"], target, path)
            entry["kwargs"].update(dict(kwargs))
    return config


def _columns_of(entry: Mapping[str, Any]) -> list[str]:
    kwargs = entry.get("kwargs", {})
    columns: list[str] = []
    for key in _COLUMN_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, str):
            columns.append(value)
        elif isinstance(value, list):
            columns.extend(str(v) for v in value)
    return columns


def _override_target(entries: list[dict[str, Any]], target: str, path: Path) -> dict[str, Any]:
    if ":" in target:
        etype, column = target.split(":", 1)
        matches = [e for e in entries if e["type"] == etype and e["kwargs"].get("column") == column]
    else:
        matches = [
            e
            for e in entries
            if e["kwargs"].get("column") == target and e["type"] != "expect_column_values_to_not_be_null"
        ]
    if len(matches) != 1:
        raise ConfigError(
            f"quality override {target!r} matches {len(matches)} expectations in {path}: "
            "use a column with exactly one threshold expectation, or '<expectation_type>:<column>'"
        )
    return matches[0]


# --------------------------------------------------------------------------------------------
# Gate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityResult:
    """Verdict on one observation. ``failures`` (critical expectations) reject it; ``warnings``
    (expectations with severity ``warning``/``info``) are only reported."""

    name: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class QualityGate:
    """The expectation suite, compiled once into an ephemeral GX context and reused.

    Creating a gate only reads and checks the JSON (fast, raises :class:`ConfigError`); GX is
    imported and the context built on the first :meth:`validate` (or :meth:`build`).
    """

    _shared: QualityGate | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self,
        suite_path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.suite_path = Path(suite_path) if suite_path is not None else DEFAULT_SUITE_PATH
        self.config = load_suite_config(self.suite_path, overrides)
        self.build_seconds: float | None = None
        self._lock = threading.RLock()
        self._suite: Any = None
        self._batch_definition: Any = None
        self._context: Any = None

    @classmethod
    def shared(cls) -> QualityGate:
        """The default gate of this process (built lazily, reused by every run in the process)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @property
    def expectations(self) -> list[dict[str, Any]]:
        """The suite's expectation entries (type, kwargs, meta, ...) after overrides."""
        return self.config["expectations"]

    def build(self) -> QualityGate:
        """Import GX and build the context, data asset and suite now (idempotent)."""
        with self._lock:
            if self._suite is None:
                started = time.perf_counter()
                self._context, self._batch_definition, self._suite = _build_gx(self.config, self.suite_path)
                self.build_seconds = time.perf_counter() - started
                logger.info("quality gate built from %s in %.2f s", self.suite_path, self.build_seconds)
        return self

    def validate(self, profiles: Sequence[Mapping[str, Any]]) -> list[QualityResult]:
        """Validate all observations of a run as one GX batch; one result per profile, in order."""
        if not profiles:
            return []
        self.build()
        frame = self._frame(profiles)
        result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [_ROW]}
        with self._lock:
            batch = self._batch_definition.get_batch(batch_parameters={"dataframe": frame})
            outcome = batch.validate(self._suite, result_format=result_format)
        failures: list[list[str]] = [[] for _ in profiles]
        warnings: list[list[str]] = [[] for _ in profiles]
        # suite order, whatever order GX returns results in (each expectation carries its index)
        for res in sorted(outcome.results, key=lambda r: int(r.expectation_config.meta[_INDEX_META])):
            entry = self.expectations[int(res.expectation_config.meta[_INDEX_META])]
            error = _raised(res.exception_info)
            if error is not None:  # profiles from observation_profile are always numeric: a bug, not data
                raise AstridError(f"quality expectation {_describe(entry)} could not be evaluated: {error}")
            if res.success:
                continue
            bucket = failures if str(entry.get("severity", "critical")).lower() == "critical" else warnings
            result = res.result or {}
            if "unexpected_index_list" in result:
                for hit in result["unexpected_index_list"]:
                    got = ", ".join(_fmt(v) for k, v in hit.items() if k != _ROW)
                    bucket[int(hit[_ROW])].append(f"{_describe(entry)}: got {got}")
            else:  # a batch-level expectation (e.g. row count): it fails every row
                observed = result.get("observed_value")
                for row in bucket:
                    row.append(f"{_describe(entry)}: batch-level check failed (observed {_fmt(observed)})")
        return [
            QualityResult(name=str(p.get("name", "")), passed=not f, failures=f, warnings=w)
            for p, f, w in zip(profiles, failures, warnings, strict=True)
        ]

    def _frame(self, profiles: Sequence[Mapping[str, Any]]) -> Any:
        import pandas as pd

        needed = sorted({c for entry in self.expectations for c in _columns_of(entry)})
        for index, profile in enumerate(profiles):
            missing = [c for c in needed if c not in profile]
            if missing:
                raise AstridError(
                    f"quality profile #{index} ({profile.get('name', '?')}) lacks {missing}: "
                    "build profiles with astrid.quality.observation_profile"
                )
        rows = [{c: profile[c] for c in needed} for profile in profiles]
        frame = pd.DataFrame(rows, columns=needed)
        frame[_ROW] = range(len(rows))
        return frame


def check_triplet(triplet: Any, gate: QualityGate | None = None) -> QualityResult:
    """Profile and validate one triplet with ``gate`` (default: the shared per-process gate)."""
    return (gate or QualityGate.shared()).validate([observation_profile(triplet)])[0]


def _build_gx(config: Mapping[str, Any], path: Path) -> tuple[Any, Any, Any]:
    # Older GX 1.x sends usage statistics unless this is set; 1.24 has no analytics client at all.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    gx_logger = logging.getLogger("great_expectations")
    quiet = gx_logger.level == logging.NOTSET  # leave a level someone configured on purpose alone
    if quiet:  # importing GX logs over a hundred INFO lines ("Skipping registering function ...")
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if quiet:  # GX pins this child logger to INFO at import, bypassing the parent's level
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.NOTSET)

    expectations = []
    for index, entry in enumerate(config["expectations"]):
        try:
            tagged = {**entry, "meta": {**(entry.get("meta") or {}), _INDEX_META: index}}
            expectations.append(ExpectationConfiguration(**tagged).to_domain_obj())
        except Exception as exc:  # GX raises pydantic / GX-specific errors: report them as config
            raise ConfigError(
                f"quality suite {path}, expectation #{index} ({_describe(entry)}) is invalid: {exc}"
            ) from None
    # Built from objects, not dicts: ExpectationSuite silently drops invalid dict entries.
    suite = gx.ExpectationSuite(
        name=config["name"], expectations=expectations, meta=dict(config.get("meta") or {})
    )

    # get_context() also makes this context GX's process-wide "current" one; our batch definition
    # belongs to this context, so validation keeps working if other code builds another later.
    context = gx.get_context(mode="ephemeral")
    # no tqdm "Calculating Metrics" bars on stderr (they would flood Airflow task logs)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="astrid_quality")
    asset = source.add_dataframe_asset(name="observation_profiles")
    batch_definition = asset.add_batch_definition_whole_dataframe(name="run")
    return context, batch_definition, suite


def _raised(exception_info: Any) -> str | None:
    """The exception message in a GX result's ``exception_info`` (flat, or keyed by metric), if any."""
    if not isinstance(exception_info, Mapping):
        return None
    infos = [exception_info, *(v for v in exception_info.values() if isinstance(v, Mapping))]
    for info in infos:
        if info.get("raised_exception"):
            return str(info.get("exception_message") or "unknown error")
    return None


def _describe(entry: Mapping[str, Any]) -> str:
    """``expect_column_values_to_be_between(exptime, min 0 exclusive)`` from a suite entry."""
    kwargs = dict(entry.get("kwargs", {}))
    parts = _columns_of(entry)
    for key in _COLUMN_KWARGS:
        kwargs.pop(key, None)
    if "min_value" in kwargs or "max_value" in kwargs:
        for bound in ("min", "max"):
            value = kwargs.pop(f"{bound}_value", None)
            strict = kwargs.pop(f"strict_{bound}", False)
            if value is not None:
                parts.append(f"{bound} {_fmt(value)}" + (" exclusive" if strict else ""))
    if "value_set" in kwargs:
        parts.append(f"in {list(kwargs.pop('value_set'))!r}")
    parts.extend(f"{k}={_fmt(v)}" for k, v in kwargs.items() if k not in ("batch_id", "result_format"))
    return f"{entry['type']}({', '.join(parts)})"


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        return repr(round(number, 6)) if math.isfinite(number) else repr(number)
    return repr(value) if isinstance(value, str) else str(value)
