"""Detection stamps: what a person looks at before believing a candidate.

For every detection (the ``limit`` highest-scoring of an observation) this writes, in the run's
artifact directory beside its ``detections.csv``::

    stamps/<observation id>-<name>/<rank>.png    science | reference | difference | probability,
                                                 63 px each, side by side, scaled for the eye
    stamps/<observation id>-<name>/<rank>.fits   the four cutouts as image extensions SCIENCE,
                                                 REFERENCE, DIFFERENCE, PROBABILITY, each with the
                                                 stamp's own WCS (that of astropy's Cutout2D)

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

Display (``astropy.visualization``): science, reference and difference get an asinh stretch
between their own 0.25 and 99.75 percentiles (a faint host and a bright transient both stay
visible), the probability a linear 0-1 scale. PNG rows run top-down, so north-up frames show as
DS9 shows them (FITS row 0 at the bottom).

Speed (see docs/benchmarks.md): a 2048² frame has ~90 detections, and its inference takes about
a second on this CPU, so a stamp must cost well under a millisecond. Display scaling is
vectorised over all stamps of an observation; the FITS files are assembled from header cards
that astropy formats once per observation (the frame's WCS, the structure keywords), with only
the few numbers that change per stamp formatted here (:func:`fits_card`, checked against astropy's
parser in the tests): building four astropy HDUs per stamp costs 12 ms.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

STAMP_SIZE = 63
KINDS = ("science", "reference", "difference", "probability")
PAD_RGB = (72, 52, 110)  # PNG colour of pixels outside the frame (no grey level can mean "no data")
PERCENTILES = (0.25, 99.75)  # display range of science, reference, difference
WRITERS = 8  # concurrent file writes: object stores are latency-bound, one PUT per file
_GREYS = 255  # palette indices 0-254 are greys, 255 is PAD_RGB
_BLOCK = 2880


@dataclass(frozen=True)
class Stamp:
    """One detection's cutouts, all ``size × size`` and on one pixel grid.

    ``origin`` is the frame pixel (x, y) of stamp pixel (0, 0) (negative at the frame's lower
    edges); ``position`` the detection in stamp pixels (0-based); ``coverage`` the fraction of
    stamp pixels inside the frame; ``frame_wcs`` the frame's WCS (``None`` when it has none).
    """

    images: dict[str, np.ndarray]
    origin: tuple[int, int]
    position: tuple[float, float]
    coverage: float
    frame_wcs: Any = None

    @property
    def partial(self) -> bool:
        return self.coverage < 1.0

    @property
    def crpix(self) -> tuple[float, float] | None:
        """The stamp's CRPIX: the frame's, moved by the origin (all that Cutout2D changes)."""
        if self.frame_wcs is None:
            return None
        return (
            float(self.frame_wcs.wcs.crpix[0] - self.origin[0]),
            float(self.frame_wcs.wcs.crpix[1] - self.origin[1]),
        )

    @property
    def wcs(self) -> Any:
        """The stamp's WCS, built on demand (a copy of the frame's costs more than the cutout)."""
        if self.frame_wcs is None:
            return None
        wcs = self.frame_wcs.deepcopy()
        wcs.wcs.crpix = self.crpix
        if wcs.sip is not None:
            from astropy.wcs import Sip

            sip = wcs.sip
            wcs.sip = Sip(sip.a, sip.b, sip.ap, sip.bp, np.asarray(self.crpix))
        wcs.array_shape = self.images[KINDS[0]].shape
        return wcs


def cutout(triplet: Any, probability: np.ndarray, x: float, y: float, size: int = STAMP_SIZE) -> Stamp:
    """The :class:`Stamp` of science, reference, difference and ``probability`` around (x, y),
    placed as astropy's ``Cutout2D(mode="partial")`` places it."""
    from astropy.nddata import Cutout2D

    if size < 3 or size % 2 == 0:
        raise ValueError(f"stamp size must be an odd number >= 3, got {size}")
    frames = (triplet.science, triplet.reference, triplet.difference, probability)
    cut = Cutout2D(np.asarray(frames[0]), (x, y), size, mode="partial", fill_value=np.nan, copy=False)
    images = {}
    for kind, frame in zip(KINDS, frames, strict=True):
        out = np.full((size, size), np.nan, dtype=np.float32)
        out[cut.slices_cutout] = np.asarray(frame)[cut.slices_original]
        images[kind] = out
    # Cutout2D.origin_original is that of the overlap; the stamp's own origin is shifted by the padding
    origin = (
        int(cut.origin_original[0] - cut.slices_cutout[1].start),
        int(cut.origin_original[1] - cut.slices_cutout[0].start),
    )
    inside = (cut.slices_cutout[0].stop - cut.slices_cutout[0].start) * (
        cut.slices_cutout[1].stop - cut.slices_cutout[1].start
    )
    return Stamp(
        images, origin, (x - origin[0], y - origin[1]), inside / (size * size), getattr(triplet, "wcs", None)
    )


