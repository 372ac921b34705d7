"""Robust image statistics: the one home of the median + MAD noise that the quality gate, the
model's normalisation, the subtraction and the benchmarks all estimate.

The MAD is scaled to a Gaussian σ (``MAD_TO_SIGMA``) because every caller compares it to a noise
level; the median is used instead of the mean because stars, transients and cosmic rays are
outliers of the sky, not part of it. Large frames are measured on a regular sub-grid: the noise of
a stationary sky does not depend on which pixels are looked at, and a 4k² frame's full median
costs 100× a 1-Mpx one.
"""

from __future__ import annotations

import math

import numpy as np

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): the MAD of a unit Gaussian
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # a Gaussian PSF's FWHM / σ


def finite_sample(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """The finite values of a regular sub-grid of at most ~``max_pixels`` of ``image``, float64."""
    data = np.asarray(image)
    if data.size > max_pixels:
        step = math.ceil(math.sqrt(data.size / max_pixels))
        data = data[::step, ::step] if data.ndim == 2 else data.ravel()[:: step * step]
    values = np.asarray(data, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def mad_sigma(values: np.ndarray, center: float | None = None) -> float:
    """``MAD_TO_SIGMA`` × the median absolute deviation of ``values`` from ``center`` (their median
    when not given); NaN for no values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan
    center = float(np.median(values)) if center is None else center
    return MAD_TO_SIGMA * float(np.median(np.abs(values - center)))


def median_sigma(values: np.ndarray) -> tuple[float, float]:
    """(median, MAD σ) of ``values``; (NaN, NaN) for none."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    center = float(np.median(values))
    return center, mad_sigma(values, center)
