"""Robust per-image normalisation of the (difference, science, reference) stack.

Every constant the network sees is estimated from the image itself: the background level is a
sigma-clipped median and the noise a sigma-clipped MAD (×1.4826), so the same model works on
any zero point, sky level or gain. The difference channel is divided by *its own* noise, so a
pixel value is its significance: a transient of SNR 5 looks the same in every observation.

That noise is *per pixel*: ``sqrt(MAD_diff² + max(science - sky, 0) / g)``, the sky noise of the
difference plus the photon noise of whatever sits on the sky in the science image (a host star
or galaxy, a bright star's subtraction residual, a cosmic ray). ``g`` is the effective gain
(ADU → Poisson counts) estimated from the frame itself as ``sky_sci / MAD_diff²``: the sky's
photon noise is what dominates the difference image's noise once the stars are subtracted
(the science image's own MAD would include confusion noise from faint stars, 2–5× too much in
crowded fields). Read noise and the reference's noise make this estimate a little low, i.e. the
photon term a little high — the safe side. When the science sky is not clearly above its noise
(``sky < 5·MAD_sci``, e.g. an already sky-subtracted image) the photon term cannot be estimated
from the data and is left out.

Science and reference are scaled to their own noise around their own sky. After scaling, each
channel goes through ``soft * asinh(x / soft)``: linear for |x| below ``soft`` noise units (the
detection regime), logarithmic above (bright stars, saturated cores, cosmic rays), which keeps
activations bounded without clipping information away. Non-finite pixels become 0 (= sky).

A fourth channel, **residual**, tells the network how well this frame was subtracted. Every
difference image leaves residuals on bright sources (PSF-model mismatch, misregistration, flux
scale errors) whose size is a property of the *frame*, not of one star: a 2 % residual on a bright
star looks exactly like a faint transient on that star, and only the other stars of the frame say
which it is. The frame's residual level ``ε`` is measured from the data (the same idea as the
source and astrometric noise terms of ZOGY's corrected score, Zackay, Ofek & Gal-Yam 2016): over
the brightest unsaturated stars of the reference image, the 5×5-pixel residual power of the
difference beyond its expected noise, relative to the star's own power,
``ρ² = max(Σd² − ΣV, 0) / Σs²`` (a pure flux-scale error e gives ρ = e);
``ε = sqrt(median ρ²)``. The channel is then
``ε · max(science − sky, 0) / noise``: the residual, in the difference's noise units, that an
ordinary star leaves at that pixel in this frame. A model card's ``architecture.in_channels``
says whether a model takes it (4) or not (3).

A fifth channel, **matched**, is the difference's per-pixel significance correlated with the
frame's PSF — a Gaussian of the seeing *measured* on the science image's stars
(:func:`astrid.ml.baseline.measure_seeing`) — and rescaled to unit noise: for a point source on
flat sky its peak is the source's optimal SNR. This is the classical detection statistic; a small
U-Net can learn to approximate it, but a broad PSF (FWHM 6 px) needs a large, exact kernel that
costs the network capacity better spent on telling residuals and artefacts from transients. It is
the one channel that is not per pixel: its value depends on pixels up to :data:`MATCHED_RADIUS_SIGMA`
PSF σ away, which the engine supplies as an extra halo around each band (see
:func:`matched_halo`), so tiles still equal the full frame.

Statistics are computed once per *frame* (from at most ``max_samples`` pixels on a regular
grid, deterministic); everything after that is per pixel, so a tile normalised with its frame's
statistics equals the same tile cut from the normalised frame — tiled and full-frame inference
see identical inputs.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from astrid.imaging.stats import FWHM_PER_SIGMA, finite_sample, median_sigma

log = logging.getLogger(__name__)

CHANNELS = ("difference", "science", "reference", "residual", "matched")
SOFT = 20.0  # noise units where asinh compression starts (a scale in σ, not a data constant)
MIN_SKY_SNR = 5.0
RESIDUAL_MIN_PEAK = 30.0  # stars used to measure ε peak above this many science-noise units
RESIDUAL_MAX_STARS = 400  # the brightest this many (enough for a stable median, cheap to sum)
RESIDUAL_MIN_STARS = 8  # fewer than this: ε cannot be measured; taken as 0 (no residual known)
MATCHED_RADIUS_SIGMA = 4.0  # the matched filter's Gaussian is truncated at this many σ
SEEING_CROP = 1024  # the seeing is measured on the central crop of at most this side (speed)
DEFAULT_SEEING_FWHM = 3.0  # px, used (and logged) only when no star can be measured


@dataclass(frozen=True)
class ChannelStats:
    """Background level and noise (both in image units) of one channel."""

    background: float
    noise: float


@dataclass(frozen=True)
class FrameStats:
    """Per-frame statistics: one :class:`ChannelStats` per channel plus the effective gain."""

    difference: ChannelStats
    science: ChannelStats
    reference: ChannelStats
    gain: float | None  # ADU -> Poisson counts; None when the sky level does not allow an estimate
    residual: float = 0.0  # ε: subtraction residual per unit of star brightness, measured on this frame
    seeing_fwhm: float = DEFAULT_SEEING_FWHM  # px, measured on the science image's stars


def robust_stats(
    image: np.ndarray, *, clip: float = 3.0, iterations: int = 5, max_samples: int = 1 << 18
) -> ChannelStats:
    """Sigma-clipped median background and MAD noise of ``image`` (non-finite pixels ignored).

    Uses a regular sub-grid of at most ``max_samples`` pixels (deterministic, unbiased for
    stationary noise). A constant image gets a noise of 1 so division stays defined.
    """
    values = finite_sample(image, max_samples)
    if values.size == 0:
        return ChannelStats(0.0, 1.0)
    center, sigma = median_sigma(values)
    for _ in range(iterations):
        if not sigma > 0:
            break
        kept = values[np.abs(values - center) <= clip * sigma]
        if kept.size < 16 or kept.size == values.size:
            break
        values = kept
        center, sigma = median_sigma(values)
    if not sigma > 0 or not np.isfinite(sigma):
        # Degenerate (e.g. mostly constant) image: fall back to the standard deviation, then 1.
        std = float(np.std(values))
        sigma = std if std > 0 and np.isfinite(std) else 1.0
    return ChannelStats(center, sigma)


def effective_gain(
    science: ChannelStats, difference: ChannelStats, min_snr: float = MIN_SKY_SNR
) -> float | None:
    """``sky_sci / noise_diff²``, or ``None`` when the science sky is < ``min_snr`` × its noise."""
    if science.noise > 0 and difference.noise > 0 and science.background > min_snr * science.noise:
        return science.background / difference.noise**2
    return None


def stack_stats(science: np.ndarray, reference: np.ndarray, difference: np.ndarray) -> FrameStats:
    """Robust statistics of a whole frame (what every tile of it is normalised with)."""
    sci, diff = robust_stats(science), robust_stats(difference)
    stats = FrameStats(diff, sci, robust_stats(reference), effective_gain(sci, diff))
    return replace(
        stats,
        residual=subtraction_residual(science, difference, stats, reference),
        seeing_fwhm=frame_seeing(science),
    )


def _gauss2d(
    coords: tuple[np.ndarray, np.ndarray], amp: float, x0: float, y0: float, sigma: float, bkg: float
):
    yy, xx = coords
    return amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2.0 * sigma * sigma)) + bkg


def measure_seeing(image: np.ndarray, *, max_stars: int = 40, half: int = 7) -> float | None:
    """Median FWHM (pixels) of Gaussian fits to bright, isolated, unsaturated stars, or ``None``.

    Candidates are local maxima between 20σ above background and half the image maximum (to
    avoid saturated cores), with no brighter maximum within ``2*half`` pixels.
    """
    from scipy import ndimage, optimize  # on use: the inference path imports this module

    data = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
    if min(data.shape) < 4 * half:
        return None
    stats = robust_stats(data)
    sub = data - stats.background
    top = float(np.max(sub))
    peaks = (
        (sub == ndimage.maximum_filter(sub, size=4 * half + 1)) & (sub > 20 * stats.noise) & (sub < 0.5 * top)
    )
    ys, xs = np.nonzero(peaks)
    inside = (ys >= half) & (ys < data.shape[0] - half) & (xs >= half) & (xs < data.shape[1] - half)
    ys, xs = ys[inside], xs[inside]
    order = np.argsort(-sub[ys, xs])[: max_stars * 2]
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    sigmas = []
    for y, x in zip(ys[order], xs[order], strict=True):
        cut = sub[y - half : y + half + 1, x - half : x + half + 1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, _ = optimize.curve_fit(
                    _gauss2d,
                    (yy.ravel(), xx.ravel()),
                    cut.ravel(),
                    p0=(cut.max(), 0.0, 0.0, 1.5, 0.0),
                    maxfev=400,
                )
        except (RuntimeError, ValueError):
            continue
        sigma = abs(popt[3])
        if 0.4 < sigma < half / 1.5 and abs(popt[1]) < 1.5 and abs(popt[2]) < 1.5:
            sigmas.append(sigma)
        if len(sigmas) >= max_stars:
            break
    if len(sigmas) < 3:
        return None
    return float(np.median(sigmas) * FWHM_PER_SIGMA)


def frame_seeing(science: np.ndarray) -> float:
    """Seeing FWHM (px) measured on the central ``SEEING_CROP``² of the science image."""
    h, w = np.shape(science)
    r0, c0 = max(0, (h - SEEING_CROP) // 2), max(0, (w - SEEING_CROP) // 2)
    fwhm = measure_seeing(np.asarray(science)[r0 : r0 + SEEING_CROP, c0 : c0 + SEEING_CROP])
    if fwhm is None:
        log.info("could not measure the seeing; the matched channel uses FWHM %.1f px", DEFAULT_SEEING_FWHM)
        return DEFAULT_SEEING_FWHM
    return fwhm


def matched_halo(stats: FrameStats) -> int:
    """Pixels of context the matched channel needs on each side (its kernel's radius)."""
    return math.ceil(MATCHED_RADIUS_SIGMA * stats.seeing_fwhm / FWHM_PER_SIGMA)


def _variance(science: np.ndarray, stats: FrameStats) -> np.ndarray:
    """Per-pixel variance of the difference: its sky noise ⊕ the science's photon noise."""
    var = np.full(science.shape, np.float32(stats.difference.noise**2), dtype=np.float32)
    if stats.gain is not None:
        var += _source(science, stats) / np.float32(stats.gain)
    return var


def _source(science: np.ndarray, stats: FrameStats) -> np.ndarray:
    """``max(science − sky, 0)`` as float32, non-finite pixels as 0."""
    source = sky_subtracted(science, stats.science)
    return np.maximum(source, 0.0, out=source)


def sky_subtracted(image: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """``image − background`` as float32, non-finite pixels as 0 (= sky)."""
    out = np.asarray(image, dtype=np.float32) - np.float32(stats.background)
    return np.where(np.isfinite(out), out, np.float32(0.0))


def reference_stars(ref: np.ndarray, noise: float, min_peak: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the stars of a sky-subtracted reference: 5×5 local maxima above
    ``min_peak`` × ``noise`` and below half the image maximum (saturated cores and bleeds
    excluded), at least 2 px from the edges.

    Why the reference: cosmic rays, hot pixels and transients are only in the science, and
    would otherwise pass for stars.
    """
    if ref.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    rows, cols = np.nonzero((ref > min_peak * noise) & (ref < 0.5 * float(ref.max())))
    h, w = ref.shape
    inside = (rows >= 2) & (cols >= 2) & (rows < h - 2) & (cols < w - 2)
    rows, cols = rows[inside], cols[inside]
    # a 5×5 maximum, tested on the bright pixels only (a full-frame maximum filter costs 20× more)
    value = ref[rows, cols]
    peak = np.ones(len(rows), dtype=bool)
    for dr in range(-2, 3):
        for dc in range(-2, 3):
            if dr or dc:
                peak &= value >= ref[rows + dr, cols + dc]
    return rows[peak], cols[peak]


def subtraction_residual(
    science: np.ndarray, difference: np.ndarray, stats: FrameStats, reference: np.ndarray | None = None
) -> float:
    """ε: the frame's subtraction residual per unit of star brightness, from its brightest stars.

    Stars are found in the *reference* (cosmic rays, hot pixels and transients are only in the
    science, and would otherwise pass for stars with 100 % residual): local maxima (5×5) above
    ``RESIDUAL_MIN_PEAK`` reference-noise units and below half the reference's maximum
    (saturated cores and bleeds excluded), at most ``RESIDUAL_MAX_STARS`` of the brightest. A
    transient on one of them or a fading star inflates its ρ, which the median ignores. Without
    a reference, or with fewer than ``RESIDUAL_MIN_STARS`` stars, returns 0.
    """

    if reference is None:
        return 0.0
    ref = sky_subtracted(reference, stats.reference)
    rows, cols = reference_stars(ref, stats.reference.noise, RESIDUAL_MIN_PEAK)
    if len(rows) < RESIDUAL_MIN_STARS:
        return 0.0
    order = np.argsort(-ref[rows, cols])[:RESIDUAL_MAX_STARS]
    sci = np.asarray(science, dtype=np.float32)
    d = np.asarray(difference, dtype=np.float32)
    rho2 = []
    for r, c in zip(rows[order], cols[order], strict=True):
        box = (slice(r - 2, r + 3), slice(c - 2, c + 3))
        source = _source(sci[box], stats)
        scene_power = float((source * source).sum())
        if not scene_power > 0:
            continue
        dd = d[box] - np.float32(stats.difference.background)
        power = float(np.nansum(dd * dd)) - float(_variance(sci[box], stats).sum())
        rho2.append(max(power, 0.0) / scene_power)
    if len(rho2) < RESIDUAL_MIN_STARS:
        return 0.0
    return float(np.sqrt(np.median(rho2)))


def _compress(x: np.ndarray, soft: float) -> np.ndarray:
    x = np.float32(soft) * np.arcsinh(x / np.float32(soft))
    x[~np.isfinite(x)] = 0.0
    return x.astype(np.float32, copy=False)


def apply(image: np.ndarray, stats: ChannelStats, soft: float = SOFT) -> np.ndarray:
    """Scale ``image`` to noise units with ``stats``, compress softly, zero non-finite pixels."""
    x = (np.asarray(image, dtype=np.float32) - np.float32(stats.background)) / np.float32(stats.noise)
    return _compress(x, soft)


def apply_difference(
    difference: np.ndarray, science: np.ndarray, stats: FrameStats, soft: float = SOFT
) -> np.ndarray:
    """The difference in units of its per-pixel noise (sky noise ⊕ science photon noise), compressed."""
    d = np.asarray(difference, dtype=np.float32) - np.float32(stats.difference.background)
    return _compress(d / np.sqrt(_variance(science, stats)), soft)


def apply_matched(
    difference: np.ndarray, science: np.ndarray, stats: FrameStats, soft: float = SOFT
) -> np.ndarray:
    """Per-pixel significance correlated with the frame's Gaussian PSF, in units of its noise.

    Edges are mirrored (numpy "reflect", scipy "mirror"), as the engine pads tiles, so a band cut
    with a ``matched_halo`` of real or mirrored pixels gives the full frame's values.
    """
    return _compress(matched_significance(difference, science, stats), soft)


def matched_significance(difference: np.ndarray, science: np.ndarray, stats: FrameStats) -> np.ndarray:
    """The matched channel before compression: for a point source on flat sky, its optimal SNR."""
    from scipy import ndimage

    g = _matched_kernel(stats)
    filtered = ndimage.correlate1d(_significance(difference, science, stats), g, axis=0, mode="mirror")
    return ndimage.correlate1d(filtered, g, axis=1, mode="mirror")


def matched_peaks(
    difference: np.ndarray,
    science: np.ndarray,
    stats: FrameStats,
    rows: np.ndarray,
    cols: np.ndarray,
    radius: float,
) -> np.ndarray:
    """max of :func:`matched_significance` within ``radius`` px of each (row, col).

    Computed on one small window per point (edges mirrored as the full frame's are), so asking
    about a few thousand places costs a fraction of filtering a whole 2048² frame.
    """
    from scipy import ndimage

    rows, cols = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float32)
    g = _matched_kernel(stats)
    reach = math.floor(radius)
    half = len(g) // 2 + reach
    offsets = np.arange(-half, half + 1)
    h, w = np.shape(difference)
    rr = reflect_index(rows[:, None] + offsets, h)[:, :, None]
    cc = reflect_index(cols[:, None] + offsets, w)[:, None, :]
    z = _significance(np.asarray(difference)[rr, cc], np.asarray(science)[rr, cc], stats)
    z = ndimage.correlate1d(ndimage.correlate1d(z, g, axis=1, mode="mirror"), g, axis=2, mode="mirror")
    core = z[:, half - reach : half + reach + 1, half - reach : half + reach + 1]
    dy, dx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    inside = dy * dy + dx * dx <= radius * radius
    return core[:, inside].max(axis=1)


def _significance(difference: np.ndarray, science: np.ndarray, stats: FrameStats) -> np.ndarray:
    d = np.asarray(difference, dtype=np.float32) - np.float32(stats.difference.background)
    z = d / np.sqrt(_variance(science, stats))
    z[~np.isfinite(z)] = 0.0
    return z


def _matched_kernel(stats: FrameStats) -> np.ndarray:
    """1-D Gaussian of the frame's seeing, truncated at ``matched_halo``; its 2-D square sums to 1."""
    sigma = stats.seeing_fwhm / FWHM_PER_SIGMA
    radius = matched_halo(stats)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= np.sqrt((g**2).sum())  # separable: the 2-D kernel's squares sum to 1 -> unit noise
    return g.astype(np.float32)


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index onto [0, n) by mirror reflection without edge repeat (numpy 'reflect')."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    i = np.abs(index) % period
    return np.where(i >= n, period - i, i)


def apply_residual(science: np.ndarray, stats: FrameStats, soft: float = SOFT) -> np.ndarray:
    """Expected subtraction residual of the scene at each pixel, in the difference's noise units."""
    expected = np.float32(stats.residual) * _source(science, stats)
    return _compress(expected / np.sqrt(_variance(science, stats)), soft)


def normalise_stack(
    science: np.ndarray,
    reference: np.ndarray,
    difference: np.ndarray,
    stats: FrameStats | None = None,
    channels: int = 3,
) -> np.ndarray:
    """(channels, H, W) float32 network input for an image or a tile.

    The first ``channels`` of :data:`CHANNELS`: difference, science, reference, then residual
    (4) and matched (5). The matched channel needs ``matched_halo(stats)`` pixels of context
    beyond the region that will be used. ``stats`` are the *frame's* statistics (computed from these arrays
    when omitted). Every operation is per pixel, so normalising a tile with its frame's stats
    equals cutting the tile out of the normalised frame: that is how the engine avoids
    materialising this for big frames.
    """
    if channels not in (3, 4, 5):
        raise ValueError(f"models take 3 to 5 input channels ({', '.join(CHANNELS)}), not {channels}")
    stats = stats or stack_stats(science, reference, difference)
    planes = [
        apply_difference(difference, science, stats),
        apply(science, stats.science),
        apply(reference, stats.reference),
    ]
    if channels >= 4:
        planes.append(apply_residual(science, stats))
    if channels >= 5:
        planes.append(apply_matched(difference, science, stats))
    return np.stack(planes)


def describe() -> dict[str, str]:
    """How inputs are normalised, for the model card."""
    return {
        "module": "astrid.ml.normalise",
        "channels": ", ".join(CHANNELS),
        "background": "sigma-clipped (3σ, ≤5 iterations) median per frame",
        "noise": "sigma-clipped MAD × 1.4826 per frame",
        "difference": "(d - median_d) / sqrt(MAD_d² + max(science - sky, 0) / g), g = sky_sci / MAD_d² "
        f"(photon term omitted when sky < {MIN_SKY_SNR:g}·MAD_sci)",
        "science/reference": "(x - median) / MAD",
        "residual": "ε · max(science - sky, 0) / per-pixel difference noise; ε = sqrt(median over the "
        f"≤{RESIDUAL_MAX_STARS} brightest unsaturated reference stars (> {RESIDUAL_MIN_PEAK:g}σ) of the 5×5 "
        "excess residual power / star power) (4- and 5-channel models)",
        "matched": "per-pixel difference significance correlated with a Gaussian of the seeing measured "
        f"on the science stars (truncated at {MATCHED_RADIUS_SIGMA:g}σ, unit-noise normalised) "
        "(5-channel models)",
        "compression": f"{SOFT:g}·asinh(x/{SOFT:g}) in noise units; non-finite -> 0",
    }
