"""Photometry people can use: each detection's flux uncertainty, SNR and AB magnitude.

The flux is :func:`astrid.ml.detect.aperture_flux` (radius 3 px, annulus-median background, on
the difference image); this module adds its 1σ uncertainty from a per-pixel noise model of the
difference image (:class:`NoiseModel`) and, when the header carries a photometric zero point, the
AB magnitude of that flux and its error.

Noise model, per pixel (in the difference image's units)::

    σ² = σ_sky²(x, y) + max(science − sky_science(x, y), 0) / g

* ``σ_sky`` is the difference image's own local noise: the 3σ-clipped spread of ``MESH_SAMPLES``
  pixels on a regular sub-grid of each ``MESH``-px box (as SExtractor and
  ``photutils.background.Background2D`` mesh the sky), 3×3-median-filtered across boxes and
  interpolated bilinearly, so gradients in depth or sky are followed and a bright star
  in one box does not inflate its noise. Sampling keeps it at ~20 ms for a 2048² frame.
* The second term is the photon noise of what sits on the pixel in the science image (the
  transient itself, a host galaxy, a star), with the *effective gain* ``g = sky / σ_sky²`` of the
  frame (the same definition the U-Net's normalisation uses). It is omitted, and said so in the
  log, when the science sky is too faint to measure ``g`` (a sky-subtracted science image).
  Because ``σ_sky²`` also holds the reference's noise, ``g`` is a slight underestimate and the
  source term errs on the large (conservative) side.

Magnitudes: ``mag = ZP − 2.5 log10(flux)``, ``mag_err = 2.5 / ln 10 · flux_err / flux`` with ZP
from the first of the configured key (``ASTRID_INFERENCE_ZEROPOINT_KEY``), ``MAGZP``, ``PHOTZP``
and ``MAGZPT`` found in the science header. AstrID takes that zero point to be on the AB system
(ZTF, DECam, Pan-STARRS and the synthetic survey are). It is the magnitude *of the aperture flux*:
no aperture correction, so a point source reads fainter than its total magnitude by what falls
outside 3 px. No magnitude is given for a flux ≤ 0 or a header zero point that is not a plausible
number (a warning names the keyword).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage

from astrid.ml.detect import Detection, aperture_photometry

log = logging.getLogger(__name__)

ZEROPOINT_KEYS = ("MAGZP", "PHOTZP", "MAGZPT")
ZEROPOINT_RANGE = (0.0, 50.0)  # mag: anything outside is a broken header, not a zero point
MESH = 128  # px per noise box
MESH_SAMPLES = 1024  # pixels sampled per box (a regular sub-grid every 4 px): σ to ~3 % per box
MIN_SKY_SNR = 5.0  # the science sky must be this many σ above 0 to estimate the gain from it
APERTURE_RADIUS = 3.0  # px, the aperture of astrid.ml.detect.extract_detections' flux
ANNULUS = (6.0, 10.0)
_PER_MAG = 2.5 / math.log(10.0)


def _blocks(image: np.ndarray, box: int, step: int) -> np.ndarray:
    """``image`` sampled every ``step`` px and cut into ``box``-px boxes: shape (ny, nx, samples).
    Boxes that overrun the frame's far edges are padded with NaN."""
    sample = np.asarray(image, dtype=np.float32)[::step, ::step]
    k = box // step
    h, w = sample.shape
    ny, nx = max(1, math.ceil(h / k)), max(1, math.ceil(w / k))
    if (h, w) != (ny * k, nx * k):
        sample = np.pad(sample, ((0, ny * k - h), (0, nx * k - w)), constant_values=np.nan)
    return sample.reshape(ny, k, nx, k).swapaxes(1, 2).reshape(ny, nx, k * k)


