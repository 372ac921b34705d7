"""Deterministic synthetic survey: science/reference/difference triplets with transient truth.

``make_observation(seed)`` renders one observation from an integer seed; the same seed always
gives bit-identical arrays. Each knob (keyword argument) left at ``None`` is drawn from the seed,
so a training set built from ``range(n)`` seeds spans the whole parameter space, and fixing one
knob does not reshuffle the others (every default is drawn in a fixed order).

What is simulated
-----------------
* **PSF**: an elliptical Moffat (beta 2.5–4.5, FWHM 2–6 px, ellipticity ≤ 0.12), integrated over
  pixels (5× super-sampling). The reference has its own, sharper PSF (it is a coadd from better
  seeing) and its own beta/ellipticity.
* **Scene**: stars with a power-law luminosity function ``N(>F) ∝ F^-lf_slope`` from below the
  noise up to far past saturation (``crowded=True`` for a Galactic-plane density), galaxies with
  Sérsic profiles (n 0.5–4, exponential discs and de Vaucouleurs bulges, axis ratio 0.25–1).
  Every point source goes through the same renderer (Lanczos-3 sub-pixel placement, then FFT
  convolution with the PSF), so transients, stars and hosts share exactly one PSF per image.
* **Science**: sky with a linear + quadratic gradient, Poisson (via the gain) + read noise,
  saturation at ``SATURATE`` with vertical bleed trails, cosmic rays (sharp tracks, science only),
  hot pixels, bad columns, optional satellite trail, a few stars that faded since the reference.
* **Reference**: the same scene, deeper (noise / ``reference_depth``), sharper, its own sky,
  shifted by a sub-pixel misregistration, a few hot pixels of its own.
* **Difference**: ``(science - bkg) - (1 + flux_scale_error) * K ⊗ (reference - bkg)`` where the
  backgrounds are 64-px mesh medians (as SExtractor does) and ``K`` is a regularised Fourier
  matching kernel fitted to a slightly *wrong* science PSF model (``psf_mismatch``) and to the
  reference PSF *without* the misregistration. So it leaves what real subtractions leave: rings
  and dipoles at bright stars, flux-scale residuals, saturated cores and bleeds, cosmic rays, hot
  pixels and bad columns, background residuals near extended sources.

Truth
-----
Each observation's transients are :class:`astrid.imaging.truth.InjectedTransient` (position,
flux, ``snr`` and ``snr_local`` as defined there). Transients lie at least ``edge_margin`` (≥ 8)
px from the frame edge, at least ``max(12, 4 FWHM)`` px from each other, and never on a saturated
or bleed region (a transient whose host landed there is dropped, so ``len(truth)`` can be a
little below ``n_transients``). Hosts: ``star`` transients sit exactly on a star (science SNR
8–100) and ``galaxy`` ones within ~1 r_e of a Sérsic galaxy's nucleus; their subtraction
residual (misregistration, PSF mismatch, flux-scale error) is *not* part of ``snr``, exactly as
in real data. ``blank`` ones sit where the noiseless scene is below ~0.5σ.

Speed: a 2048² observation takes about 1 s on one core (1–1.5 s for crowded fields); the cost
is three full-frame FFT convolutions, the Poisson draw and the two background meshes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from scipy import fft as sfft
from scipy import ndimage
from scipy.signal import fftconvolve

from astrid.imaging.truth import HOSTS, InjectedTransient, local_snr, write_truth
from astrid.storage import to_path

__all__ = [
    "KNOBS",
    "SyntheticObservation",
    "add_stamp",
    "difference_image",
    "difference_sigma",
    "inject_point",
    "make_observation",
    "make_wcs",
    "matching_kernel",
    "mesh_background",
    "moffat_stamp",
    "observe",
    "pixel_variances",
    "point_stamp",
    "training_knobs",
    "write_observation",
]

GENERATOR_VERSION = 2  # bump whenever a seed renders differently
_MPX = 1024.0 * 1024.0  # densities are per 1024×1024 px


@dataclass
class SyntheticObservation:
    """A rendered observation. ``psf`` is the science PSF stamp (sum 1, centred on its middle
    pixel); ``params`` holds every knob actually used plus derived numbers (e.g. ``diff_sigma``,
    the typical per-pixel noise of the difference image in ADU)."""

    science: np.ndarray
    reference: np.ndarray
    difference: np.ndarray
    header: fits.Header
    truth: list[InjectedTransient]
    wcs: WCS
    psf: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)
    reference_psf: np.ndarray | None = None  # the reference's PSF stamp (sum 1), as ``psf``

    @property
    def shape(self) -> tuple[int, int]:
        return self.science.shape  # type: ignore[return-value]

    def reference_header(self) -> fits.Header:
        h = self.header.copy()
        h["IMAGETYP"] = ("REFERENCE", "deep reference (coadd)")
        h["FWHM"] = (round(self.params["reference_fwhm"], 4), "[pix] PSF FWHM of this image")
        h["SEEING"] = (round(self.params["reference_fwhm"] * self.params["pixscale"], 4), "[arcsec] PSF FWHM")
        h["PSFBETA"] = (round(self.params["reference_beta"], 4), "Moffat beta of this image's PSF")
        h["SKYLEVEL"] = (round(self.params["reference_sky"], 3), "[ADU] mean sky level")
        h["SKYSIG"] = (round(self.params["reference_sigma"], 4), "[ADU] sky noise per pixel")
        return h

    def difference_header(self) -> fits.Header:
        h = self.header.copy()
        h["IMAGETYP"] = ("DIFFERENCE", "science - PSF-matched reference")
        h["SKYLEVEL"] = (0.0, "[ADU] background subtracted")
        h["SKYSIG"] = (round(self.params["diff_sigma"], 4), "[ADU] difference noise per pixel")
        return h


# --------------------------------------------------------------------------------------------
# knobs

KNOBS: dict[str, str] = {
    "n_transients": "number of transients (default ~15-40 per 1024² px, at least 3)",
    "snr_range": "(min, max) optimal SNR; default (3, 50): 60% uniform in 4.5-10, 40% log-uniform",
    "host_fractions": "(blank, star, galaxy) probabilities; default ~(0.5, 0.2, 0.3)",
    "seeing_fwhm": "science PSF FWHM in pixels (default 2-6)",
    "reference_fwhm": "reference PSF FWHM in pixels (default 0.6-0.9 × seeing, ≥ 1.6)",
    "psf_beta": "science Moffat beta (default 2.5-4.5)",
    "reference_beta": "reference Moffat beta (default 2.5-4.5)",
    "psf_ellipticity": "science PSF ellipticity 1-b/a (default 0-0.12)",
    "sky_level": "science sky in ADU (default 100-3000, log-uniform)",
    "sky_gradient": "fractional sky change across the frame (default 0-0.15)",
    "gain": "e-/ADU (default 0.8-3)",
    "read_noise": "read noise in e- (default 3-12)",
    "saturate": "saturation level in ADU (default 30000-65000)",
    "reference_depth": "reference noise is science noise / depth (default 2-4)",
    "crowded": "Galactic-plane star density (default: 10% of seeds)",
    "star_density": "stars per 1024² px above ~0.5σ (default 1000-6000, crowded 15000-40000)",
    "galaxy_fraction": "fraction of field sources that are galaxies (default 0.05-0.35)",
    "lf_slope": "alpha of N(>F) ∝ F^-alpha for stars (default 0.5-0.9)",
    "cosmic_ray_rate": "cosmic rays per 1024² px on the science (default 5-40)",
    "hot_pixel_rate": "hot pixels per 1024² px on the science (default 5-50)",
    "n_bad_columns": "bad (dead or hot) columns on the science (default 0-2 per 1024 px of width)",
    "satellite_trails": "number of satellite trails on the science (default 0, 1 for ~8% of seeds)",
    "fader_rate": "stars per 1024² px that faded since the reference (default 0-4)",
    "misregistration": "sub-pixel shift of the reference in px (default 0-0.3)",
    "psf_mismatch": "fractional error of the PSF model used for matching (default 0-0.04)",
    "flux_scale_error": "photometric scale error of the subtraction (default N(0, 0.003))",
    "pixscale": "arcsec/px (default 0.25-1.2)",
    "edge_margin": "transients keep this many px from the edges (default 12, minimum 8)",
    # realism options (issue 19): off by default and drawn from their own stream, so every seed
    # renders exactly as before unless one is turned on
    "host_profile": "'sersic' (default: one Sérsic per host) or 'bulge_disc' (bulge + disc + nucleus, "
    "transients following the light)",
    "diffraction_spikes": "four spikes on stars above 20%% of saturation (default False)".replace("%%", "%"),
    "host_flux_range": "(min, max) total flux of galaxy hosts in units of the SNR-1 flux (default (60, 600))",
    "nebulosity": "peak of a structured (filamentary) background in sky σ, same in both images (default 0)",
}


def _draw_knobs(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Every default, drawn in a fixed order (so overriding one knob changes nothing else)."""
    area = size * size / _MPX
    crowded = bool(rng.random() < 0.10)
    density_normal = float(np.exp(rng.uniform(np.log(1000), np.log(6000))))
    density_crowded = float(np.exp(rng.uniform(np.log(15000), np.log(40000))))
    seeing = float(rng.uniform(2.0, 6.0))
    ref_ratio = float(rng.uniform(0.6, 0.9))
    blank = float(rng.uniform(0.4, 0.6))
    star = float(rng.uniform(0.15, 0.3))
    d: dict[str, Any] = {
        "n_transients": max(3, round(rng.uniform(15, 40) * area)),
        "snr_range": (3.0, 50.0),
        "host_fractions": (blank, star, max(0.0, 1.0 - blank - star)),
        "seeing_fwhm": seeing,
        "_ref_ratio": ref_ratio,
        "psf_beta": float(rng.uniform(2.5, 4.5)),
        "reference_beta": float(rng.uniform(2.5, 4.5)),
        "psf_ellipticity": float(rng.uniform(0.0, 0.12)),
        "_reference_ellipticity": float(rng.uniform(0.0, 0.08)),
        "_psf_angle": float(rng.uniform(0, np.pi)),
        "_reference_angle": float(rng.uniform(0, np.pi)),
        "sky_level": float(np.exp(rng.uniform(np.log(100), np.log(3000)))),
        "sky_gradient": float(rng.uniform(0.0, 0.15)),
        "gain": float(rng.uniform(0.8, 3.0)),
        "read_noise": float(rng.uniform(3.0, 12.0)),
        "saturate": float(rng.uniform(30000, 65000)),
        "reference_depth": float(rng.uniform(2.0, 4.0)),
        "crowded": crowded,
        "_density_normal": density_normal,
        "_density_crowded": density_crowded,
        "galaxy_fraction": float(rng.uniform(0.05, 0.35)),
        "lf_slope": float(rng.uniform(0.5, 0.9)),
        "cosmic_ray_rate": float(rng.uniform(5, 40)),
        "hot_pixel_rate": float(rng.uniform(5, 50)),
        "n_bad_columns": int(rng.integers(0, 2 * max(1, round(size / 1024)) + 1)),
        "satellite_trails": int(rng.random() < 0.08),
        "fader_rate": float(rng.uniform(0, 4)),
        "misregistration": float(rng.uniform(0.0, 0.3)),
        "psf_mismatch": float(rng.uniform(0.0, 0.04)),
        "flux_scale_error": float(rng.normal(0.0, 0.003)),
        "pixscale": float(rng.uniform(0.25, 1.2)),
        "edge_margin": 12,
        "host_profile": "sersic",
        "diffraction_spikes": False,
        "nebulosity": 0.0,
        "host_flux_range": (60.0, 600.0),
    }
    return d


