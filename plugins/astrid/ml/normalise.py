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

Statistics are computed once per *frame* (from at most ``max_samples`` pixels on a regular
grid, deterministic); everything after that is per pixel, so a tile normalised with its frame's
statistics equals the same tile cut from the normalised frame — tiled and full-frame inference
see identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a unit Gaussian
CHANNELS = ("difference", "science", "reference")
SOFT = 20.0  # noise units where asinh compression starts (a scale in σ, not a data constant)
MIN_SKY_SNR = 5.0


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


def robust_stats(
    image: np.ndarray, *, clip: float = 3.0, iterations: int = 5, max_samples: int = 1 << 20
) -> ChannelStats:
    """Sigma-clipped median background and MAD noise of ``image`` (non-finite pixels ignored).

    Uses a regular sub-grid of at most ``max_samples`` pixels (deterministic, unbiased for
    stationary noise). A constant image gets a noise of 1 so division stays defined.
    """
    data = np.asarray(image)
    if data.size > max_samples:
        step = int(np.ceil(np.sqrt(data.size / max_samples)))
        data = data[::step, ::step] if data.ndim == 2 else data.ravel()[:: step * step]
    values = np.asarray(data, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return ChannelStats(0.0, 1.0)
    center = float(np.median(values))
    sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
    for _ in range(iterations):
        if not sigma > 0:
            break
        kept = values[np.abs(values - center) <= clip * sigma]
        if kept.size < 16 or kept.size == values.size:
            break
        values = kept
        center = float(np.median(values))
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(values - center)))
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
    return FrameStats(diff, sci, robust_stats(reference), effective_gain(sci, diff))


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
    var = np.full(d.shape, np.float32(stats.difference.noise**2), dtype=np.float32)
    if stats.gain is not None:
        source = np.asarray(science, dtype=np.float32) - np.float32(stats.science.background)
        source[~np.isfinite(source)] = 0.0
        np.maximum(source, 0.0, out=source)
        var += source / np.float32(stats.gain)
    return _compress(d / np.sqrt(var), soft)


def normalise_stack(
    science: np.ndarray,
    reference: np.ndarray,
    difference: np.ndarray,
    stats: FrameStats | None = None,
) -> np.ndarray:
    """(3, H, W) float32 network input (difference, science, reference) for an image or a tile.

    ``stats`` are the *frame's* statistics (computed from these arrays when omitted). Every
    operation is per pixel, so normalising a tile with its frame's stats equals cutting the tile
    out of the normalised frame: that is how the engine avoids materialising this for big frames.
    """
    stats = stats or stack_stats(science, reference, difference)
    return np.stack(
        [
            apply_difference(difference, science, stats),
            apply(science, stats.science),
            apply(reference, stats.reference),
        ]
    )


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
        "compression": f"{SOFT:g}·asinh(x/{SOFT:g}) in noise units; non-finite -> 0",
    }
