"""The preprocessing step: a science image and a reference image become the observation the
detector reads — science, reference on the science grid, PSF-matched difference, noise map.

It wraps :func:`astrid.imaging.subtraction.subtract` (align, PSF-match, subtract; the method and
its measurements are in docs/subtraction.md) for the three places it runs (issue 20):

* on ingest when no difference image is given (:mod:`astrid.ingest`, on by default,
  ``ASTRID_INFERENCE_INGEST_SUBTRACT``; ``astrid ingest --no-subtract`` leaves it ``ingested``);
* in ``astrid detect`` without ``--difference`` (:mod:`astrid.ml.commands`);
* as the ``subtract`` task of the realtime and batch DAGs (:func:`subtract_claims`), for
  observations that arrive ``ingested``.

Every site gets the same :class:`Preprocessed`: an in-memory :class:`~astrid.imaging.fits.Triplet`
exactly as :func:`~astrid.imaging.fits.load_triplet` would read it back from the written files
(so the CLI and the DAGs detect on the same pixels), the :class:`Subtraction` and the JSON
``meta`` recorded with the observation (``meta["subtraction"]``: the method and its quality figures).

A pair that cannot give an honest difference raises :class:`~astrid.errors.SubtractionError`
naming the problem and the fix — never a garbage difference. One rule is added here to
``subtract``'s own: the honest part of the difference must cover at least half the frame
(:data:`MIN_VALID_FRACTION`), because the stored frames are read back by ``load_triplet``, which
refuses a mostly-NaN frame.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from astrid.errors import NoOverlapError, ObservationError
from astrid.imaging.fits import MIN_FINITE_FRACTION, ReadLimits, Triplet, celestial_wcs, file_stem, read_image

__all__ = [
    "MIN_VALID_FRACTION",
    "STORE_PREFIX",
    "Preprocessed",
    "subtract_arrays",
    "subtract_claims",
    "subtract_files",
]

MIN_VALID_FRACTION = MIN_FINITE_FRACTION
STORE_PREFIX = "preprocessed"  # where the DAG task writes: preprocessed/<observation id>-<token>/
# keywords of an input header that describe *its* pixel encoding, not the sky: never copied onto a
# float32 image AstrID writes (a BZERO left on a float image would rescale it on write)
_ENCODING = (
    "BITPIX",
    "BSCALE",
    "BZERO",
    "BLANK",
    "EXTEND",
    "XTENSION",
    "PCOUNT",
    "GCOUNT",
    "CHECKSUM",
    "DATASUM",
)


@dataclass
class Preprocessed:
    """What the preprocessing step made of one pair.

    ``triplet``: science, the reference resampled onto the science grid, the difference (its
    NaNs — no overlap, bad input — replaced by the median and listed in ``problems``, as
    ``load_triplet`` does on reading the written files). ``subtraction``: the raw result (NaN where
    there is no honest pixel). ``science_header``: the science file's header (its WCS is the
    difference's).
    """

    triplet: Triplet
    subtraction: Any  # astrid.imaging.subtraction.Subtraction
    science_header: Any

    @property
    def valid_fraction(self) -> float:
        return float(self.subtraction.valid.mean())

    def meta(self, **extra: Any) -> dict[str, Any]:
        """The observation's ``meta["subtraction"]`` entry: method + quality figures (+ ``extra``),
        JSON-ready."""
        entry = {**self.subtraction.meta, "valid_fraction": round(self.valid_fraction, 5), **extra}
        return _finite(json.loads(json.dumps(entry, default=_plain)))

    def write(self, folder: Any) -> dict[str, Any]:
        """Write ``difference.fits``, ``noise.fits`` and ``reference_aligned.fits`` (float32, NaN
        where there is no honest pixel; the science WCS and the ``ASTRID SUB *`` quality cards in
        each header) into ``folder`` (a local path or a storage path). Returns ``{role: path}``.
        On a failure the files already written are removed before it is raised."""
        import warnings

        from astropy.io.fits.verify import VerifyWarning

        from astrid.imaging.fits import write_image

        base = _image_header(self.science_header)
        written: dict[str, Any] = {}
        with warnings.catch_warnings():  # the quality cards' long comments are shortened: expected
            warnings.simplefilter("ignore", VerifyWarning)
            return self._write(folder, base, written, write_image)

    def _write(self, folder: Any, base: Any, written: dict[str, Any], write_image: Any) -> dict[str, Any]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            written["difference"], written["noise"] = folder / "difference.fits", folder / "noise.fits"
            self.subtraction.write(written["difference"], written["noise"], base)
            ref_header = self.subtraction.header(base)
            ref_header["IMAGETYP"] = ("REFERENCE", "reference resampled onto the science grid, sky removed")
            written["reference"] = write_image(
                folder / "reference_aligned.fits", self.subtraction.reference, ref_header
            )
        except BaseException:
            remove(written.values())
            raise
        return written


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in ``meta`` as JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite(value: Any) -> Any:
    """NaN/inf as ``None``: JSON (and PostgreSQL's JSON type) has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _image_header(header: Any) -> Any:
    h = header.copy()
    for key in list(h.keys()):
        if key in _ENCODING or key.startswith("NAXIS"):
            h.remove(key, ignore_missing=True, remove_all=True)
    return h


def _filled(image: np.ndarray, what: str, problems: list[str]) -> np.ndarray:
    """``image`` with its NaNs replaced by the median of the rest, as ``load_triplet`` reads it."""
    bad = ~np.isfinite(image)
    if not bad.any():
        return image
    out = image.copy()
    out[bad] = np.median(image[~bad])
    problems.append(f"{what}: {int(bad.sum())} pixels without data ({bad.mean():.2%}) replaced by the median")
    return out


def remove(paths: Any) -> None:
    """Delete what a failed step wrote (best effort: a leftover file is harmless, a mask is not)."""
    import contextlib

    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            path.unlink()


def subtract_arrays(
    science: np.ndarray,
    science_header: Any,
    reference: np.ndarray,
    reference_header: Any,
    *,
    name: str,
    limits: ReadLimits | None = None,
    label: str = "science",
    problems: Sequence[str] = (),
) -> Preprocessed:
    """Subtract ``reference`` from ``science`` (their shapes may differ) → :class:`Preprocessed`.

    Raises :class:`~astrid.errors.SubtractionError` for a pair that gives no honest difference,
    including one whose honest part covers less than :data:`MIN_VALID_FRACTION` of the frame."""
    from astrid.imaging.subtraction import subtract

    result = subtract(
        science,
        reference,
        science_header=science_header,
        reference_header=reference_header,
        min_overlap=MIN_VALID_FRACTION,
    )
    valid = float(result.valid.mean())
    if valid < MIN_VALID_FRACTION:
        raise NoOverlapError(
            f"the difference has honest pixels on only {valid:.1%} of the science frame (the reference's "
            f"overlap, less the kernel's reach; need ≥ {MIN_VALID_FRACTION:.0%}): pass a reference that "
            "covers this field"
        )
    notes = list(problems)
    wcs = celestial_wcs(science_header, science.shape, f"science file {label}", notes, limits)
    triplet = Triplet(
        science=np.asarray(science, dtype=np.float32),
        reference=_filled(result.reference, "aligned reference", notes),
        difference=_filled(result.difference, "difference", notes),
        header=science_header,
        wcs=wcs,
        name=name,
        problems=notes,
    )
    return Preprocessed(triplet, result, science_header)


def subtract_files(
    science: Any, reference: Any, *, limits: ReadLimits | None = None, name: str | None = None
) -> Preprocessed:
    """Read a science and a reference image (bounded, checked reads: a :class:`FitsError` names
    the file and the problem) and subtract them (:func:`subtract_arrays`)."""
    limits = limits or ReadLimits()
    problems: list[str] = []
    sci, h_sci = read_image(science, "science", limits=limits, problems=problems)
    ref, h_ref = read_image(reference, "reference", limits=limits, problems=problems)
    return subtract_arrays(
        sci,
        h_sci,
        ref,
        h_ref,
        name=name if name is not None else file_stem(science),
        limits=limits,
        label=str(science),
        problems=problems,
    )


# -------------------------------------------------------------------------------- the DAG task


def subtract_claims(
    claims: Sequence[Any],
    *,
    catalog: Any,
    storage: Any,
    run: Any,
    limits: ReadLimits | None = None,
    metrics: Any = None,
) -> dict[str, Any]:
    """Subtract observations claimed by :meth:`~astrid.catalog.Catalog.claim_for_subtraction`.

    Each pair is read through the storage root and subtracted; the difference, noise map and
    aligned reference go to ``preprocessed/<observation id>-<token>/`` (a fresh folder per attempt:
    nothing is ever overwritten) and the observation becomes ``preprocessed`` with them and with
    ``meta["subtraction"]`` (:meth:`~astrid.catalog.Catalog.complete_subtraction`; the original
    reference's URI is kept there as ``reference_input_uri``). A pair that cannot give an honest
    difference (or whose files cannot be read) is ``rejected`` with the reason; storage or catalog
    failures raise, so the task fails and its retry resumes its own claims.

    Returns the XCom summary: ``subtracted`` and ``rejected`` (ids and reasons) and ``seconds``.
    """
    from astrid.logs import log_event
    from astrid.metrics import NullMetrics, metric_name
    from astrid.pipeline import reject_claim

    metrics = metrics or NullMetrics()
    started = time.perf_counter()
    summary: dict[str, Any] = {"subtracted": [], "rejected": [], "seconds": 0.0}
    for claim in claims:
        t0 = time.perf_counter()
        try:
            pre = subtract_files(
                storage.resolve(claim.science_uri),
                storage.resolve(claim.reference_uri),
                limits=limits,
                name=claim.name,
            )
        except ObservationError as exc:
            summary["rejected"].append(reject_claim(catalog, claim, run, f"subtraction: {exc}"))
            continue
        folder = storage.path / STORE_PREFIX / f"{claim.observation_id}-{uuid.uuid4().hex[:12]}"
        written = pre.write(folder)
        try:
            catalog.complete_subtraction(
                claim.observation_id,
                run.run_id,
                difference_uri=storage.uri_for(written["difference"]),
                reference_uri=storage.uri_for(written["reference"]),
                meta={
                    "subtraction": pre.meta(
                        noise_uri=storage.uri_for(written["noise"]),
                        reference_input_uri=claim.reference_uri,
                        where="dag",
                        run_id=run.run_id,
                    )
                },
            )
        except BaseException:
            remove(written.values())
            raise
        summary["subtracted"].append(claim.observation_id)
        log_event(
            "observation.subtracted",
            run_id=run.run_id,
            dag_id=run.dag_id,
            observation_id=claim.observation_id,
            observation=claim.name,
            alignment=pre.subtraction.meta.get("alignment"),
            star_chi2=pre.subtraction.meta.get("star_chi2_median"),
            duration_s=round(time.perf_counter() - t0, 3),
        )
    if summary["rejected"]:
        metrics.incr(metric_name("astrid.observations.rejected", run.dag_id), len(summary["rejected"]))
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