def training_knobs(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Knob overrides for one training frame: extra variation on top of the generator's own
    per-seed draws (wider than the survey defaults: more crowded fields, larger misregistration
    and PSF mismatch, more cosmic rays, trails and faders, more and fainter transients), so a
    model does not learn one generator's exact settings. Each override applies to a random subset
    of frames (an absent knob keeps the generator's default), so the survey-default distribution
    is still well represented. Used by ``astrid.ml.train`` and by ``astrid evaluate --varied``.
    """
    area = size * size / _MPX
    k: dict[str, Any] = {
        "n_transients": int(max(3, round(rng.uniform(30, 110) * area))),  # more positives per frame
        "snr_range": (2.0, 60.0) if rng.random() < 0.3 else None,  # some sub-threshold examples
        "crowded": True if rng.random() < 0.25 else None,
        "misregistration": float(rng.uniform(0.2, 0.6)) if rng.random() < 0.25 else None,
        "psf_mismatch": float(rng.uniform(0.04, 0.10)) if rng.random() < 0.25 else None,
        "cosmic_ray_rate": float(rng.uniform(40, 120)) if rng.random() < 0.25 else None,
        "satellite_trails": int(rng.integers(1, 3)) if rng.random() < 0.15 else None,
        "fader_rate": float(rng.uniform(4, 12)) if rng.random() < 0.25 else None,
        "n_bad_columns": int(rng.integers(1, 4)) if rng.random() < 0.2 else None,
        "psf_ellipticity": float(rng.uniform(0.1, 0.25)) if rng.random() < 0.15 else None,
    }
    return {name: value for name, value in k.items() if value is not None}


def _resolve_knobs(rng: np.random.Generator, size: int, given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(KNOBS))
    if unknown:
        raise TypeError(f"unknown synthetic-survey knob(s) {unknown}: valid knobs are {sorted(KNOBS)}")
    k = _draw_knobs(rng, size)
    for name, value in given.items():
        if value is not None:
            k[name] = value
    if given.get("reference_fwhm") is None:
        k["reference_fwhm"] = max(1.6, k["seeing_fwhm"] * k.pop("_ref_ratio"))
    else:
        k.pop("_ref_ratio")
    if given.get("star_density") is None:
        k["star_density"] = k["_density_crowded"] if k["crowded"] else k["_density_normal"]
    k.pop("_density_normal")
    k.pop("_density_crowded")

    def check(cond: bool, name: str, what: str) -> None:
        if not cond:
            raise ValueError(f"synthetic knob {name}={k[name]!r} is invalid: {what}")

    lo, hi = (float(v) for v in k["snr_range"])
    k["snr_range"] = (lo, hi)
    check(0 < lo <= hi, "snr_range", "need 0 < min <= max")
    fr = np.asarray(k["host_fractions"], dtype=float)
    check(
        fr.shape == (3,) and bool(np.all(fr >= 0)) and fr.sum() > 0,
        "host_fractions",
        "three non-negative weights",
    )
    k["host_fractions"] = tuple(float(v) for v in fr / fr.sum())
    check(int(k["n_transients"]) >= 0, "n_transients", "must be >= 0")
    k["n_transients"] = int(k["n_transients"])
    check(1.0 <= k["seeing_fwhm"] <= 20.0, "seeing_fwhm", "FWHM in pixels between 1 and 20")
    check(
        1.0 <= k["reference_fwhm"] <= k["seeing_fwhm"],
        "reference_fwhm",
        "between 1 px and seeing_fwhm (the reference is matched *to* the science)",
    )
    for name in ("psf_beta", "reference_beta"):
        check(1.5 <= k[name] <= 10.0, name, "Moffat beta between 1.5 and 10")
    check(0.0 <= k["psf_ellipticity"] < 0.6, "psf_ellipticity", "between 0 and 0.6")
    for name in ("sky_level", "gain", "saturate", "reference_depth", "pixscale"):
        check(k[name] > 0, name, "must be > 0")
    for name in (
        "read_noise",
        "sky_gradient",
        "cosmic_ray_rate",
        "hot_pixel_rate",
        "fader_rate",
        "misregistration",
        "psf_mismatch",
        "star_density",
    ):
        check(k[name] >= 0, name, "must be >= 0")
    check(0.0 <= k["galaxy_fraction"] < 1.0, "galaxy_fraction", "between 0 and 1 (exclusive)")
    check(k["lf_slope"] > 0, "lf_slope", "must be > 0")
    check(int(k["edge_margin"]) >= 8, "edge_margin", "at least 8 px")
    check(int(k["edge_margin"]) * 2 < size, "edge_margin", "leaves no room in the frame")
    check(k["host_profile"] in ("sersic", "bulge_disc"), "host_profile", "'sersic' or 'bulge_disc'")
    check(float(k["nebulosity"]) >= 0, "nebulosity", "must be >= 0")
    hlo, hhi = (float(v) for v in k["host_flux_range"])
    k["host_flux_range"] = (hlo, hhi)
    check(0 < hlo <= hhi, "host_flux_range", "need 0 < min <= max")
    k["diffraction_spikes"] = bool(k["diffraction_spikes"])
    for name in ("n_bad_columns", "satellite_trails", "edge_margin"):
        check(int(k[name]) >= 0, name, "must be >= 0")
        k[name] = int(k[name])
    k["crowded"] = bool(k["crowded"])
    return k


# --------------------------------------------------------------------------------------------
# rendering primitives


def moffat_stamp(
    radius: int, fwhm: float, beta: float, ell: float, angle: float, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """Pixel-integrated (5× super-sampled) elliptical Moffat on a (2r+1)² stamp, sum 1,
    centred at (r + dx, r + dy)."""
    os_ = 5
    n = 2 * radius + 1
    sub = (np.arange(n * os_) + 0.5) / os_ - 0.5 - radius
    x = sub[None, :] - dx
    y = sub[:, None] - dy
    q = 1.0 - ell
    c, s = math.cos(angle), math.sin(angle)
    u = x * c + y * s
    v = -x * s + y * c
    alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    r2 = (u * u * q + v * v / q) / (alpha * alpha)
    img = (1.0 + r2) ** (-beta)
    img = img.reshape(n, os_, n, os_).mean(axis=(1, 3))
    return img / img.sum()


def _lanczos_weights(frac: np.ndarray) -> np.ndarray:
    """(N, 6) Lanczos-3 weights for taps at offsets -2..3 from floor(position)."""
    t = np.arange(-2, 4)[None, :] - frac[:, None]
    w = np.sinc(t) * np.sinc(t / 3.0)
    return w / w.sum(axis=1, keepdims=True)


def _splat(canvas: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, offset: int) -> None:
    """Add point sources (frame coords + offset = canvas coords) with Lanczos-3 sub-pixel
    placement; after PSF convolution this is a sub-pixel-shifted PSF."""
    if len(x) == 0:
        return
    h, w = canvas.shape
    cx = np.asarray(x, dtype=float) + offset
    cy = np.asarray(y, dtype=float) + offset
    ix = np.floor(cx).astype(np.int64)
    iy = np.floor(cy).astype(np.int64)
    wx = _lanczos_weights(cx - ix)
    wy = _lanczos_weights(cy - iy)
    taps = np.arange(-2, 4)
    cols = ix[:, None] + taps[None, :]
    rows = iy[:, None] + taps[None, :]
    weights = np.asarray(flux, dtype=float)[:, None, None] * wy[:, :, None] * wx[:, None, :]
    rr = np.broadcast_to(rows[:, :, None], weights.shape)
    cc = np.broadcast_to(cols[:, None, :], weights.shape)
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    idx = rr[ok] * w + cc[ok]
    canvas += np.bincount(idx, weights=weights[ok], minlength=h * w).reshape(h, w).astype(canvas.dtype)


def point_stamp(psf: np.ndarray, x: float, y: float) -> tuple[np.ndarray, int, int]:
    """Unit-flux point source at frame position (x, y) rendered exactly as :func:`_splat` +
    convolution would: returns (stamp, row0, col0) with the stamp's top-left frame pixel."""
    r = psf.shape[0] // 2
    ix, iy = math.floor(x), math.floor(y)
    wx = _lanczos_weights(np.array([x - ix]))[0]
    wy = _lanczos_weights(np.array([y - iy]))[0]
    stamp = fftconvolve(np.outer(wy, wx), psf, mode="full")
    return stamp, iy - 2 - r, ix - 2 - r


def add_stamp(image: np.ndarray, stamp: np.ndarray, row0: int, col0: int, scale: float = 1.0) -> None:
    """Add ``scale * stamp`` to ``image`` in place with its top-left pixel at (row0, col0),
    clipped to the image."""
    h, w = image.shape
    sh, sw = stamp.shape
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + sh, h), min(col0 + sw, w)
    if r1 <= r0 or c1 <= c0:
        return
    image[r0:r1, c0:c1] += scale * stamp[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]


def _sersic_b(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)


def _add_galaxy(
    canvas: np.ndarray,
    x: float,
    y: float,
    flux: float,
    re: float,
    n: float,
    q: float,
    angle: float,
    offset: int,
) -> None:
    """Intrinsic (pre-PSF) Sérsic profile, normalised to ``flux`` over its stamp."""
    radius = int(min(64, math.ceil(re * (4.0 + 1.5 * n)) + 2))
    cx, cy = x + offset, y + offset
    ix, iy = round(cx), round(cy)
    yy = np.arange(iy - radius, iy + radius + 1, dtype=np.float64)[:, None] - cy
    xx = np.arange(ix - radius, ix + radius + 1, dtype=np.float64)[None, :] - cx
    c, s = math.cos(angle), math.sin(angle)
    u = xx * c + yy * s
    v = yy * c - xx * s
    r = np.sqrt(u * u * q + v * v / q + 0.09)  # 0.3 px core softening (pixel integration)
    prof = np.exp(-_sersic_b(n) * ((r / re) ** (1.0 / n) - 1.0))
    total = prof.sum()
    if total <= 0 or not np.isfinite(total):
        return
    add_stamp(canvas, (flux / total) * prof, iy - radius, ix - radius)


def _sky(shape: tuple[int, int], level: float, gradient: float, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    gx, gy = rng.normal(size=2)
    gq = rng.normal(size=3) * 0.5
    norm = math.hypot(gx, gy) + abs(gq).sum() + 1e-12
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    frac = (gx * x + gy * y + gq[0] * x * x + gq[1] * y * y + gq[2] * x * y) * (gradient / (2 * norm))
    return (level * (1.0 + frac)).astype(np.float32)


def mesh_background(img: np.ndarray, box: int = 64) -> np.ndarray:
    """SExtractor-like background: mesh medians, 3×3 median-filtered, bilinearly interpolated."""
    h, w = img.shape
    ny, nx = max(1, round(h / box)), max(1, round(w / box))
    ey = np.linspace(0, h, ny + 1).astype(int)
    ex = np.linspace(0, w, nx + 1).astype(int)
    grid = np.empty((ny, nx), dtype=np.float64)
    for i in range(ny):
        band = img[ey[i] : ey[i + 1]]
        for j in range(nx):
            grid[i, j] = np.median(band[:, ex[j] : ex[j + 1]])
    if ny >= 3 and nx >= 3:
        grid = ndimage.median_filter(grid, size=3, mode="nearest")

    def interp_matrix(n_out: int, edges: np.ndarray) -> np.ndarray:
        centres = 0.5 * (edges[:-1] + edges[1:]) - 0.5
        m = np.zeros((n_out, len(centres)))
        pos = np.arange(n_out, dtype=float)
        if len(centres) == 1:
            m[:, 0] = 1.0
            return m
        k = np.clip(np.searchsorted(centres, pos) - 1, 0, len(centres) - 2)
        t = np.clip((pos - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
        m[np.arange(n_out), k] = 1 - t
        m[np.arange(n_out), k + 1] = t
        return m

    return (interp_matrix(h, ey) @ grid @ interp_matrix(w, ex).T).astype(np.float32)


def matching_kernel(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Regularised Fourier kernel K with K ⊗ source ≈ target (both centred stamps, same size)."""
    n = target.shape[0]
    m = sfft.next_fast_len(2 * n)
    t = np.zeros((m, m))
    s = np.zeros((m, m))
    t[:n, :n] = target
    s[:n, :n] = source
    t = np.roll(t, (-(n // 2), -(n // 2)), axis=(0, 1))
    s = np.roll(s, (-(n // 2), -(n // 2)), axis=(0, 1))
    ft, fs = sfft.rfft2(t), sfft.rfft2(s)
    power = (fs * fs.conj()).real
    k = sfft.irfft2(ft * fs.conj() / (power + 1e-5 * power.max()), s=(m, m))
    k = np.roll(k, (n // 2, n // 2), axis=(0, 1))[:n, :n]
    return k / k.sum()


def _conv_same(canvas: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return fftconvolve(canvas, kernel.astype(np.float32), mode="same")


def _bulge_disc_host(
    rng: np.random.Generator, flux: float, q: float, angle: float
) -> tuple[list[tuple[float, float, float, float]], float, tuple[float, float]]:
    """A bulge + exponential disc + compact nucleus host of total ``flux``: its components
    ``(flux, r_e, n, q)``, the nucleus' point flux, and the transient's offset from the nucleus,
    drawn *following the light* (15 % exactly nuclear). For a Sérsic profile ``x = b_n
    (r / r_e)^(1/n)`` of the enclosed light is Gamma(2n)-distributed, so the radius is drawn
    exactly, then projected with the component's axis ratio and angle."""
    re_disc = math.exp(rng.uniform(math.log(2.0), math.log(9.0)))
    bt = rng.uniform(0.1, 0.6)  # bulge-to-total
    nuc = flux * rng.uniform(0.0, 0.08) if rng.random() < 0.5 else 0.0
    re_bulge = re_disc * rng.uniform(0.15, 0.4)
    q_bulge = min(1.0, q + rng.uniform(0.2, 0.5))
    rest = flux - nuc
    comps = [(rest * (1 - bt), re_disc, 1.0, q), (rest * bt, re_bulge, 4.0, q_bulge)]
    if rng.random() < 0.15:
        return comps, nuc, (0.0, 0.0)
    _, re_c, n_c, q_c = comps[0] if rng.random() < 1 - bt else comps[1]
    r = re_c * (rng.gamma(2.0 * n_c) / _sersic_b(n_c)) ** n_c
    phi = rng.uniform(0, 2 * np.pi)
    u, v = r * math.cos(phi) / math.sqrt(q_c), r * math.sin(phi) * math.sqrt(q_c)
    c, s = math.cos(angle), math.sin(angle)
    return comps, nuc, (float(np.clip(u * c - v * s, -40, 40)), float(np.clip(u * s + v * c, -40, 40)))


def _add_spikes(
    scene_s: np.ndarray,
    scene_r: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    fluxes: np.ndarray,
    min_flux: float,
    fwhm: float,
    rng: np.random.Generator,
) -> None:
    """Four diffraction spikes (intensity ∝ flux / distance², length ∝ sqrt(flux)) on every
    star above ``min_flux``; the reference's are rotated by a small field rotation and a little
    weaker or stronger, so the subtraction leaves spike residuals as real ones do."""
    theta = rng.uniform(0, np.pi / 2)
    rotation = math.radians(rng.uniform(-1.5, 1.5))
    strength = 3e-3 * rng.uniform(0.5, 1.5)
    ref_ratio = rng.uniform(0.8, 1.2)
    bright = np.nonzero(fluxes > min_flux)[0]
    for img, rot, amp in ((scene_s, 0.0, strength), (scene_r, rotation, strength * ref_ratio)):
        px, py, pv = [], [], []
        for j in bright:
            length = min(400.0, 2.0 * fwhm * math.sqrt(fluxes[j] / min_flux))
            d = np.arange(fwhm, length, 0.5)
            val = 0.5 * amp * fluxes[j] * (fwhm / d) ** 2 / fwhm
            for arm in range(4):
                ang = theta + rot + arm * np.pi / 2
                px.append(xs[j] + d * math.cos(ang))
                py.append(ys[j] + d * math.sin(ang))
                pv.append(val)
        if px:
            _bilinear_add(img, np.concatenate(px), np.concatenate(py), np.concatenate(pv))


def _nebulosity(shape: tuple[int, int], peak: float, rng: np.random.Generator) -> np.ndarray:
    """A filamentary background (squared Gaussian random field, scales 20–150 px) peaking at ``peak``."""
    scale = rng.uniform(20.0, 150.0)
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale, mode="wrap")
    field_ = np.maximum(field_ / max(float(field_.std()), 1e-12), 0.0) ** 2
    return (peak * field_ / max(float(field_.max()), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# the generator


@dataclass
class _Streams:
    """One independent random stream per component of the simulation, so overriding one knob (or
    turning on a realism option) never reshuffles another component's draws. The order of the
    spawned streams is part of what a seed means: never reorder them."""

    knob: np.random.Generator
    star: np.random.Generator
    gal: np.random.Generator
    tr: np.random.Generator
    noise: np.random.Generator
    meta: np.random.Generator
    sky: np.random.Generator
    bleed: np.random.Generator
    fade: np.random.Generator
    cr: np.random.Generator
    hot: np.random.Generator
    col: np.random.Generator
    trail: np.random.Generator
    refhot: np.random.Generator
    # realism options only (the spawned stream between refhot and host is unused)
    host: np.random.Generator
    spike: np.random.Generator
    neb: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int) -> _Streams:
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0xA57D]).spawn(18)]
        return cls(*streams[:14], *streams[15:18])


@dataclass
class _Optics:
    """The PSFs of one observation, the subtraction's matching kernel, and the flux scales that
    follow from the science PSF and sky (what every later stage sizes its sources by)."""

    radius: int  # PSF stamps are (2 radius + 1)² px
    psf_s: np.ndarray  # science PSF (sum 1)
    psf_r0: np.ndarray  # reference PSF as the subtraction models it (no misregistration)
    psf_r: np.ndarray  # reference PSF as rendered (shifted by the misregistration)
    shift: tuple[float, float]
    kernel: np.ndarray  # K with K ⊗ psf_r0 ≈ the (slightly wrong) science PSF model
    kernel_power: float  # sum K²: the share of the reference's variance in the difference
    sky_sigma: float  # science sky noise per pixel (ADU)
    f_snr1: float  # flux with SNR 1 on flat sky (science)
    f_sat: float  # flux whose PSF peak reaches saturation


@dataclass
class _Field:
    """Field point sources (stars, later also the star hosts and bulge+disc nuclei) and galaxies,
    intrinsic (pre-PSF), in frame coordinates; sources up to a PSF radius outside the frame are
    included so the frame edges see their wings."""

    sx: np.ndarray
    sy: np.ndarray
    sf: np.ndarray
    n_stars: int
    gx: np.ndarray
    gy: np.ndarray
    gflux: np.ndarray
    gre: np.ndarray
    gn: np.ndarray
    gq: np.ndarray
    gang: np.ndarray


@dataclass
class _Plan:
    """The transients before rendering: host kinds, target SNRs, positions (NaN: not placed) and
    the host objects (stars, Sérsic components) the scene must contain."""

    hosts: np.ndarray
    snr_target: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    placed: np.ndarray  # (n, 2) positions taken so far (inf: none)
    margin: int
    spacing: float
    host_star: list[tuple[float, float, float]] = field(default_factory=list)
    host_gal: list[tuple[float, float, float, float, float, float, float]] = field(default_factory=list)

    def free(self, x: float, y: float) -> bool:
        """At least ``spacing`` px from every transient placed so far (their PSFs do not blend)."""
        placed = self.placed
        return bool(np.all((placed[:, 0] - x) ** 2 + (placed[:, 1] - y) ** 2 >= self.spacing**2))

    def place(self, i: int, x: float, y: float) -> None:
        self.tx[i], self.ty[i] = x, y
        self.placed[i] = x, y


def make_observation(
    seed: int,
    size: int = 2048,
    *,
    n_transients: int | None = None,
    snr_range: tuple[float, float] | None = None,
    host_fractions: tuple[float, float, float] | None = None,
    seeing_fwhm: float | None = None,
    reference_fwhm: float | None = None,
    psf_beta: float | None = None,
    reference_beta: float | None = None,
    psf_ellipticity: float | None = None,
    sky_level: float | None = None,
    sky_gradient: float | None = None,
    gain: float | None = None,
    read_noise: float | None = None,
    saturate: float | None = None,
    reference_depth: float | None = None,
    crowded: bool | None = None,
    star_density: float | None = None,
    galaxy_fraction: float | None = None,
    lf_slope: float | None = None,
    cosmic_ray_rate: float | None = None,
    hot_pixel_rate: float | None = None,
    n_bad_columns: int | None = None,
    satellite_trails: int | None = None,
    fader_rate: float | None = None,
    misregistration: float | None = None,
    psf_mismatch: float | None = None,
    flux_scale_error: float | None = None,
    pixscale: float | None = None,
    edge_margin: int | None = None,
    host_profile: str | None = None,
    diffraction_spikes: bool | None = None,
    nebulosity: float | None = None,
    host_flux_range: tuple[float, float] | None = None,
) -> SyntheticObservation:
    """Render one observation (``size``×``size`` px) from ``seed``. Knobs left at ``None`` are
    drawn from the seed; see :data:`KNOBS` for their meaning and default ranges.

    The stages, in order: PSFs and matching kernel (:func:`_optics`), field stars and galaxies
    (:func:`_field_sources`), transient hosts (:func:`_plan_transients`), the noiseless scene
    (:func:`_render_scene`, :func:`_skies`), saturation (:func:`_saturation`), blank-sky
    positions (:func:`_place_blank`), injection (:func:`inject_point`), faders, noise
    (:func:`observe`), detector artifacts, the difference (:func:`difference_image`), header."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 16384:
        raise ValueError(f"size must be an int between 64 and 16384, got {size!r}")
    size = int(size)
    given = {k: v for k, v in locals().items() if k in KNOBS}
    rng = _Streams.from_seed(seed)
    k = _resolve_knobs(rng.knob, size, given)
    gain, rn, sat = k["gain"], k["read_noise"], k["saturate"]

    optics = _optics(k, rng.meta)
    field_ = _field_sources(k, size, optics, rng.star, rng.gal)
    plan = _plan_transients(k, size, optics, rng.tr, rng.host)
    scene_s, scene_r = _render_scene(k, size, optics, field_, plan, rng)
    sky_s, sky_r, ref_sky_level = _skies(k, (size, size), rng.sky)
    model_s = sky_s + scene_s
    model_r = sky_r + scene_r
    satmask, avoid = _saturation(model_s, sat, k["seeing_fwhm"], rng.bleed)
    _place_blank(plan, scene_s, avoid, 0.5 * optics.sky_sigma, size, rng.tr)

    var_s, var_r = pixel_variances(model_s, model_r, gain, rn, k["reference_depth"])
    truth: list[InjectedTransient] = []
    for i in range(len(plan.hosts)):
        x, y = plan.tx[i], plan.ty[i]
        if not np.isfinite(x) or avoid[round(y), round(x)]:
            continue  # not placed, or its host saturated: no honest label is possible there
        truth.append(
            inject_point(
                model_s,
                optics.psf_s,
                x,
                y,
                plan.snr_target[i],
                str(plan.hosts[i]),
                var_s,
                var_r,
                optics.kernel_power,
                gain,
            )
        )
    n_faders = _add_faders(k, size, model_s, field_, optics, rng.fade)

    science, reference = observe(model_s, model_r, var_r, gain, rn, rng.noise)
    n_cr, n_hot = _science_artifacts(science, k, optics.sky_sigma, rng)
    science[satmask] = sat
    np.minimum(science, np.float32(sat), out=science)
    _reference_artifacts(reference, k, optics.sky_sigma, rng.refhot)
    np.minimum(reference, np.float32(sat), out=reference)

    difference = difference_image(science, reference, optics.kernel, 1.0 + k["flux_scale_error"])
    diff_sigma = difference_sigma(
        optics.sky_sigma, optics.kernel_power, ref_sky_level, gain, rn, k["reference_depth"]
    )
    header, wcs = _header(seed, size, k, optics, diff_sigma, len(truth), rng.meta)

    params = {
        key: (list(v) if isinstance(v, tuple) else v) for key, v in k.items() if not key.startswith("_")
    }
    params.update(
        seed=int(seed),
        size=size,
        shift=list(optics.shift),
        sky_sigma=optics.sky_sigma,
        diff_sigma=diff_sigma,
        reference_sky=ref_sky_level,
        reference_sigma=math.sqrt(ref_sky_level / gain + (rn / gain) ** 2) / k["reference_depth"],
        kernel_power=optics.kernel_power,
        n_stars=int(field_.n_stars + len(plan.host_star)),
        n_galaxies=int(len(field_.gx) + len(plan.host_gal)),
        n_cosmic_rays=int(n_cr),
        n_hot_pixels=int(n_hot),
        n_faders=n_faders,
        n_saturated_pixels=int(satmask.sum()),
    )
    return SyntheticObservation(
        science=science,
        reference=reference.astype(np.float32),
        difference=difference,
        header=header,
        truth=truth,
        wcs=wcs,
        psf=optics.psf_s.astype(np.float32),
        params=params,
        reference_psf=optics.psf_r0.astype(np.float32),
    )


# --------------------------------------------------------------------------------------------
# the stages of make_observation (each draws only from its own streams, in a fixed order)


def _optics(k: dict[str, Any], rng: np.random.Generator) -> _Optics:
    """PSF stage: the science PSF, the sharper reference PSF rendered with the misregistration,
    and the matching kernel the subtraction fits to a slightly *wrong* science PSF model
    (``psf_mismatch``) and to the reference PSF *without* the misregistration, so the difference
    keeps the residuals real subtractions keep."""
    gain, rn = k["gain"], k["read_noise"]
    fwhm_s, fwhm_r = k["seeing_fwhm"], k["reference_fwhm"]
    radius = math.ceil(max(4.5 * fwhm_s, 10.0))
    ang = rng.uniform(0, 2 * np.pi)
    shift = (k["misregistration"] * math.cos(ang), k["misregistration"] * math.sin(ang))
    psf_s = moffat_stamp(radius, fwhm_s, k["psf_beta"], k["psf_ellipticity"], k["_psf_angle"])
    psf_r0 = moffat_stamp(
        radius, fwhm_r, k["reference_beta"], k["_reference_ellipticity"], k["_reference_angle"]
    )
    psf_r = moffat_stamp(
        radius, fwhm_r, k["reference_beta"], k["_reference_ellipticity"], k["_reference_angle"], *shift
    )
    e = rng.normal(size=3)
    psf_model = moffat_stamp(
        radius,
        fwhm_s * (1.0 + k["psf_mismatch"] * e[0]),
        float(np.clip(k["psf_beta"] * (1.0 + 2.0 * k["psf_mismatch"] * e[1]), 1.6, 10.0)),
        float(np.clip(k["psf_ellipticity"] + 0.5 * k["psf_mismatch"] * e[2], 0.0, 0.5)),
        k["_psf_angle"],
    )
    kernel = matching_kernel(psf_model, psf_r0)
    sky_sigma = math.sqrt(k["sky_level"] / gain + (rn / gain) ** 2)
    n_eff = 1.0 / float((psf_s**2).sum())
    return _Optics(
        radius=radius,
        psf_s=psf_s,
        psf_r0=psf_r0,
        psf_r=psf_r,
        shift=shift,
        kernel=kernel,
        kernel_power=float((kernel**2).sum()),
        sky_sigma=sky_sigma,
        f_snr1=sky_sigma * math.sqrt(n_eff),
        f_sat=k["saturate"] / float(psf_s.max()),
    )


def _field_sources(
    k: dict[str, Any], size: int, optics: _Optics, star_rng: np.random.Generator, gal_rng: np.random.Generator
) -> _Field:
    """Scene stage 1: field stars and galaxies, intrinsic (pre-PSF). Stars follow a power law
    from half the SNR-1 flux up to far past saturation, up to 6000 per 1024² px, plus (crowded
    fields) a faint population down to the confusion limit, so crowding does not mean a sky of
    saturated stars. Galaxies are extragalactic: their density does not follow the (crowded)
    star density."""
    radius, f_sat = optics.radius, optics.f_sat
    ext = size + 2 * radius
    f_min = 0.5 * optics.f_snr1
    n_stars = star_rng.poisson(min(k["star_density"], 6000.0) * ext * ext / _MPX)
    n_faint = star_rng.poisson(max(0.0, k["star_density"] - 6000.0) * ext * ext / _MPX)
    sx = star_rng.uniform(-radius, size + radius, n_stars + n_faint)
    sy = star_rng.uniform(-radius, size + radius, n_stars + n_faint)
    sf = f_min * (1.0 - star_rng.random(n_stars + n_faint)) ** (-1.0 / k["lf_slope"])
    sf[n_stars:] = f_min * np.exp(star_rng.uniform(0.0, np.log(60.0), n_faint))
    sf = np.minimum(sf, 30.0 * f_sat)
    gf = k["galaxy_fraction"]
    n_gal = (
        gal_rng.poisson(min(k["star_density"], 6000.0) * gf / (1.0 - gf) * ext * ext / _MPX) if gf > 0 else 0
    )
    gx = gal_rng.uniform(-radius, size + radius, n_gal)
    gy = gal_rng.uniform(-radius, size + radius, n_gal)
    gflux = 2.0 * f_min * (1.0 - gal_rng.random(n_gal)) ** (-1.0 / 0.6)
    gflux = np.minimum(gflux, 3.0 * f_sat)
    gre = np.exp(gal_rng.uniform(np.log(0.8), np.log(8.0), n_gal))
    gn = gal_rng.choice(np.array([1.0, 4.0, 0.5, 2.0, 3.0]), n_gal, p=[0.45, 0.2, 0.1, 0.15, 0.1])
    gq = gal_rng.uniform(0.25, 1.0, n_gal)
    gang = gal_rng.uniform(0, np.pi, n_gal)
    return _Field(sx, sy, sf, n_stars + n_faint, gx, gy, gflux, gre, gn, gq, gang)


def _plan_transients(
    k: dict[str, Any], size: int, optics: _Optics, tr_rng: np.random.Generator, host_rng: np.random.Generator
) -> _Plan:
    """Scene stage 2: each transient's host kind and target SNR, and for hosted ones a position
    and the host object itself, decided *before* rendering so hosts are part of the scene both
    images see. Star hosts have science SNR 8-100 (visible in the reference, with a subtraction
    residual near the noise); galaxy hosts are Sérsic (or bulge+disc) with the transient nuclear
    for 20 %, else within ~1 r_e. Blank-sky positions need the rendered scene
    (:func:`_place_blank`)."""
    f_snr1, f_sat = optics.f_snr1, optics.f_sat
    n_tr = k["n_transients"]
    hosts = tr_rng.choice(np.array(HOSTS), n_tr, p=np.asarray(k["host_fractions"]))
    lo, hi = k["snr_range"]
    core_lo, core_hi = max(lo, 4.5), min(hi, 10.0)
    use_core = tr_rng.random(n_tr) < (0.6 if core_lo < core_hi else 0.0)
    snr_target = np.where(
        use_core,
        tr_rng.uniform(core_lo, max(core_lo, core_hi), n_tr),
        np.exp(tr_rng.uniform(np.log(lo), np.log(hi), n_tr)),
    )
    plan = _Plan(
        hosts=hosts,
        snr_target=snr_target,
        tx=np.full(n_tr, np.nan),
        ty=np.full(n_tr, np.nan),
        placed=np.full((n_tr, 2), np.inf),
        margin=max(8, k["edge_margin"]),
        spacing=max(12.0, 4.0 * k["seeing_fwhm"]),
    )
    margin = plan.margin
    for i, host in enumerate(hosts):
        if host == "blank":
            continue
        for _ in range(100):
            x = tr_rng.uniform(margin, size - 1 - margin)
            y = tr_rng.uniform(margin, size - 1 - margin)
            if plan.free(x, y):
                break
        else:
            continue
        if host == "star":
            hf = min(f_snr1 * math.exp(tr_rng.uniform(math.log(8), math.log(100))), 0.3 * f_sat)
            plan.host_star.append((x, y, hf))
        else:
            re = math.exp(tr_rng.uniform(math.log(1.5), math.log(7.0)))
            n = float(tr_rng.choice([1.0, 1.0, 4.0, 2.0, 0.7]))
            q = tr_rng.uniform(0.35, 1.0)
            a = tr_rng.uniform(0, np.pi)
            hlo, hhi = k["host_flux_range"]
            hf = min(f_snr1 * math.exp(tr_rng.uniform(math.log(hlo), math.log(hhi))), 0.5 * f_sat)
            off = 0.0 if tr_rng.random() < 0.2 else re * min(1.0, abs(tr_rng.normal(0, 0.5)))
            phi = tr_rng.uniform(0, 2 * np.pi)
            gxc, gyc = x - off * math.cos(phi), y - off * math.sin(phi)
            if k["host_profile"] == "bulge_disc":
                comps, nucleus, (dx, dy) = _bulge_disc_host(host_rng, hf, q, a)
                gxc, gyc = x - dx, y - dy
                plan.host_gal.extend((gxc, gyc, f, r_e, n_c, q_c, a) for f, r_e, n_c, q_c in comps)
                if nucleus > 0:
                    plan.host_star.append((gxc, gyc, nucleus))
            else:
                plan.host_gal.append((gxc, gyc, hf, re, n, q, a))
        plan.place(i, x, y)
    return plan


def _render_scene(
    k: dict[str, Any], size: int, optics: _Optics, field_: _Field, plan: _Plan, rng: _Streams
) -> tuple[np.ndarray, np.ndarray]:
    """Scene stage 3: the noiseless science and reference scenes (no sky). Every point source
    (field stars, star hosts, nuclei; the star hosts are appended to ``field_``) and every galaxy
    goes onto one intrinsic canvas, convolved once with each image's PSF, so transients, stars
    and hosts share exactly one PSF per image. Then the realism options (their own streams
    ``rng.spike`` and ``rng.neb``): diffraction spikes and nebulosity (the same in both images)."""
    radius = optics.radius
    pad = radius + 3
    canvas = np.zeros((size + 2 * pad, size + 2 * pad), dtype=np.float32)
    if plan.host_star:
        hs = np.array(plan.host_star)
        field_.sx = np.r_[field_.sx, hs[:, 0]]
        field_.sy = np.r_[field_.sy, hs[:, 1]]
        field_.sf = np.r_[field_.sf, hs[:, 2]]
    sx, sy, sf, gflux = field_.sx, field_.sy, field_.sf, field_.gflux
    # faint galaxies are below the noise per pixel: render them as points (much cheaper)
    point = gflux < 5.0 * optics.f_snr1
    _splat(canvas, np.r_[sx, field_.gx[point]], np.r_[sy, field_.gy[point]], np.r_[sf, gflux[point]], pad)
    for j in np.nonzero(~point)[0]:
        _add_galaxy(
            canvas,
            field_.gx[j],
            field_.gy[j],
            gflux[j],
            field_.gre[j],
            field_.gn[j],
            field_.gq[j],
            field_.gang[j],
            pad,
        )
    for gxc, gyc, hf, re, n, q, a in plan.host_gal:
        _add_galaxy(canvas, gxc, gyc, hf, re, n, q, a, pad)
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    scene_s = _conv_same(canvas, optics.psf_s)[crop]
    scene_r = _conv_same(canvas, optics.psf_r)[crop]
    del canvas
    np.maximum(scene_s, 0.0, out=scene_s)
    np.maximum(scene_r, 0.0, out=scene_r)
    if k["diffraction_spikes"]:
        _add_spikes(scene_s, scene_r, sx, sy, sf, 0.2 * optics.f_sat, k["seeing_fwhm"], rng.spike)
    if k["nebulosity"] > 0:
        neb = _nebulosity((size, size), k["nebulosity"] * optics.sky_sigma, rng.neb)
        scene_s += neb
        scene_r += neb
    return scene_s, scene_r


def _skies(
    k: dict[str, Any], shape: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float]:
    """Scene stage 4: each image's own sky (linear + quadratic gradient); the reference's level
    is 0.5-1.5× the science's (another night). Returns (science sky, reference sky, its level)."""
    sky_s = _sky(shape, k["sky_level"], k["sky_gradient"], rng)
    ref_sky_level = k["sky_level"] * float(rng.uniform(0.5, 1.5))
    sky_r = _sky(shape, ref_sky_level, float(rng.uniform(0, 0.1)), rng)
    return sky_s, sky_r, ref_sky_level


def _saturation(
    model_s: np.ndarray, sat: float, fwhm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Saturated pixels of the noiseless science plus vertical bleed trails (the charge above
    saturation, split up and down the column), and the region transients must avoid (no honest
    label is possible there). Returns (saturation mask, avoid mask)."""
    size = model_s.shape[1]
    satmask = model_s >= sat
    if satmask.any():
        labels, _ = ndimage.label(satmask)
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == lab
            excess = float((model_s[sl][comp] - sat).sum())
            length = int(excess / sat)
            if length <= 0:
                continue
            sub = np.where(comp, model_s[sl], -np.inf)
            _, c_pk = np.unravel_index(int(np.argmax(sub)), sub.shape)
            col = sl[1].start + c_pk
            rows = np.nonzero(comp[:, c_pk])[0] + sl[0].start
            up = round(length * rng.uniform(0.35, 0.65))
            down = length - up
            width = 1 + (length > 150) + (length > 600)
            c0, c1 = max(0, col - width // 2), min(size, col - width // 2 + width)
            satmask[max(0, rows.min() - up) : rows.min(), c0:c1] = True
            satmask[rows.max() + 1 : min(size, rows.max() + 1 + down), c0:c1] = True
    avoid = ndimage.binary_dilation(satmask, iterations=math.ceil(2 * fwhm) + 2) if satmask.any() else satmask
    return satmask, avoid


def _place_blank(
    plan: _Plan, scene_s: np.ndarray, avoid: np.ndarray, thresh: float, size: int, rng: np.random.Generator
) -> None:
    """Injection stage 1: positions of the ``blank`` transients, where the noiseless scene is
    below ``thresh`` (~0.5σ of sky), or the faintest of 200 tries in a crowded field."""
    margin = plan.margin
    for i in np.nonzero(plan.hosts == "blank")[0]:
        best, best_val = None, np.inf
        for _ in range(200):
            x = rng.uniform(margin, size - 1 - margin)
            y = rng.uniform(margin, size - 1 - margin)
            if not plan.free(x, y):
                continue
            r, c = round(y), round(x)
            if avoid[r, c]:
                continue
            val = float(scene_s[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3].max())
            if val < best_val:
                best, best_val = (x, y), val
            if val < thresh:
                break
        if best is None:
            continue
        plan.place(i, *best)


def pixel_variances(
    model_s: np.ndarray, model_r: np.ndarray, gain: float, read_noise: float, depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel variance (ADU²) of the science (photon + read noise of the noiseless model) and
    of the reference (the same, ``depth`` times deeper): what the truth's SNRs are measured
    against and what :func:`observe` draws the reference noise from."""
    var_s = model_s / gain + (read_noise / gain) ** 2
    var_r = (model_r / gain + (read_noise / gain) ** 2) / depth**2
    return var_s, var_r


def inject_point(
    model_s: np.ndarray,
    psf: np.ndarray,
    x: float,
    y: float,
    snr: float,
    host: str,
    var_s: np.ndarray,
    var_r: np.ndarray,
    kernel_power: float,
    gain: float,
) -> InjectedTransient:
    """Injection: add a transient at (x, y) to the noiseless science ``model_s`` (in place) with
    the flux that gives it optimal SNR ``snr`` on the difference image (science variance plus
    the matched reference's share ``kernel_power * var_r``, source noise excluded), and return
    its truth (:mod:`astrid.imaging.truth`), ``snr_local`` included."""
    stamp, row0, col0 = point_stamp(psf, x, y)
    h, w = stamp.shape
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + h, model_s.shape[0]), min(col0 + w, model_s.shape[1])
    p = stamp[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0]
    v = var_s[r0:r1, c0:c1] + kernel_power * var_r[r0:r1, c0:c1]
    flux = float(snr) / math.sqrt(float((p * p / v).sum()))
    add_stamp(model_s, stamp, row0, col0, flux)
    return InjectedTransient(
        x=float(x), y=float(y), flux=flux, snr=float(snr), host=host, snr_local=local_snr(flux, p, v, gain)
    )


def _add_faders(
    k: dict[str, Any],
    size: int,
    model_s: np.ndarray,
    field_: _Field,
    optics: _Optics,
    rng: np.random.Generator,
) -> int:
    """A few bright stars fainter now than in the reference: negative PSFs in the difference, the
    commonest real variable-star false positive. Returns how many."""
    sx, sy, sf = field_.sx, field_.sy, field_.sf
    n_fade = rng.poisson(k["fader_rate"] * size * size / _MPX)
    bright = np.nonzero(
        (sf > 20 * optics.f_snr1)
        & (sf < 0.5 * optics.f_sat)
        & (sx > 0)
        & (sx < size - 1)
        & (sy > 0)
        & (sy < size - 1)
    )[0]
    faders = rng.choice(bright, min(n_fade, len(bright)), replace=False) if len(bright) else []
    for j in faders:
        stamp, row0, col0 = point_stamp(optics.psf_s, sx[j], sy[j])
        add_stamp(model_s, stamp, row0, col0, -sf[j] * rng.uniform(0.1, 0.6))
    return len(faders)


def observe(
    model_s: np.ndarray,
    model_r: np.ndarray,
    var_r: np.ndarray,
    gain: float,
    read_noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise stage: the science is a Poisson draw of the noiseless model in electrons (via the
    gain) plus Gaussian read noise; the reference (a deep coadd) Gaussian with variance ``var_r``
    (:func:`pixel_variances`). ``model_s`` is clipped at 0 in place first (faders can dip a
    model below it). The Gaussian draws are made at the precision of the model images (float32
    for the synthetic survey, float64 for the real-sky family), so each family keeps its seeds'
    random sequence. Returns float32 (science, reference)."""
    dt = model_s.dtype
    np.maximum(model_s, 0.0, out=model_s)
    electrons = rng.poisson(model_s.astype(np.float64) * gain)
    science = (electrons / gain).astype(np.float32)
    del electrons
    science += (rng.standard_normal(model_s.shape, dtype=dt) * dt.type(read_noise / gain)).astype(
        np.float32, copy=False
    )
    noise_r = rng.standard_normal(model_r.shape, dtype=dt) * np.sqrt(var_r).astype(dt, copy=False)
    reference = (model_r + noise_r).astype(np.float32, copy=False)
    return science, reference


def _science_artifacts(
    science: np.ndarray, k: dict[str, Any], sky_sigma: float, rng: _Streams
) -> tuple[int, int]:
    """Detector and sky artifacts on the science only (what a real difference image is full of
    and a detector must learn to ignore): cosmic rays (sharp tracks), hot pixels, dead or hot
    columns, satellite trails. Returns (cosmic rays, hot pixels)."""
    size = science.shape[0]
    area = size * size / _MPX
    gain, rn = k["gain"], k["read_noise"]
    cr_rng, hot_rng, col_rng = rng.cr, rng.hot, rng.col
    n_cr = cr_rng.poisson(k["cosmic_ray_rate"] * area)
    cr_x, cr_y, cr_v = [], [], []
    for _ in range(n_cr):
        x0, y0 = cr_rng.uniform(0, size - 1, 2)
        length = 1.0 + cr_rng.exponential(3.0) if cr_rng.random() < 0.7 else 0.0
        theta = cr_rng.uniform(0, np.pi)
        npts = max(1, int(length * 4))
        t = np.linspace(0, length, npts)
        amp = sky_sigma * math.exp(cr_rng.uniform(math.log(8), math.log(300)))
        cr_x.append(x0 + t * math.cos(theta))
        cr_y.append(y0 + t * math.sin(theta))
        cr_v.append(np.full(npts, amp / max(1.0, npts / 4.0)) * cr_rng.uniform(0.6, 1.4, npts))
    if cr_x:
        _bilinear_add(science, np.concatenate(cr_x), np.concatenate(cr_y), np.concatenate(cr_v))
    n_hot = hot_rng.poisson(k["hot_pixel_rate"] * area)
    hr = hot_rng.integers(0, size, n_hot)
    hc = hot_rng.integers(0, size, n_hot)
    science[hr, hc] += (sky_sigma * np.exp(hot_rng.uniform(np.log(5), np.log(2000), n_hot))).astype(
        np.float32
    )
    for _ in range(k["n_bad_columns"]):
        col = int(col_rng.integers(0, size))
        start = 0 if col_rng.random() < 0.5 else int(col_rng.integers(0, size - 1))
        if col_rng.random() < 0.5:  # dead
            science[start:, col] = (col_rng.standard_normal(size - start) * rn / gain).astype(np.float32)
        else:  # hot / charge-trap column
            science[start:, col] += np.float32(sky_sigma * col_rng.uniform(3, 30))
    for _ in range(k["satellite_trails"]):
        _add_trail(science, rng.trail, sky_sigma, k["seeing_fwhm"])
    return n_cr, n_hot


def _reference_artifacts(
    reference: np.ndarray, k: dict[str, Any], sky_sigma: float, rng: np.random.Generator
) -> None:
    """A few hot pixels of the reference's own (a coadd rejects most): they become negative
    spikes in the difference."""
    size = reference.shape[0]
    n_hot_r = rng.poisson(0.1 * k["hot_pixel_rate"] * size * size / _MPX)
    rr = rng.integers(0, size, n_hot_r)
    rc = rng.integers(0, size, n_hot_r)
    reference[rr, rc] += (
        sky_sigma / k["reference_depth"] * np.exp(rng.uniform(np.log(5), np.log(500), n_hot_r))
    ).astype(np.float32)


def difference_image(
    science: np.ndarray, reference: np.ndarray, kernel: np.ndarray, flux_scale: float = 1.0
) -> np.ndarray:
    """Subtraction stage: ``(science - bkg) - flux_scale * K ⊗ (reference - bkg)`` with 64-px mesh
    backgrounds (as SExtractor does), then the difference's own mesh background removed (as
    kernel fits do: crowding biases the two mesh medians differently). float32."""
    bkg_s = mesh_background(science)
    bkg_r = mesh_background(reference)
    matched = fftconvolve(reference - bkg_r, kernel.astype(np.float32), mode="same")
    difference = (science - bkg_s) - np.float32(flux_scale) * matched
    difference -= mesh_background(difference)
    return difference.astype(np.float32)


def difference_sigma(
    sky_sigma: float, kernel_power: float, reference_sky: float, gain: float, read_noise: float, depth: float
) -> float:
    """The typical per-pixel noise of the difference on blank sky: the science's sky noise plus
    the matched reference's (``kernel_power`` = sum K² times its variance)."""
    return math.sqrt(
        sky_sigma**2 + kernel_power * (reference_sky / gain + (read_noise / gain) ** 2) / depth**2
    )


def _header(
    seed: int,
    size: int,
    k: dict[str, Any],
    optics: _Optics,
    diff_sigma: float,
    n_truth: int,
    rng: np.random.Generator,
) -> tuple[fits.Header, WCS]:
    """A plausible survey header and TAN WCS: pointing, time, exposure, band, zero point and
    airmass drawn from ``rng``; the noise, PSF and seed cards read by the pipeline and tests."""
    gain, rn, sat = k["gain"], k["read_noise"], k["saturate"]
    fwhm_s, fwhm_r = k["seeing_fwhm"], k["reference_fwhm"]
    ra = float(rng.uniform(0, 360))
    dec = float(np.degrees(np.arcsin(rng.uniform(-0.95, 0.95))))
    rot = float(rng.uniform(-np.pi, np.pi))
    mjd = float(rng.uniform(58000, 61500))
    exptime = float(rng.choice([30.0, 60.0, 90.0, 120.0, 180.0, 300.0]))
    band = str(rng.choice(["g", "r", "i", "z"]))
    zp = float(rng.uniform(26.0, 29.0))
    airmass = float(1.0 / max(0.3, rng.uniform(0.5, 1.0)))
    wcs = make_wcs(size, ra, dec, k["pixscale"], rot)
    header = wcs.to_header()
    header["MJD-OBS"] = (round(mjd, 6), "[d] start of the exposure (MJD)")
    header["DATE-OBS"] = (Time(mjd, format="mjd", scale="utc").isot, "start of the exposure (UTC)")
    cards = [
        ("OBJECT", f"SYN-{seed:06d}", "synthetic field id"),
        ("TELESCOP", "AstrID-Synthetic", ""),
        ("INSTRUME", "SynCam", ""),
        ("IMAGETYP", "SCIENCE", ""),
        ("BUNIT", "adu", "pixel unit"),
        ("FILTER", band, "filter band"),
        ("EXPTIME", exptime, "[s] exposure time"),
        ("AIRMASS", round(airmass, 4), ""),
        ("GAIN", round(gain, 5), "[e-/ADU]"),
        ("RDNOISE", round(rn, 4), "[e-] read noise"),
        ("SATURATE", round(sat, 2), "[ADU] saturation level"),
        ("PIXSCALE", round(k["pixscale"], 5), "[arcsec/pix]"),
        ("FWHM", round(fwhm_s, 4), "[pix] PSF FWHM of this image"),
        ("SEEING", round(fwhm_s * k["pixscale"], 4), "[arcsec] PSF FWHM"),
        ("PSFBETA", round(k["psf_beta"], 4), "Moffat beta of this image's PSF"),
        ("REFFWHM", round(fwhm_r, 4), "[pix] PSF FWHM of the reference"),
        ("SKYLEVEL", round(k["sky_level"], 3), "[ADU] mean sky level"),
        ("SKYSIG", round(optics.sky_sigma, 4), "[ADU] sky noise per pixel"),
        ("DIFFSIG", round(diff_sigma, 4), "[ADU] difference-image noise per pixel"),
        ("MAGZPT", round(zp, 4), "mag = MAGZPT - 2.5 log10(flux in ADU)"),
        ("NTRANS", n_truth, "injected transients"),
        ("SYNSEED", int(seed), "make_observation seed"),
        ("SYNVERS", GENERATOR_VERSION, "synthetic generator version"),
    ]
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header, wcs


def _bilinear_add(image: np.ndarray, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> None:
    h, w = image.shape
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    for dy, dx, wt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        r, c = iy + dy, ix + dx
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        np.add.at(image, (r[ok], c[ok]), (v[ok] * wt[ok]).astype(image.dtype))


def _add_trail(image: np.ndarray, rng: np.random.Generator, sky_sigma: float, fwhm: float) -> None:
    h, w = image.shape
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    theta = rng.uniform(0, np.pi)
    amp = sky_sigma * math.exp(rng.uniform(math.log(2), math.log(40)))
    sigma = fwhm / 2.3548 * rng.uniform(0.8, 1.5)
    yy, xx = np.ogrid[:h, :w]
    dist = (xx - x0) * math.sin(theta) - (yy - y0) * math.cos(theta)
    near = np.abs(dist) < 5 * sigma
    image[near] += (amp * np.exp(-0.5 * (dist[near] / sigma) ** 2)).astype(image.dtype)


def make_wcs(size: int, ra: float, dec: float, pixscale: float, rot: float) -> WCS:
    """A TAN WCS centred on the frame: (ra, dec) in degrees, ``pixscale`` arcsec/px, rotated by
    ``rot`` radians, east to the left at rot 0."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    w.wcs.crval = [ra, dec]
    s = pixscale / 3600.0
    c, sn = math.cos(rot), math.sin(rot)
    w.wcs.cd = np.array([[-s * c, s * sn], [s * sn, s * c]])
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


# --------------------------------------------------------------------------------------------
# I/O


def write_observation(obs: SyntheticObservation, directory: Any, name: str) -> dict[str, str]:
    """Write ``<name>_sci.fits``, ``<name>_ref.fits``, ``<name>_diff.fits`` and
    ``<name>_truth.json`` under ``directory`` (str, ``pathlib.Path`` or ``UPath``, e.g. s3).
    Returns ``{"science_uri", "reference_uri", "difference_uri", "truth_uri"}`` as ``str(path)``."""
    from astrid.imaging.fits import write_image

    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"observation name {name!r} must be a plain file-name stem (no '/')")
    directory = to_path(directory)
    protocol = getattr(directory, "protocol", "")
    if not isinstance(protocol, str) or protocol in ("", "file", "local"):
        directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "science_uri": directory / f"{name}_sci.fits",
        "reference_uri": directory / f"{name}_ref.fits",
        "difference_uri": directory / f"{name}_diff.fits",
        "truth_uri": directory / f"{name}_truth.json",
    }
    write_image(paths["science_uri"], obs.science, obs.header)
    write_image(paths["reference_uri"], obs.reference, obs.reference_header())
    write_image(paths["difference_uri"], obs.difference, obs.difference_header())
    write_truth(obs.truth, paths["truth_uri"])
    return {key: str(p) for key, p in paths.items()}