# -- PNG -------------------------------------------------------------------------------------------


def _display(images: np.ndarray, kind: str) -> np.ndarray:
    """Palette indices (uint8) of a stack of stamps of one kind: 0-254 greys, 255 outside the frame."""
    from astropy.visualization import AsinhStretch, LinearStretch

    data = np.asarray(images, dtype=np.float32)
    flat = data.reshape(len(data), -1)
    if kind == "probability":
        lo, hi = np.zeros(len(data)), np.ones(len(data))
        stretch = LinearStretch()
    else:
        lo, hi = np.empty(len(data)), np.empty(len(data))
        whole = np.isfinite(flat).all(axis=1)
        if whole.any():  # one vectorised call for the stamps inside the frame
            lo[whole], hi[whole] = np.percentile(flat[whole], PERCENTILES, axis=1)
        for i in np.flatnonzero(~whole):  # padded stamps: their finite pixels only
            finite = flat[i][np.isfinite(flat[i])]
            lo[i], hi[i] = np.percentile(finite, PERCENTILES) if finite.size else (0.0, 1.0)
        stretch = AsinhStretch()
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = stretch(np.clip((data - lo[:, None, None]) / span[:, None, None], 0.0, 1.0))
    index = np.floor(scaled * (_GREYS - 1) + 0.5)
    return np.where(np.isfinite(data), index, _GREYS).astype(np.uint8)


def _palette() -> list[int]:
    greys = np.linspace(0, 255, _GREYS).round().astype(int)
    return [v for g in greys for v in (g, g, g)] + list(PAD_RGB)


def _png(panels: Sequence[np.ndarray]) -> bytes:
    """One palette PNG of ``panels`` (palette indices, FITS orientation) side by side."""
    from PIL import Image

    image = Image.fromarray(np.concatenate([p[::-1] for p in panels], axis=1), mode="P")
    image.putpalette(_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def stamp_png(stamp: Stamp) -> bytes:
    """The four cutouts side by side as one PNG (``len(KINDS) × size`` wide)."""
    return _png([_display(stamp.images[kind][None], kind)[0] for kind in KINDS])


# -- FITS ------------------------------------------------------------------------------------------


def fits_card(keyword: str, value: Any, comment: str = "") -> str:
    """An 80-character FITS header card; numbers and booleans in fixed format (as astropy writes
    them), anything else formatted by astropy."""
    text: str | None = None
    if isinstance(value, (bool, np.bool_)):
        text = "T" if value else "F"
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)) and math.isfinite(value):
        text = repr(float(value)).upper()
        if "." not in text and "E" not in text:
            text += ".0"
    if text is None or len(text) > 20 or len(keyword) > 8:
        from astropy.io import fits

        return fits.Card(keyword, value, comment).image
    card = f"{keyword:<8}= {text:>20}" + (f" / {comment}" if comment else "")
    return card[:80].ljust(80)


def _padded(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % _BLOCK)


def _header(cards: Sequence[str]) -> bytes:
    return _padded(("".join(cards) + "END".ljust(80)).encode("ascii"), b" ")


