"""Detection stamps: what a person looks at before believing a candidate.

For every detection (the ``limit`` highest-scoring of an observation) this writes, in the run's
artifact directory beside its ``detections.csv``::

    stamps/<observation id>-<name>/<rank>.png    science | reference | difference | probability,
                                                 63 px each, side by side, scaled for the eye
    stamps/<observation id>-<name>/<rank>.fits   the four cutouts as image extensions SCIENCE,
                                                 REFERENCE, DIFFERENCE, PROBABILITY, each with the
                                                 stamp's own WCS (astropy Cutout2D)

``rank`` is the detection's index in the observation's score-sorted list (0000 = highest). The
catalog keeps the common prefix (``stamp_uri``, without extension), so the status API serves a
stamp by detection id, never by a path a client sends.

Geometry: the stamp is centred on the pixel that holds the detection (odd ``size``, so the
detection lies within half a pixel of the centre pixel ``size // 2``). Near the frame's edge the
stamp is *padded* (NaN in FITS, a flat colour in the PNG) rather than shifted, so the centre
pixel is always the detection and the WCS is always the frame's, translated: every FITS
extension carries ``PARTIAL`` (some pixels lie outside the frame), ``COVERAGE`` (the fraction
inside), ``LTV1``/``LTV2`` (IRAF's offset: stamp pixel = frame pixel + LTV, 1-based, which DS9
uses to show frame coordinates) and ``DETX``/``DETY`` (the detection in 1-based stamp pixels).

Display scaling (``astropy.visualization``): ZScale for science, reference and difference (what
DS9, Fritz and Lasair show), linear 0-1 for the probability.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

STAMP_SIZE = 63
KINDS = ("science", "reference", "difference", "probability")
PAD_RGB = (72, 52, 110)  # PNG colour of pixels outside the frame (no grey level can mean "no data")
WRITERS = 8  # concurrent file writes: object stores are latency-bound, one PUT per file


@dataclass(frozen=True)
class Stamp:
    """One detection's cutouts, all ``size × size`` and on one pixel grid.

    ``origin`` is the frame pixel (x, y) of stamp pixel (0, 0) (negative at the frame's lower
    edges); ``position`` the detection in stamp pixels (0-based); ``coverage`` the fraction of
    stamp pixels inside the frame; ``wcs`` the stamp's WCS (``None`` when the frame has none).
    """

    images: dict[str, np.ndarray]
    wcs: Any
    origin: tuple[int, int]
    position: tuple[float, float]
    coverage: float

    @property
    def partial(self) -> bool:
        return self.coverage < 1.0


def cutout(triplet: Any, probability: np.ndarray, x: float, y: float, size: int = STAMP_SIZE) -> Stamp:
    """The :class:`Stamp` of science, reference, difference and ``probability`` around (x, y)."""
    from astropy.nddata import Cutout2D

    if size < 3 or size % 2 == 0:
        raise ValueError(f"stamp size must be an odd number >= 3, got {size}")
    frames = dict(
        zip(KINDS, (triplet.science, triplet.reference, triplet.difference, probability), strict=True)
    )
    first = np.asarray(frames["science"], dtype=np.float32)
    wcs = getattr(triplet, "wcs", None)
    cut = Cutout2D(first, (x, y), size, wcs=wcs, mode="partial", fill_value=np.nan, copy=True)
    images = {"science": cut.data}
    for kind in KINDS[1:]:
        out = np.full((size, size), np.nan, dtype=np.float32)
        out[cut.slices_cutout] = np.asarray(frames[kind], dtype=np.float32)[cut.slices_original]
        images[kind] = out
    # Cutout2D.origin_original is that of the overlap; the stamp's own origin is shifted by the padding
    origin = (
        int(cut.origin_original[0] - cut.slices_cutout[1].start),
        int(cut.origin_original[1] - cut.slices_cutout[0].start),
    )
    inside = (cut.slices_cutout[0].stop - cut.slices_cutout[0].start) * (
        cut.slices_cutout[1].stop - cut.slices_cutout[1].start
    )
    return Stamp(images, cut.wcs, origin, (x - origin[0], y - origin[1]), inside / (size * size))


def _scaled(image: np.ndarray, kind: str) -> np.ndarray:
    """``image`` mapped to 0-1 for display (NaN stays NaN)."""
    from astropy.visualization import ZScaleInterval

    finite = image[np.isfinite(image)]
    if kind == "probability":
        lo, hi = 0.0, 1.0
    elif finite.size:
        lo, hi = ZScaleInterval().get_limits(finite)
    else:
        lo, hi = 0.0, 1.0
    if not hi > lo:
        lo, hi = lo - 1.0, lo + 1.0
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def stamp_png(stamp: Stamp) -> bytes:
    """The four cutouts side by side as one RGB PNG (``len(KINDS) × size`` wide)."""
    from PIL import Image

    panels = []
    for kind in KINDS:
        scaled = _scaled(stamp.images[kind], kind)
        grey = np.nan_to_num(scaled * 255.0 + 0.5, nan=0.0).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        rgb[~np.isfinite(scaled)] = PAD_RGB
        panels.append(rgb[::-1])  # FITS row 0 is the bottom; PNG row 0 is the top
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(panels, axis=1)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def stamp_fits(stamp: Stamp, detection: Any, observation: str | None = None) -> bytes:
    """A FITS file: a primary header describing the detection, then one image HDU per kind."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    h = primary.header
    h["OBSNAME"] = (str(observation or "")[:68], "observation")
    for key, attr, comment in (
        ("DETSCORE", "score", "detection score"),
        ("DETFLUX", "flux", "aperture flux on the difference"),
        ("DETFLUXE", "flux_err", "1 sigma flux error"),
        ("DETSNR", "snr", "flux / flux_err"),
        ("DETMAG", "mag", "AB magnitude of the aperture flux"),
        ("DETRA", "ra", "[deg] detection RA"),
        ("DETDEC", "dec", "[deg] detection Dec"),
    ):
        value = getattr(detection, attr, None)
        if value is not None and math.isfinite(value):
            h[key] = (float(value), comment)
    hdus = [primary]
    for kind in KINDS:
        header = stamp.wcs.to_header(relax=True) if stamp.wcs is not None else fits.Header()
        header["EXTNAME"] = kind.upper()
        header["PARTIAL"] = (stamp.partial, "some stamp pixels lie outside the frame (NaN)")
        header["COVERAGE"] = (round(stamp.coverage, 6), "fraction of stamp pixels inside the frame")
        header["LTV1"] = (-stamp.origin[0], "stamp x = frame x + LTV1 (1-based pixels)")
        header["LTV2"] = (-stamp.origin[1], "stamp y = frame y + LTV2 (1-based pixels)")
        header["DETX"] = (round(stamp.position[0] + 1.0, 4), "detection x in stamp pixels (1-based)")
        header["DETY"] = (round(stamp.position[1] + 1.0, 4), "detection y in stamp pixels (1-based)")
        hdus.append(fits.ImageHDU(stamp.images[kind], header=header))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer, output_verify="exception")
    return buffer.getvalue()


