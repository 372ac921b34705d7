"""Detection stamps: what a person looks at before believing a candidate.

For the ``limit`` highest-scoring detections of an observation this writes two files in the
run's artifact directory, beside its ``detections.csv``::

    stamps/<observation id>-<name>.png    one row per detection (by score): science | reference |
                                          difference | probability, 63 px each, scaled for the eye
    stamps/<observation id>-<name>.fits   one image HDU per detection, DET0000, DET0001, ...: the
                                          four cutouts as a 4 x 63 x 63 cube with the stamp's
                                          own WCS (that of astropy's Cutout2D) on its first axes

The catalog keeps each detection's ``stamp_uri`` ``<prefix>#<rank>`` (its row, its HDU), and the
status API serves one detection's stamps by detection id (:func:`detection_png`, and
:func:`detection_fits`: a FITS file with SCIENCE, REFERENCE, DIFFERENCE and PROBABILITY
extensions), never by a path a client sends. Two files per observation rather than two per
detection: on object storage each file is a request.

Geometry: the stamp is centred on the pixel that holds the detection (odd ``size``, so the
detection lies within half a pixel of the centre pixel ``size // 2``). Near the frame's edge the
stamp is *padded* (NaN in FITS, a flat colour in the PNG) rather than shifted, so the centre
pixel is always the detection and the WCS is always the frame's, translated: every FITS
extension carries ``PARTIAL`` (some pixels lie outside the frame), ``COVERAGE`` (the fraction
inside), ``LTV1``/``LTV2`` (IRAF's offset: stamp pixel = frame pixel + LTV, 1-based, which DS9
uses to show frame coordinates) and ``DETX``/``DETY`` (the detection in 1-based stamp pixels);
the detection's measurements are ``DETSCORE``, ``DETFLUX``, ``DETSNR``, ``DETMAG``, ``DETRA``...

Display (stretches of ``astropy.visualization``, limits per stamp): the difference linear over
its median ± 5σ, which is what ZScale gives a noise-dominated stamp (ZScale itself costs ~2 ms a
stamp); science and reference asinh from median − 3σ up to their 99.75th percentile; the
probability linear 0-1. PNG rows run top-down, so north-up frames show as DS9 shows them (FITS
row 0 at the bottom).

Speed (see docs/benchmarks.md): a 2048² synthetic frame has ~90 detections and its inference
takes about a second on this CPU, so a stamp must cost well under a millisecond. Display scaling
is vectorised over all stamps of an observation; the FITS file is assembled from header cards
that astropy formats once per observation (the frame's WCS, the structure keywords), with only
the few numbers that change per stamp formatted here (:func:`fits_card`, checked against
astropy's parser in the tests): building astropy HDUs costs ~3 ms each.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

STAMP_SIZE = 63
KINDS = ("science", "reference", "difference", "probability")
PAD_RGB = (72, 52, 110)  # PNG colour of pixels outside the frame (no grey level can mean "no data")
_QUANTILES = (15.8655, 50.0, 84.1345, 99.75)  # -1σ, median, +1σ of a Gaussian; the bright end
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


def _limits(flat: np.ndarray) -> np.ndarray:
    """Per stamp (rows of ``flat``): the 15.87, 50, 84.13 and 99.75 percentiles of its finite
    pixels, vectorised over the stamps inside the frame (padded ones one by one)."""
    out = np.zeros((len(flat), len(_QUANTILES)))
    whole = np.isfinite(flat).all(axis=1)
    if whole.any():
        out[whole] = np.percentile(flat[whole], _QUANTILES, axis=1).T
    for i in np.flatnonzero(~whole):
        finite = flat[i][np.isfinite(flat[i])]
        if finite.size:
            out[i] = np.percentile(finite, _QUANTILES)
    return out


def _display(images: np.ndarray, kind: str) -> np.ndarray:
    """Palette indices (uint8) of a stack of stamps of one kind: 0-254 greys, 255 outside the frame.

    Difference: linear over median ± 5σ, what ZScale gives a noise-dominated stamp (a transient
    saturates white, a subtraction residual shows dark and light). Science and reference: asinh
    from median − 3σ to the 99.75th percentile (at least median + 10σ): sky visible, stars and
    hosts not burnt out.
    Probability: linear 0-1. σ is half the 15.87-84.13 percentile range (robust to the source)."""
    from astropy.visualization import AsinhStretch, LinearStretch

    data = np.asarray(images, dtype=np.float32)
    if kind == "probability":
        lo, hi = np.zeros(len(data)), np.ones(len(data))
        stretch = LinearStretch()
    else:
        low, median, high, top = _limits(data.reshape(len(data), -1)).T
        sigma = (high - low) / 2.0
        if kind == "difference":
            lo, hi, stretch = median - 5.0 * sigma, median + 5.0 * sigma, LinearStretch()
        else:
            lo, hi, stretch = median - 3.0 * sigma, np.maximum(top, median + 10.0 * sigma), AsinhStretch(0.3)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = stretch(np.clip((data - lo[:, None, None]) / span[:, None, None], 0.0, 1.0))
    index = np.floor(scaled * (_GREYS - 1) + 0.5)
    return np.where(np.isfinite(data), index, _GREYS).astype(np.uint8)


def _palette() -> bytes:
    greys = np.linspace(0, 255, _GREYS).round().astype(int)
    return bytes([v for g in greys for v in (g, g, g)] + list(PAD_RGB))


_PALETTE = _palette()


def _png(panels: Sequence[np.ndarray]) -> bytes:
    """One palette PNG of ``panels`` (palette indices, FITS orientation) side by side."""
    return _png_rows([np.concatenate([p[::-1] for p in panels], axis=1)])


def _png_rows(rows: Sequence[np.ndarray]) -> bytes:
    """One palette PNG of ``rows`` (palette indices, already top-down), one under the other."""
    from PIL import Image

    image = Image.fromarray(np.concatenate(rows, axis=0), mode="P")
    image.putpalette(_PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def stamp_png(stamp: Stamp) -> bytes:
    """The four cutouts side by side as one PNG (``len(KINDS) × size`` wide)."""
    return _png([_display(stamp.images[kind][None], kind)[0] for kind in KINDS])


def overview(image: np.ndarray, max_side: int = 1024) -> tuple[bytes, int]:
    """(PNG, factor): the whole frame block-averaged by the smallest integer ``factor`` that
    brings its longer side to at most ``max_side``, shown as the stamps are (asinh, FITS
    orientation flipped to top-down). Frame pixel (x, y) is at PNG pixel
    ``((x + 0.5) / factor, rows - (y + 0.5) / factor)``."""
    data = np.asarray(image, dtype=np.float32)
    h, w = data.shape
    factor = max(1, math.ceil(max(h, w) / max_side))
    ny, nx = math.ceil(h / factor), math.ceil(w / factor)
    padded = np.full((ny * factor, nx * factor), np.nan, dtype=np.float32)
    padded[:h, :w] = data
    blocks = padded.reshape(ny, factor, nx, factor)
    finite = np.isfinite(blocks)
    count = finite.sum(axis=(1, 3))
    total = np.where(finite, blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        small = np.where(count > 0, total / count, np.nan)
    return _png([_display(small[None], "science")[0]]), factor


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
    """The FITS file of one observation's stamps (``wcs``: the frame's): a primary header, then
    one image HDU per detection, ``DET<rank>``, holding its four cutouts as a cube (planes
    ``PLANE1..4`` = science, reference, difference, probability) with the stamp's WCS on the
    first two axes.

    Every card astropy formats (the WCS, the structure keywords, the observation's name) is
    formatted once here; per stamp only CRPIX (where Cutout2D moves it) and the stamp's geometry
    and measurements change.
    """

    def __init__(self, wcs: Any, size: int = STAMP_SIZE, observation: str | None = None) -> None:
        from astropy.io import fits

        self.size = size
        self.observation = str(observation or "")[:68]
        header = wcs.to_header(relax=True) if wcs is not None else fits.Header()
        # WCSAXES (2) must not be below NAXIS (3): without it the third axis gets wcslib's defaults
        skip = ("CRPIX1", "CRPIX2", "WCSAXES")
        self._wcs_cards = [c.image for c in header.cards if c.keyword not in skip]
        self._structure = [
            fits.Card("XTENSION", "IMAGE", "image extension").image,
            fits_card("BITPIX", -32, "IEEE single precision"),
            fits_card("NAXIS", 3),
            fits_card("NAXIS1", size),
            fits_card("NAXIS2", size),
            fits_card("NAXIS3", len(KINDS), "planes: PLANE1..4"),
            fits_card("PCOUNT", 0),
            fits_card("GCOUNT", 1),
        ]
        self._planes = [
            fits.Card(f"PLANE{i + 1}", k.upper(), "cube plane").image for i, k in enumerate(KINDS)
        ]

    def primary(self, count: int) -> bytes:
        from astropy.io import fits

        return _header(
            [
                fits_card("SIMPLE", True, "conforms to FITS standard"),
                fits_card("BITPIX", 8),
                fits_card("NAXIS", 0),
                fits_card("EXTEND", True),
                fits.Card("OBSNAME", self.observation, "observation").image,
                fits_card("NSTAMPS", count, "stamp HDUs DET0000... follow, by score"),
                fits_card("STAMPSZ", self.size, "[pix] stamp side"),
                *self._planes,
            ]
        )

    def hdu(self, stamp: Stamp, detection: Any, rank: int) -> bytes:
        """The image HDU ``DET<rank>``: header and data."""
        from astropy.io import fits

        cards = [*self._structure, fits.Card("EXTNAME", f"DET{rank:04d}").image, *self._planes]
        for key, attr, comment in DETECTION_CARDS:
            value = getattr(detection, attr, None)
            if value is not None and math.isfinite(value):
                cards.append(fits_card(key, float(value), comment))
        cards += [
            fits_card("PARTIAL", stamp.partial, "some stamp pixels lie outside the frame (NaN)"),
            fits_card("COVERAGE", round(stamp.coverage, 6), "fraction of stamp pixels inside the frame"),
            fits_card("LTV1", -stamp.origin[0], "stamp x = frame x + LTV1 (1-based pixels)"),
            fits_card("LTV2", -stamp.origin[1], "stamp y = frame y + LTV2 (1-based pixels)"),
            fits_card("DETX", round(stamp.position[0] + 1.0, 4), "detection x in stamp pixels (1-based)"),
            fits_card("DETY", round(stamp.position[1] + 1.0, 4), "detection y in stamp pixels (1-based)"),
        ]
        if stamp.crpix is not None:  # the one number Cutout2D changes in the frame's WCS
            cards += [
                fits_card(f"CRPIX{i + 1}", value, "Pixel coordinate of reference point")
                for i, value in enumerate(stamp.crpix)
            ]
        cube = np.stack([stamp.images[kind] for kind in KINDS]).astype(">f4", copy=False)
        return _header([*cards, *self._wcs_cards]) + _padded(np.ascontiguousarray(cube).tobytes(), b"\0")

    def file(self, stamps: Sequence[Stamp], detections: Sequence[Any]) -> bytes:
        parts = [self.primary(len(stamps))]
        parts += [self.hdu(s, d, i) for i, (s, d) in enumerate(zip(stamps, detections, strict=True))]
        return b"".join(parts)


DETECTION_CARDS = (
    ("DETSCORE", "score", "detection score"),
    ("DETFLUX", "flux", "aperture flux on the difference"),
    ("DETFLUXE", "flux_err", "1 sigma flux error"),
    ("DETSNR", "snr", "flux / flux_err"),
    ("DETMAG", "mag", "AB magnitude of the aperture flux"),
    ("DETMAGE", "mag_err", "1 sigma error of DETMAG"),
    ("DETRA", "ra", "[deg] detection RA"),
    ("DETDEC", "dec", "[deg] detection Dec"),
)
GEOMETRY_CARDS = ("PARTIAL", "COVERAGE", "LTV1", "LTV2", "DETX", "DETY")


# -- one detection, out of its observation's files -------------------------------------------------


def detection_png(sprite: Any, index: int, size: int = STAMP_SIZE) -> bytes:
    """Row ``index`` of an observation's stamp strip (a PIL image) as a PNG of its own."""
    if not 0 <= index < sprite.height // size:
        raise IndexError(f"stamp {index} is not in a strip of {sprite.height // size}")
    row = sprite.crop((0, index * size, sprite.width, (index + 1) * size))
    buffer = io.BytesIO()
    row.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def detection_fits(stamps_file: Any, index: int) -> bytes:
    """One detection's FITS file out of its observation's: a primary header with the
    observation and the measurements, then SCIENCE, REFERENCE, DIFFERENCE and PROBABILITY image
    extensions, each with the stamp's celestial WCS (built by astropy: this is per download)."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(stamps_file, lazy_load_hdus=True) as hdus:
        try:
            hdu = hdus[f"DET{index:04d}"]
        except KeyError:
            raise IndexError(f"stamp {index} is not in {stamps_file}") from None
        header, cube = hdu.header, np.asarray(hdu.data)
        primary = fits.PrimaryHDU()
        primary.header["OBSNAME"] = (hdus[0].header.get("OBSNAME", ""), "observation")
        for key, _attr, comment in DETECTION_CARDS:
            if key in header:
                primary.header[key] = (header[key], comment)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            celestial = WCS(header).celestial
        common = celestial.to_header(relax=True) if celestial.has_celestial else fits.Header()
        for key in GEOMETRY_CARDS:
            common[key] = (header[key], header.comments[key])
        images = []
        for i, kind in enumerate(KINDS):
            plane = fits.ImageHDU(cube[i].astype(np.float32), header=common.copy(), name=kind.upper())
            images.append(plane)
    buffer = io.BytesIO()
    fits.HDUList([primary, *images]).writeto(buffer, output_verify="exception")
    return buffer.getvalue()


def stamp_fits(stamp: Stamp, detection: Any, observation: str | None = None) -> bytes:
    """One stamp as a detection's FITS file (what the status API serves for it)."""
    writer = FitsStamps(stamp.frame_wcs, stamp.images[KINDS[0]].shape[0], observation)
    return detection_fits(io.BytesIO(writer.file([stamp], [detection])), 0)


# -- writing ---------------------------------------------------------------------------------------


def stamp_prefix(artifacts: Any, observation_id: int, name: str) -> Any:
    """``<artifacts>/stamps/<id>-<name>``: the observation's stamp files are this plus ``.png``
    and ``.fits`` (the id keeps two names that sanitise alike apart)."""
    return artifacts / "stamps" / f"{int(observation_id)}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:80]}"


def split_stamp_uri(stamp_uri: str) -> tuple[str, int]:
    """(prefix URI, index) of a catalog ``stamp_uri`` ``<prefix>#<index>``; ValueError otherwise."""
    prefix, sep, index = stamp_uri.rpartition("#")
    if not sep or not prefix or not index.isdigit() or len(index) > 6:
        raise ValueError(f"not a stamp URI (<prefix>#<index>): {stamp_uri!r}")
    return prefix, int(index)


def write_stamps(
    prefix: Any,
    triplet: Any,
    probability: np.ndarray,
    detections: Sequence[Any],
    *,
    storage: Any,
    observation: str | None = None,
    size: int = STAMP_SIZE,
    limit: int | None = None,
) -> list[str | None]:
    """Write the stamps of the first ``limit`` detections (score order) as two files:
    ``<prefix>.png`` (one strip per detection, one under the other) and ``<prefix>.fits`` (one
    HDU per detection, see :class:`FitsStamps`).

    Two files per observation, not per detection: on object storage every file is a request
    (tens of milliseconds each), and even on this machine's disk a file costs ~4 ms.

    Returns, aligned with ``detections``, each one's ``stamp_uri`` ``<prefix URI>#<rank>`` (its
    row in the strip, its HDU ``DET<rank>``), ``None`` beyond ``limit``.
    """
    chosen = list(detections)[: len(detections) if limit is None else max(0, limit)]
    if not chosen:
        return [None] * len(detections)
    stamps = [cutout(triplet, probability, d.x, d.y, size) for d in chosen]
    panels = {kind: _display(np.stack([s.images[kind] for s in stamps]), kind) for kind in KINDS}
    rows = [np.concatenate([panels[k][i][::-1] for k in KINDS], axis=1) for i in range(len(stamps))]
    writer = FitsStamps(getattr(triplet, "wcs", None), size, observation)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Any, Callable[[], bytes]]] = [
        (prefix.with_name(prefix.name + ".png"), partial(_png_rows, rows)),
        (prefix.with_name(prefix.name + ".fits"), partial(writer.file, stamps, chosen)),
    ]
    # encoding (zlib releases the GIL) and the two writes (object-store latency) overlap
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        list(pool.map(lambda job: job[0].write_bytes(job[1]()), jobs))
    base = storage.uri_for(prefix)
    return [f"{base}#{rank}" for rank in range(len(chosen))] + [None] * (len(detections) - len(chosen))
