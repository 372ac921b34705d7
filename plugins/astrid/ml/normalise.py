"""Robust per-image normalisation of the (difference, science, reference) stack.

Every constant the network sees is estimated from the image itself: the background level is a
sigma-clipped median and the noise a sigma-clipped MAD (×1.4826), so the same model works on
any zero point, sky level or gain. The difference channel is divided by *its own* noise, so a
pixel value is its significance: a transient of SNR 5 looks the same in every observation.

Statistics are computed once per *frame* (from at most ``max_samples`` pixels on a regular
grid, deterministic), then applied per tile by the engine, so tiled inference sees exactly the
same inputs as full-frame inference.

After scaling, each channel goes through ``soft * asinh(x / soft)``: linear for |x| below
``soft`` noise units (the detection regime), logarithmic above it (bright stars, saturated
cores, cosmic rays), which keeps activations bounded without clipping information away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a unit Gaussian
CHANNELS = ("difference", "science", "reference")
SOFT = 20.0  # noise units where asinh compression starts (a scale in σ, not a data constant)


@dataclass(frozen=True)
class ChannelStats:
    """Background level and noise (both in image units) of one channel."""

    background: float
    noise: float


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


def stack_stats(
    science: np.ndarray, reference: np.ndarray, difference: np.ndarray
) -> tuple[ChannelStats, ...]:
    """Stats for the three channels in network order (difference, science, reference)."""
    return (robust_stats(difference), robust_stats(science), robust_stats(reference))


def apply(image: np.ndarray, stats: ChannelStats, soft: float = SOFT) -> np.ndarray:
    """Scale ``image`` to noise units with ``stats``, compress softly, zero non-finite pixels."""
    x = (np.asarray(image, dtype=np.float32) - np.float32(stats.background)) / np.float32(stats.noise)
    x = np.float32(soft) * np.arcsinh(x / np.float32(soft))
    x[~np.isfinite(x)] = 0.0
    return x.astype(np.float32, copy=False)


def normalise_stack(
    science: np.ndarray,
    reference: np.ndarray,
    difference: np.ndarray,
    stats: tuple[ChannelStats, ...] | None = None,
) -> np.ndarray:
    """(3, H, W) float32 network input for a whole frame (training and small frames).

    The engine does the same per tile with frame-level ``stats`` instead of materialising this.
    """
    stats = stats or stack_stats(science, reference, difference)
    return np.stack([apply(img, s) for img, s in zip((difference, science, reference), stats, strict=True)])
