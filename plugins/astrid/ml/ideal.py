"""The ideal detector: what a matched filter on a perfect subtraction could find at a given
false-detection rate. The bound every detector is measured against (``astrid evaluate``).

For a transient of local SNR ``s`` (``InjectedTransient.snr_local``: flux × sqrt(Σ P²/σ²), σ²
with the photon noise of sky, host and transient and the PSF-matched reference's noise), the
PSF-matched filter's value at its position is N(s, 1). A detector that calls everything above
``t`` a source finds it with probability ``P(N(s, 1) > t) = Φ(s - t)`` — its *ideal recall*.
The threshold ``t*`` is set by the false-detection rate: pure unit noise, correlated with the
frame's PSF and renormalised to unit variance, has local maxima above ``t`` at a rate per
megapixel that depends on the PSF (a wider PSF has fewer independent peaks). :class:`NoisePeakRate`
*simulates* that noise and counts its peaks. High peaks are rare, so the rate at the operating
level (about 1 per Mpix) is read from a fit to the thousands of peaks above :data:`FIT_LEVEL`:
for a smooth Gaussian random field in 2-D the number of local maxima above ``t`` is, at high
``t``, the expected Euler characteristic of the excursion set, ``∝ t · exp(-t²/2)`` (Adler); the
fit frees the exponent's scale (pixelisation steepens or flattens the tail, depending on the
PSF's width in pixels). Against direct counts on 60 Mpix of noise the fitted rate at 4.5–5 is
within ~40 % (``t*`` within ~0.08, ideal recall at SNR 5 within ~0.03). ``tests/unit/test_ml_ideal.py`` checks the rate
against direct counts and the recall formula against a matched filter on simulated frames.

Host classes (:func:`host_classes`), from what a pipeline can measure on the reference image at
the transient's position:

* ``crowded``: the reference has at least :data:`CROWDED_PER_BEAM` sources (local maxima of the
  PSF-filtered, background-subtracted reference ≥ 5σ) per science beam (``N_eff = 1/ΣP²``
  pixels) within ``max(24, 8 FWHM)`` px of the transient — confusion: other sources' wings and
  subtraction residuals fall on it. Checked first.
* ``blank``: otherwise, if the reference's PSF-weighted flux under the transient is below
  :data:`HOST_SIGMA` times the noise of that flux in the *difference* image (the host would not
  be a 3σ source in the difference's noise — its light and residuals do not matter).
* ``star`` / ``galaxy``: otherwise, by the host's size: the Gaussian-weighted second moment of
  the reference around its brightest pixel within 1.5 FWHM of the transient, against the same
  moment of the reference PSF; ``galaxy`` when the host's is :data:`EXTENDED_RATIO` × larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize
from scipy.signal import fftconvolve
from scipy.special import ndtr

FIT_LEVEL = 3.25  # peaks above this level fix the rate curve's prefactor (hundreds per Mpix)
SIM_MPIX = 8.0  # Mpix of simulated noise per PSF
HOST_CLASSES = ("blank", "galaxy", "star", "crowded")
CROWDED_PER_BEAM = 0.15
HOST_SIGMA = 3.0
EXTENDED_RATIO = 1.5
_TILE = 1024


def unit_filter(psf: np.ndarray) -> np.ndarray:
    """The PSF scaled so that white unit noise correlated with it has unit variance."""
    p = np.asarray(psf, dtype=np.float64)
    return p / math.sqrt(float((p * p).sum()))


def local_maxima(m: np.ndarray, size: int = 3, floor: float = -math.inf) -> np.ndarray:
    """Mask of the pixels that are the maximum of their ``size``² neighbourhood and ≥ ``floor``:
    what counts as one peak (one candidate) of a filtered image, here and in
    bench/detection_limit.py."""
    return (m >= floor) & (m == ndimage.maximum_filter(m, size=size))


def noise_peaks(
    psf: np.ndarray, mpix: float = SIM_MPIX, seed: int = 0, floor: float = FIT_LEVEL
) -> tuple[np.ndarray, float]:
    """Values of the local maxima (3×3) ≥ ``floor`` of white unit noise correlated with ``psf``
    (unit variance), over ``mpix`` megapixels in 1024² tiles, and the area searched (10⁶ px;
    a rim of the PSF's half-size is excluded from each tile)."""
    rng = np.random.default_rng([int(seed), 0x1DEA1])
    kernel = unit_filter(psf)[::-1, ::-1].astype(np.float32)  # correlation = convolution with the flip
    rim = kernel.shape[0] // 2 + 1
    values, area = [], 0
    for _ in range(max(1, math.ceil(mpix * 2**20 / _TILE**2))):
        noise = rng.standard_normal((_TILE, _TILE), dtype=np.float32)
        m = fftconvolve(noise, kernel, mode="same")[rim:-rim, rim:-rim]
        peaks = local_maxima(m, 3, floor)
        values.append(m[peaks])
        area += m.size
    return np.concatenate(values).astype(np.float64), area / 1e6


@dataclass(frozen=True)
class NoisePeakRate:
    """Local maxima per Mpix of the PSF-filtered unit noise above ``t`` (``t ≥ FIT_LEVEL``):
    ``rate(t) = r0 · (t / t0) · exp(-a (t² - t0²) / 2)`` with ``t0 = FIT_LEVEL``, ``r0`` the
    simulated rate at ``t0`` and ``a`` the maximum-likelihood fit to the simulated peak heights
    above ``t0`` (``a = 1`` is the continuous field's Euler-characteristic tail; pixelisation
    makes it 0.95–1.15, depending on the PSF's width)."""

    rate_at_fit_level: float  # r0, per Mpix
    steepness: float  # a

    @classmethod
    def simulate(cls, psf: np.ndarray, mpix: float = SIM_MPIX, seed: int = 0) -> NoisePeakRate:
        values, area = noise_peaks(psf, mpix, seed)
        t0 = FIT_LEVEL
        v2 = values * values

        def nll(a: float) -> float:
            # density of peak heights above t0 implied by the survival curve above
            dens = (a * v2 - 1.0) * np.exp(-0.5 * a * (v2 - t0 * t0)) / t0
            return -float(np.sum(np.log(np.maximum(dens, 1e-300))))

        a = (
            float(optimize.minimize_scalar(nll, bounds=(0.7, 1.5), method="bounded").x)
            if len(values)
            else 1.0
        )
        return cls(rate_at_fit_level=max(len(values), 1) / area, steepness=a)

    def rate(self, t: float) -> float:
        t0 = FIT_LEVEL
        return self.rate_at_fit_level * (t / t0) * math.exp(-0.5 * self.steepness * (t * t - t0 * t0))

    def threshold(self, rate: float) -> float:
        """``t*``: the level whose noise-peak rate per Mpix is ``rate`` (bisection over [2, 12],
        where the curve falls monotonically). Below FIT_LEVEL (rates of hundreds per Mpix, e.g.
        a 5σ matched filter's) the fitted curve is extrapolated: approximate there."""
        rate = max(float(rate), 1e-3)
        lo, hi = 2.0, 12.0
        if self.rate(lo) <= rate:
            return lo
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.rate(mid) > rate else (lo, mid)
        return 0.5 * (lo + hi)


def ideal_recall(snr_local: Any, t_star: Any) -> np.ndarray:
    """``P(N(snr_local, 1) > t*)``, elementwise."""
    return ndtr(np.asarray(snr_local, dtype=np.float64) - np.asarray(t_star, dtype=np.float64))


# -- host classes --------------------------------------------------------------------------------


def _moment(cut: np.ndarray, sigma: float) -> float:
    """Gaussian-weighted (σ = ``sigma``) mean squared radius of ``cut`` about its centre pixel."""
    h = cut.shape[0] // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1].astype(np.float64)
    r2 = xx * xx + yy * yy
    w = np.clip(cut, 0.0, None) * np.exp(-0.5 * r2 / (sigma * sigma))
    total = float(w.sum())
    return float((w * r2).sum() / total) if total > 0 else 0.0


def _fwhm(psf: np.ndarray) -> float:
    """FWHM (px) of a centred PSF stamp, from the area above half its maximum."""
    p = np.asarray(psf, dtype=np.float64)
    return 2.0 * math.sqrt(float((p >= 0.5 * p.max()).sum()) / math.pi)


def host_measures(
    reference: np.ndarray,
    reference_psf: np.ndarray,
    science_psf: np.ndarray,
    diff_sigma: float,
    reference_sigma: float,
    xs: Any,
    ys: Any,
    background: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per position: ``host_snr`` (reference PSF-weighted flux under it over that flux's noise
    in the difference), ``density`` (reference sources ≥ 5σ per science beam within
    ``max(24, 8 FWHM)`` px) and ``extent`` (host's second moment / the reference PSF's)."""
    from astrid.imaging.synthetic import mesh_background

    ref = np.asarray(reference, dtype=np.float64)
    bkg = mesh_background(ref.astype(np.float32)) if background is None else background
    sub = ref - bkg
    p_ref = np.asarray(reference_psf, dtype=np.float64)
    p_sci = np.asarray(science_psf, dtype=np.float64)
    # PSF-weighted flux estimate at every pixel (science PSF: the transient's weights)
    flux_map = fftconvolve(sub, p_sci[::-1, ::-1], mode="same") / float((p_sci * p_sci).sum())
    flux_noise = diff_sigma / math.sqrt(float((p_sci * p_sci).sum()))
    # reference sources: local maxima of its own matched filter at ≥ 5σ
    sig = fftconvolve(sub, unit_filter(p_ref)[::-1, ::-1], mode="same") / reference_sigma
    fwhm_r = _fwhm(p_ref)
    size = max(3, round(fwhm_r) | 1)
    src = local_maxima(sig, size, 5.0)
    sr, sc = np.nonzero(src)
    fwhm_s = _fwhm(p_sci)
    radius = max(24.0, 8.0 * fwhm_s)
    beam = 1.0 / float((p_sci * p_sci).sum())
    half = max(3, math.ceil(2.0 * fwhm_r))
    psf_moment = _moment(_centre_cut(p_ref, half), fwhm_r)
    h, w = ref.shape
    host_snr, density, extent = [], [], []
    for x, y in zip(np.atleast_1d(xs), np.atleast_1d(ys), strict=True):
        r, c = round(float(y)), round(float(x))
        host_snr.append(float(flux_map[r, c]) / flux_noise)
        near = (sr - y) ** 2 + (sc - x) ** 2 <= radius * radius
        density.append(int(near.sum()) * beam / (math.pi * radius * radius))
        # the host's brightest pixel within 1.5 FWHM, then its size there
        k = max(1, math.ceil(1.5 * fwhm_r))
        r0, r1, c0, c1 = max(r - k, 0), min(r + k + 1, h), max(c - k, 0), min(c + k + 1, w)
        win = sub[r0:r1, c0:c1]
        pr, pc = np.unravel_index(int(np.argmax(win)), win.shape)
        pr, pc = pr + r0, pc + c0
        if half <= pr < h - half and half <= pc < w - half:
            cut = sub[pr - half : pr + half + 1, pc - half : pc + half + 1]
            extent.append(_moment(cut, fwhm_r) / psf_moment if psf_moment > 0 else 1.0)
        else:
            extent.append(float("nan"))
    return {
        "host_snr": np.asarray(host_snr),
        "density": np.asarray(density),
        "extent": np.asarray(extent),
    }


def _centre_cut(stamp: np.ndarray, half: int) -> np.ndarray:
    m = stamp.shape[0] // 2
    return stamp[m - half : m + half + 1, m - half : m + half + 1]


def classify_hosts(measures: dict[str, np.ndarray]) -> list[str]:
    """The host class of each position (see the module docstring for the definition)."""
    out = []
    for snr, dens, ext in zip(measures["host_snr"], measures["density"], measures["extent"], strict=True):
        if dens >= CROWDED_PER_BEAM:
            out.append("crowded")
        elif snr < HOST_SIGMA:
            out.append("blank")
        elif np.isfinite(ext) and ext >= EXTENDED_RATIO:
            out.append("galaxy")
        else:
            out.append("star")
    return out


def host_classes(obs: Any) -> list[str]:
    """Host class of every truth transient of a synthetic-style observation (needs ``reference``,
    ``reference_psf``, ``psf`` and ``params['diff_sigma']``/``params['reference_sigma']``)."""
    if not obs.truth:
        return []
    m = host_measures(
        obs.reference,
        obs.reference_psf,
        obs.psf,
        float(obs.params["diff_sigma"]),
        float(obs.params["reference_sigma"]),
        [t.x for t in obs.truth],
        [t.y for t in obs.truth],
    )
    return classify_hosts(m)