class FitsStamps:
    """FITS files for the stamps of one observation (``wcs``: the frame's).

    Every card astropy formats (the WCS, the structure keywords, the observation's name) is
    formatted once here; per stamp only CRPIX (taken from the stamp's Cutout2D WCS) and the
    stamp's geometry change.
    """

    def __init__(self, wcs: Any, size: int = STAMP_SIZE, observation: str | None = None) -> None:
        from astropy.io import fits

        header = wcs.to_header(relax=True) if wcs is not None else fits.Header()
        self._wcs_cards = [c.image for c in header.cards if c.keyword not in ("CRPIX1", "CRPIX2")]
        self._structure = [
            fits.Card("XTENSION", "IMAGE", "image extension").image,
            fits_card("BITPIX", -32, "IEEE single precision"),
            fits_card("NAXIS", 2),
            fits_card("NAXIS1", size),
            fits_card("NAXIS2", size),
            fits_card("PCOUNT", 0),
            fits_card("GCOUNT", 1),
        ]
        self._extname = {k: fits.Card("EXTNAME", k.upper()).image for k in KINDS}
        self._primary = [
            fits_card("SIMPLE", True, "conforms to FITS standard"),
            fits_card("BITPIX", 8),
            fits_card("NAXIS", 0),
            fits_card("EXTEND", True),
            fits.Card("OBSNAME", str(observation or "")[:68], "observation").image,
        ]

    def file(self, stamp: Stamp, detection: Any) -> bytes:
        """A FITS file: a primary header describing the detection, then one image HDU per kind."""
        primary = list(self._primary)
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
                primary.append(fits_card(key, float(value), comment))
        geometry = [
            fits_card("PARTIAL", stamp.partial, "some stamp pixels lie outside the frame (NaN)"),
            fits_card("COVERAGE", round(stamp.coverage, 6), "fraction of stamp pixels inside the frame"),
            fits_card("LTV1", -stamp.origin[0], "stamp x = frame x + LTV1 (1-based pixels)"),
            fits_card("LTV2", -stamp.origin[1], "stamp y = frame y + LTV2 (1-based pixels)"),
            fits_card("DETX", round(stamp.position[0] + 1.0, 4), "detection x in stamp pixels (1-based)"),
            fits_card("DETY", round(stamp.position[1] + 1.0, 4), "detection y in stamp pixels (1-based)"),
        ]
        if stamp.wcs is not None:  # the one number Cutout2D changes in the frame's WCS
            geometry += [
                fits_card(
                    f"CRPIX{i + 1}", float(stamp.wcs.wcs.crpix[i]), "Pixel coordinate of reference point"
                )
                for i in (0, 1)
            ]
        parts = [_header(primary)]
        for kind in KINDS:
            parts.append(_header([*self._structure, self._extname[kind], *geometry, *self._wcs_cards]))
            parts.append(_padded(np.ascontiguousarray(stamp.images[kind], dtype=">f4").tobytes(), b"\0"))
        return b"".join(parts)


def stamp_fits(stamp: Stamp, detection: Any, observation: str | None = None) -> bytes:
    """One stamp's FITS file (see :class:`FitsStamps`)."""
    return FitsStamps(stamp.frame_wcs, stamp.images[KINDS[0]].shape[0], observation).file(stamp, detection)


# -- writing ---------------------------------------------------------------------------------------


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
    stamps = [cutout(triplet, probability, d.x, d.y, size) for d in chosen]
    panels = {kind: _display(np.stack([s.images[kind] for s in stamps]), kind) for kind in KINDS}
    writer = FitsStamps(getattr(triplet, "wcs", None), size, observation)
    directory.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Any, Callable[[], bytes]]] = []
    uris: list[str | None] = []
    for rank, (stamp, det) in enumerate(zip(stamps, chosen, strict=True)):
        stem = f"{rank:04d}"
        jobs.append((directory / f"{stem}.png", partial(_png, [panels[kind][rank] for kind in KINDS])))
        jobs.append((directory / f"{stem}.fits", partial(writer.file, stamp, det)))
        uris.append(storage.uri_for(directory / stem))
    # encoding (zlib releases the GIL) and writing (object-store latency) overlap in the pool
    with ThreadPoolExecutor(max_workers=min(WRITERS, len(jobs))) as pool:
        list(pool.map(lambda job: job[0].write_bytes(job[1]()), jobs))
    return uris + [None] * (len(detections) - len(chosen))