def stamp_directory(artifacts: Any, observation_id: int, name: str) -> Any:
    """``<artifacts>/stamps/<id>-<name>``: one directory per observation (the id keeps two names
    that sanitise alike apart)."""
    return artifacts / "stamps" / f"{int(observation_id)}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:80]}"


def write_stamps(
    directory: Any,
    triplet: Any,
    probability: np.ndarray,
    detections: Sequence[Any],
    *,
    storage: Any,
    observation: str | None = None,
    size: int = STAMP_SIZE,
    limit: int | None = None,
) -> list[str | None]:
    """Write the stamps of the first ``limit`` detections (score order) under ``directory``.

    Returns, aligned with ``detections``, each one's ``stamp_uri`` (the catalog URI of
    ``<directory>/<rank>``, to which ``.png`` / ``.fits`` are appended), ``None`` beyond ``limit``.
    """
    chosen = list(detections)[: len(detections) if limit is None else max(0, limit)]
    if not chosen:
        return [None] * len(detections)
    directory.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Any, bytes]] = []
    uris: list[str | None] = []
    for rank, det in enumerate(chosen):
        stamp = cutout(triplet, probability, det.x, det.y, size)
        stem = f"{rank:04d}"
        files.append((directory / f"{stem}.png", stamp_png(stamp)))
        files.append((directory / f"{stem}.fits", stamp_fits(stamp, det, observation)))
        uris.append(storage.uri_for(directory / stem))
    with ThreadPoolExecutor(max_workers=min(WRITERS, len(files))) as pool:
        list(pool.map(lambda item: item[0].write_bytes(item[1]), files))
    return uris + [None] * (len(detections) - len(chosen))