def _box_stats(blocks: np.ndarray, clip: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(centre, σ) of each box's finite samples after one ``clip``-σ clip (NaN for a box with
    fewer than 16). Vectorised over boxes: one sort, then the median and the 15.87/84.13
    percentiles (±1σ of a Gaussian) are read at index positions of the kept range."""
    ordered = np.sort(blocks, axis=-1)  # NaN last
    count = np.isfinite(ordered).sum(axis=-1)

    def stats(first: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        def at(q: float) -> np.ndarray:
            index = first + np.clip(np.floor(q * (n - 1) + 0.5), 0, None).astype(np.intp)
            index = np.minimum(index, ordered.shape[-1] - 1)
            return np.take_along_axis(ordered, index[..., None], axis=-1)[..., 0].astype(np.float64)

        return at(0.5), (at(0.841345) - at(0.158655)) / 2.0

    centre, sigma = stats(np.zeros_like(count), count)
    with np.errstate(invalid="ignore"):
        lo = (ordered < (centre - clip * sigma)[..., None]).sum(axis=-1)
        hi = (ordered <= (centre + clip * sigma)[..., None]).sum(axis=-1)
    kept = np.where(sigma > 0, hi - lo, count)
    first = np.where(sigma > 0, lo, 0)
    centre, sigma = stats(first, kept)
    few = kept < 16
    return np.where(few, np.nan, centre), np.where(few, np.nan, sigma)


def _fill(mesh: np.ndarray, fallback: float) -> np.ndarray:
    """Boxes with no estimate take the median of the others; then a 3×3 median filter."""
    good = np.isfinite(mesh)
    fill = float(np.median(mesh[good])) if good.any() else fallback
    return ndimage.median_filter(np.where(good, mesh, fill), size=3, mode="nearest")


class NoiseModel:
    """Per-pixel 1σ noise of a difference image (see the module docstring for the model).

    Built once per frame (two passes of box statistics); :meth:`sigma` evaluates it on any
    window, so photometry of a few detections never materialises the full-frame map.
    """

    def __init__(self, difference: np.ndarray, science: np.ndarray | None = None, *, box: int = MESH) -> None:
        self.shape = np.shape(difference)
        self.box = box
        self._science = None if science is None else np.asarray(science)
        if self._science is not None and self._science.shape != self.shape:
            raise ValueError(f"science shape {self._science.shape} != difference shape {self.shape}")
        step = max(1, box // math.isqrt(MESH_SAMPLES))
        step = step if box % step == 0 else 1  # boxes of whole samples, centred where _mesh_at puts them
        noise = _box_stats(_blocks(difference, box, step))[1]
        sky = _box_stats(_blocks(self._science, box, step))[0] if self._science is not None else None
        self.sky_noise = _fill(noise, 1.0)
        self.sky_level = _fill(sky, 0.0) if sky is not None else None
        self.gain = self._effective_gain()

    def _effective_gain(self) -> float | None:
        if self.sky_level is None:
            return None
        sky, sigma = float(np.median(self.sky_level)), float(np.median(self.sky_noise))
        if sigma > 0 and sky > MIN_SKY_SNR * sigma:
            return sky / sigma**2
        log.info(
            "science sky %.3g is below %g x the difference noise %.3g: the flux errors leave out the "
            "sources' photon noise",
            sky,
            MIN_SKY_SNR,
            sigma,
        )
        return None

    def _mesh_at(self, mesh: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        """``mesh`` interpolated bilinearly at the pixels of the window (box centres as nodes)."""
        yy, xx = np.mgrid[rows, cols]
        half = (self.box - 1) / 2.0
        coords = np.stack([(yy - half) / self.box, (xx - half) / self.box])
        return ndimage.map_coordinates(mesh, coords, order=1, mode="nearest")

    def sigma(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """The 1σ noise (float32) on ``difference[rows, cols]`` (slices with non-negative start and
        stop inside the frame); the whole frame by default."""
        rows, cols = rows or slice(0, self.shape[0]), cols or slice(0, self.shape[1])
        var = np.square(self._mesh_at(self.sky_noise, rows, cols))
        if self.gain is not None and self._science is not None and self.sky_level is not None:
            source = np.asarray(self._science[rows, cols], dtype=np.float64) - self._mesh_at(
                self.sky_level, rows, cols
            )
            var += np.where(np.isfinite(source), np.maximum(source, 0.0), 0.0) / self.gain
        return np.sqrt(var).astype(np.float32)


def zeropoint(header: Any, key: str | None = None) -> float | None:
    """The photometric zero point (mag) in ``header``: the first of ``key``, ``MAGZP``, ``PHOTZP``,
    ``MAGZPT`` present. ``None`` when none is, or when the one present is not a number in
    ``ZEROPOINT_RANGE`` (logged: a broken header must not yield wrong magnitudes)."""
    if header is None:
        return None
    keys = ((key.strip().upper(),) if key and key.strip() else ()) + ZEROPOINT_KEYS
    for name in keys:
        if name not in header:
            continue
        value = header[name]
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if math.isfinite(number) and ZEROPOINT_RANGE[0] < number < ZEROPOINT_RANGE[1]:
            return number
        log.warning(
            "header %s = %r is not a zero point in mag (%g-%g): no magnitudes for this frame",
            name,
            value,
            *ZEROPOINT_RANGE,
        )
        return None
    return None


def magnitude(flux: float, flux_err: float | None, zp: float | None) -> tuple[float | None, float | None]:
    """(AB mag, its 1σ error) of ``flux`` for zero point ``zp``; (None, None) when undefined."""
    if zp is None or not (math.isfinite(flux) and flux > 0):
        return None, None
    mag = zp - 2.5 * math.log10(flux)
    err = _PER_MAG * flux_err / flux if flux_err is not None and math.isfinite(flux_err) else None
    return mag, err


def measure(
    detections: Sequence[Detection],
    triplet: Any,
    *,
    zeropoint_key: str | None = None,
    noise: NoiseModel | None = None,
    radius: float = APERTURE_RADIUS,
    annulus: tuple[float, float] = ANNULUS,
) -> list[Detection]:
    """``detections`` with ``flux``, ``flux_err``, ``snr``, ``mag`` and ``mag_err`` measured on
    ``triplet.difference`` (``flux`` re-measured on the same aperture, so flux and error agree)."""
    if not detections:
        return []
    difference = np.asarray(triplet.difference)
    noise = noise or NoiseModel(difference, getattr(triplet, "science", None))
    zp = zeropoint(getattr(triplet, "header", None), zeropoint_key)
    h, w = difference.shape
    out = []
    for d in detections:
        rows = slice(max(0, math.floor(d.y - annulus[1])), min(h, math.ceil(d.y + annulus[1]) + 1))
        cols = slice(max(0, math.floor(d.x - annulus[1])), min(w, math.ceil(d.x + annulus[1]) + 1))
        if rows.start >= rows.stop or cols.start >= cols.stop:  # off the frame: nothing to measure
            out.append(d)
            continue
        flux, err = aperture_photometry(
            difference[rows, cols],
            d.x - cols.start,
            d.y - rows.start,
            radius,
            annulus,
            error=noise.sigma(rows, cols),
        )
        flux_err = err if math.isfinite(err) and err > 0 else None
        snr = flux / flux_err if flux_err is not None and math.isfinite(flux) else None
        mag, mag_err = magnitude(flux, flux_err, zp)
        out.append(replace(d, flux=flux, flux_err=flux_err, snr=snr, mag=mag, mag_err=mag_err))
    return out
