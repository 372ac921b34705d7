"""Seeded science/reference *pairs* for the subtraction tests and ``bench/subtraction.py``.

:func:`astrid.imaging.synthetic.make_observation` renders the reference on the science's own pixel
grid (it simulates what an upstream pipeline hands over). Subtracting inside AstrID needs what a
user actually has: two exposures of one sky taken on different nights, so here one list of stars
and galaxies, fixed on the sky, is rendered **twice**, each time through its own

* WCS: the reference pointing is offset by ``shift`` px and rotated by ``rotation_deg`` (and its
  pixel scale differs by ``scale_change``), so the two pixel grids really differ;
* PSF: Moffat profiles, the science one broader and *spatially varying* (its FWHM and ellipticity
  change linearly across the frame, a blend of two PSFs), the reference sharper and constant;
* photometric scale: every reference flux is ``flux_ratio`` × the science flux;
* sky and noise: Poisson + read noise in the science, a deeper reference (noise / ``depth``), each
  with its own sky level and gradient; saturation at ``SATURATE`` in both.

Transients are point sources in the science only (on blank sky, on galaxies and on faint stars).
The *ideal difference* is the science minus its own noiseless static scene (sky, stars, galaxies):
the transients plus the science noise, what a perfect subtraction with a noiseless reference
would give. ``science_variance`` and ``reference_variance`` are the noiseless variance models
(truth for χ² tests).

Sources are placed with Lanczos-3 sub-pixel weights and then FFT-convolved with the PSF (as the
synthetic survey does), so a star is the same band-limited PSF at any sub-pixel phase.
This module is test/bench tooling: the product never imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy.signal import fftconvolve

from astrid.imaging.synthetic import add_stamp, moffat_stamp, point_stamp

SATURATE = 60000.0


@dataclass
class Pair:
    """One rendered pair plus its truth. Star/transient coordinates are 0-based science pixels
    (x = column, y = row); fluxes are science ADU."""

    science: np.ndarray
    reference: np.ndarray
    science_header: fits.Header
    reference_header: fits.Header
    ideal_difference: np.ndarray
    science_variance: np.ndarray
    reference_variance: np.ndarray
    stars: dict[str, np.ndarray]
    transients: dict[str, np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def science_wcs(self) -> WCS:
        return WCS(self.science_header).celestial

    @property
    def reference_wcs(self) -> WCS:
        return WCS(self.reference_header).celestial

    def science_psf(self, x: float, y: float) -> np.ndarray:
        """The science PSF stamp (sum 1, centred) at science pixel (x, y)."""
        w = _blend_weight(np.array([x]), np.array([y]), self.science.shape)[0]
        return (1.0 - w) * self.params["_psf_a"] + w * self.params["_psf_b"]

    def matching_kernel_power(self) -> float:
        """Σ K² of the ideal kernel (sum 1) that turns the reference PSF into the science PSF at the
        frame centre: how much of the reference's per-pixel variance a PSF-matched subtraction
        carries into the difference (per unit flux scale²)."""
        c = (self.science.shape[0] - 1) / 2
        target, source = self.science_psf(c, c), self.params["_psf_r"]
        n = target.shape[0]
        ft, fs = np.fft.rfft2(np.fft.ifftshift(target)), np.fft.rfft2(np.fft.ifftshift(source))
        power = (fs * fs.conj()).real
        k = np.fft.irfft2(ft * fs.conj() / (power + 1e-6 * power.max()), s=(n, n))
        k /= k.sum()
        return float((k * k).sum())

    def expected_variance(self, kernel_power: float | None = None) -> np.ndarray:
        """Noiseless variance of a PSF-matched difference on the science grid: the science's own
        variance plus the reference's (sampled at the true positions, scaled to science flux) through
        a kernel of Σ K² = ``kernel_power`` (default :meth:`matching_kernel_power`)."""
        from scipy import ndimage

        k2 = self.matching_kernel_power() if kernel_power is None else kernel_power
        h, w = self.science.shape
        ys, xs = np.mgrid[0:h, 0:w]
        rx, ry = self.reference_wcs.world_to_pixel_values(*self.science_wcs.pixel_to_world_values(xs, ys))
        ref_var = ndimage.map_coordinates(self.reference_variance, [ry, rx], order=1, mode="nearest")
        return self.science_variance + k2 * ref_var / self.params["flux_ratio"] ** 2


def _lanczos3(frac: np.ndarray) -> np.ndarray:
    t = np.arange(-2, 4)[None, :] - frac[:, None]
    w = np.sinc(t) * np.sinc(t / 3.0)
    return w / w.sum(axis=1, keepdims=True)


def _splat(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Point sources placed with Lanczos-3 weights on a zero canvas (taps outside are dropped)."""
    h, w = shape
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    wx, wy = _lanczos3(x - ix), _lanczos3(y - iy)
    taps = np.arange(-2, 4)
    rows = (iy[:, None] + taps)[:, :, None]
    cols = (ix[:, None] + taps)[:, None, :]
    weights = flux[:, None, None] * wy[:, :, None] * wx[:, None, :]
    rr, cc = np.broadcast_to(rows, weights.shape), np.broadcast_to(cols, weights.shape)
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    return np.bincount(rr[ok] * w + cc[ok], weights=weights[ok], minlength=h * w).reshape(h, w)


def _blend_weight(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Weight of PSF B in the science PSF: 0 at the top-left corner, 1 at the bottom-right."""
    h, w = shape
    return np.clip(0.5 * (x / (w - 1) + y / (h - 1)), 0.0, 1.0)


def _galaxies(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    re: np.ndarray,
    q: np.ndarray,
    angle: np.ndarray,
    jac_inv: np.ndarray,
) -> np.ndarray:
    """Intrinsic exponential discs (science-frame shape, mapped through ``jac_inv`` from this
    frame's pixels to science pixels), flux-normalised on their stamps."""
    canvas = np.zeros(shape)
    for xi, yi, fi, ri, qi, ai in zip(x, y, flux, re, q, angle, strict=True):
        rad = math.ceil(6 * ri) + 2
        cx, cy = round(xi), round(yi)
        dy, dx = np.mgrid[cy - rad : cy + rad + 1, cx - rad : cx + rad + 1].astype(float)
        dx, dy = dx - xi, dy - yi
        sx = jac_inv[0, 0] * dx + jac_inv[0, 1] * dy
        sy = jac_inv[1, 0] * dx + jac_inv[1, 1] * dy
        c, s = math.cos(ai), math.sin(ai)
        u, v = sx * c + sy * s, -sx * s + sy * c
        prof = np.exp(-1.678 * np.sqrt(u * u * qi + v * v / qi + 0.09) / ri)
        add_stamp(canvas, prof / prof.sum(), cy - rad, cx - rad, fi)
    return canvas


def _wcs(shape: tuple[int, int], ra: float, dec: float, pixscale: float, rot: float) -> WCS:
    """A TAN WCS centred on the frame, ``pixscale`` arcsec/px, rotated by ``rot`` radians."""
    s, c, sn = pixscale / 3600.0, math.cos(rot), math.sin(rot)
    cd = {"CD1_1": -s * c, "CD1_2": s * sn, "CD2_1": s * sn, "CD2_2": s * c}
    return WCS(
        {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CUNIT1": "deg", "CUNIT2": "deg", "RADESYS": "ICRS",
         "CRPIX1": shape[1] / 2 + 0.5, "CRPIX2": shape[0] / 2 + 0.5, "CRVAL1": ra, "CRVAL2": dec, **cd}
    )  # fmt: skip


def _sky(shape: tuple[int, int], level: float, gradient: float, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    gx, gy = rng.normal(size=2)
    norm = math.hypot(gx, gy) + 1e-12
    yy = np.linspace(-1, 1, h)[:, None]
    xx = np.linspace(-1, 1, w)[None, :]
    return level * (1.0 + gradient * 0.5 * (gx * xx + gy * yy) / norm)


def make_pair(
    seed: int,
    size: int = 512,
    *,
    reference_size: int | None = None,
    seeing_fwhm: tuple[float, float] = (3.6, 4.4),
    reference_fwhm: float = 2.4,
    shift: tuple[float, float] = (7.3, -4.6),
    rotation_deg: float = 0.4,
    scale_change: float = 0.0015,
    flux_ratio: float = 0.8,
    depth: float = 3.0,
    star_density: float = 3000.0,
    galaxy_density: float = 300.0,
    n_transients: int = 12,
    transient_snr: tuple[float, float] = (15.0, 40.0),
    gain: float = 1.6,
    read_noise: float = 6.0,
    sky: float = 600.0,
    reference_sky: float = 350.0,
    hot_pixels: float = 20.0,
    lf_slope: float = 0.7,
    pixscale: float = 0.6,
    reference_distortion: float = 0.0,
) -> Pair:
    """Render one seeded pair (science ``size``², reference ``reference_size``², default the same).

    ``seeing_fwhm`` is the science FWHM at the top-left and at the bottom-right corner; densities
    are per 1024² px; ``shift`` is the reference pointing offset in science px (x, y);
    ``reference_distortion`` adds a quadratic SIP distortion to the reference WCS that moves its
    corners by that many px.
    """
    rng = np.random.default_rng([seed, 0x5AB])
    shape = (size, size)
    rshape = (reference_size or size,) * 2
    radius = math.ceil(max(4.0 * max(seeing_fwhm), 10))
    psf_a = moffat_stamp(radius, seeing_fwhm[0], 3.2, 0.04, 0.3)
    psf_b = moffat_stamp(radius, seeing_fwhm[1], 2.8, 0.10, 1.2)
    psf_r = moffat_stamp(radius, reference_fwhm, 3.5, 0.03, 2.0)

    ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))
    rot = float(rng.uniform(-math.pi, math.pi))
    sci_wcs = _wcs(shape, ra, dec, pixscale, rot)
    # the reference pointing: its centre is `shift` science px away, rotated and rescaled
    cx, cy = (size - 1) / 2 + shift[0], (size - 1) / 2 + shift[1]
    rra, rdec = sci_wcs.pixel_to_world_values(cx, cy)
    ref_wcs = _wcs(
        rshape, float(rra), float(rdec), pixscale * (1 + scale_change), rot + math.radians(rotation_deg)
    )
    ref_wcs.wcs.crpix = [(rshape[1] - 1) / 2 + 1, (rshape[0] - 1) / 2 + 1]
    if reference_distortion:
        from astropy.wcs import Sip

        half = (rshape[0] - 1) / 2
        a, b = np.zeros((3, 3)), np.zeros((3, 3))
        a[2, 0] = b[0, 2] = reference_distortion / (2 * half * half)  # u², v² terms
        a[1, 1] = reference_distortion / (2 * half * half)
        ref_wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        ref_wcs.sip = Sip(a, b, None, None, ref_wcs.wcs.crpix)
    ref_wcs.wcs.set()

    def to_ref(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ref_wcs.world_to_pixel_values(*sci_wcs.pixel_to_world_values(x, y))

    eps = 1.0
    c0 = np.array(to_ref(np.array([size / 2]), np.array([size / 2])))
    jac = np.column_stack(
        [
            (np.array(to_ref(np.array([size / 2 + eps]), np.array([size / 2]))) - c0).ravel() / eps,
            (np.array(to_ref(np.array([size / 2]), np.array([size / 2 + eps]))) - c0).ravel() / eps,
        ]
    )
    jac_inv = np.linalg.inv(jac)

    # ---- scene on the sky, in science pixel coordinates over both footprints --------------
    margin = radius + abs(shift[0]) + abs(shift[1]) + size * abs(math.radians(rotation_deg)) + 8
    lo, hi = -margin, size - 1 + margin
    area = (hi - lo) ** 2 / 1024.0**2
    sky_sigma = math.sqrt(sky / gain + (read_noise / gain) ** 2)
    f1 = sky_sigma * math.sqrt(4 * math.pi * (max(seeing_fwhm) / 2.3548) ** 2)  # SNR-1 flux
    n_star = rng.poisson(star_density * area)
    sx, sy = rng.uniform(lo, hi, n_star), rng.uniform(lo, hi, n_star)
    sf = 0.5 * f1 * (1.0 - rng.random(n_star)) ** (-1.0 / lf_slope)
    sf = np.minimum(sf, 3.0 * SATURATE / psf_r.max())
    n_gal = rng.poisson(galaxy_density * area)
    gx, gy = rng.uniform(lo, hi, n_gal), rng.uniform(lo, hi, n_gal)
    gflux = 5.0 * f1 * (1.0 - rng.random(n_gal)) ** (-1.0 / 0.8)
    gflux = np.minimum(gflux, 2000.0 * f1)
    gre = np.exp(rng.uniform(np.log(1.0), np.log(5.0), n_gal))
    gq = rng.uniform(0.35, 1.0, n_gal)
    gang = rng.uniform(0, np.pi, n_gal)

    # ---- transients (science only): on blank sky, on galaxies, on faint stars --------------
    t_rng = np.random.default_rng([seed, 0x7A5])
    edge = max(16, 3 * radius // 2)
    tx, ty, kinds = [], [], []
    faint_stars = np.nonzero((sf > 5 * f1) & (sf < 40 * f1))[0]
    inside_gal = np.nonzero((gx > edge) & (gx < size - 1 - edge) & (gy > edge) & (gy < size - 1 - edge))[0]
    inside_star = faint_stars[
        (sx[faint_stars] > edge)
        & (sx[faint_stars] < size - 1 - edge)
        & (sy[faint_stars] > edge)
        & (sy[faint_stars] < size - 1 - edge)
    ]
    bright = sf > 0.3 * SATURATE / psf_a.max()
    for i in range(n_transients):
        for _ in range(200):
            kind = ("blank", "galaxy", "star")[i % 3]
            if kind == "galaxy" and len(inside_gal):
                j = t_rng.choice(inside_gal)
                x, y = gx[j] + t_rng.normal(0, gre[j]), gy[j] + t_rng.normal(0, gre[j])
            elif kind == "star" and len(inside_star):
                j = t_rng.choice(inside_star)
                x, y = sx[j], sy[j]
            else:
                kind = "blank"
                x, y = t_rng.uniform(edge, size - 1 - edge, 2)
            far_bright = np.all((sx[bright] - x) ** 2 + (sy[bright] - y) ** 2 > (8 * max(seeing_fwhm)) ** 2)
            far_other = all(
                (x - a) ** 2 + (y - b) ** 2 > (6 * max(seeing_fwhm)) ** 2 for a, b in zip(tx, ty, strict=True)
            )
            if edge < x < size - 1 - edge and edge < y < size - 1 - edge and far_bright and far_other:
                tx.append(float(x))
                ty.append(float(y))
                kinds.append(kind)
                break
    tx_a, ty_a = np.array(tx), np.array(ty)
    snr = t_rng.uniform(*transient_snr, len(tx))

    # ---- science: static scene through the spatially varying PSF ----------------------------
    canvas = _splat(shape, sx, sy, sf) + _galaxies(shape, gx, gy, gflux, gre, gq, gang, np.eye(2))
    yy, xx = np.mgrid[0:size, 0:size]
    wb = _blend_weight(xx, yy, shape)
    static = (1 - wb) * fftconvolve(canvas, psf_a, mode="same") + wb * fftconvolve(canvas, psf_b, mode="same")
    del canvas
    np.maximum(static, 0.0, out=static)
    sky_rng = np.random.default_rng([seed, 0x5C1])
    static += _sky(shape, sky, 0.08, sky_rng)
    var_sky = sky / gain + (read_noise / gain) ** 2
    model = static.copy()
    tflux = []
    for x, y, s in zip(tx_a, ty_a, snr, strict=True):
        stamp, r0, c0_ = point_stamp(
            (1 - _blend_weight(x, y, shape)) * psf_a + _blend_weight(x, y, shape) * psf_b, x, y
        )
        # flux for the target SNR on the science's noise at that place (optimal PSF photometry)
        h, w = stamp.shape
        cut = static[max(r0, 0) : r0 + h, max(c0_, 0) : c0_ + w]
        p = stamp[
            max(r0, 0) - r0 : max(r0, 0) - r0 + cut.shape[0],
            max(c0_, 0) - c0_ : max(c0_, 0) - c0_ + cut.shape[1],
        ]
        v = cut / gain + (read_noise / gain) ** 2
        flux = float(s / math.sqrt(float((p * p / v).sum())))
        add_stamp(model, stamp, r0, c0_, flux)
        tflux.append(flux)
    science_variance = np.maximum(model, 0) / gain + (read_noise / gain) ** 2
    noise_rng = np.random.default_rng([seed, 0x401])
    science = noise_rng.poisson(np.maximum(model, 0) * gain) / gain
    science += noise_rng.standard_normal(shape) * (read_noise / gain)
    hot_rng = np.random.default_rng([seed, 0x407])
    n_hot = hot_rng.poisson(hot_pixels * size * size / 1024.0**2)
    hr, hc = hot_rng.integers(0, size, n_hot), hot_rng.integers(0, size, n_hot)
    science[hr, hc] += math.sqrt(var_sky) * np.exp(hot_rng.uniform(np.log(10), np.log(3000), n_hot))
    ideal = science - static
    science = np.minimum(science, SATURATE)

    # ---- reference: the same sky through its own WCS, PSF, flux scale, sky and noise --------
    rx, ry = to_ref(sx, sy)
    rgx, rgy = to_ref(gx, gy)
    rcanvas = _splat(rshape, rx, ry, sf * flux_ratio) + _galaxies(
        rshape, rgx, rgy, gflux * flux_ratio, gre, gq, gang, jac_inv
    )
    rstatic = np.maximum(fftconvolve(rcanvas, psf_r, mode="same"), 0.0)
    del rcanvas
    rstatic += _sky(rshape, reference_sky, 0.05, sky_rng)
    reference_variance = (rstatic / gain + (read_noise / gain) ** 2) / depth**2
    reference = rstatic + noise_rng.standard_normal(rshape) * np.sqrt(reference_variance)
    reference = np.minimum(reference, SATURATE)

    # ---- headers -----------------------------------------------------------------------------
    def header(wcs: WCS, fwhm: float, g: float, what: str) -> fits.Header:
        h = wcs.to_header(relax=True)
        h["IMAGETYP"] = what
        h["GAIN"] = (g, "[e-/ADU]")
        h["SATURATE"] = (SATURATE, "[ADU]")
        h["FWHM"] = (round(fwhm, 3), "[px]")
        return h

    science_header = header(sci_wcs, float(np.mean(seeing_fwhm)), gain, "SCIENCE")
    science_header["RDNOISE"] = (read_noise, "[e-]")
    # the reference is a coadd: its effective gain makes its noise `depth` times lower
    reference_header = header(ref_wcs, reference_fwhm, gain * depth**2, "REFERENCE")

    in_frame = (sx >= 0) & (sx <= size - 1) & (sy >= 0) & (sy <= size - 1)
    peak_sci = sf * max(psf_a.max(), psf_b.max())
    peak_ref = sf * flux_ratio * psf_r.max()
    stars = {
        "x": sx[in_frame],
        "y": sy[in_frame],
        "flux": sf[in_frame],
        "saturated": ((peak_sci + sky) >= 0.8 * SATURATE)[in_frame]
        | ((peak_ref + reference_sky) >= 0.8 * SATURATE)[in_frame],
        "x_ref": rx[in_frame],
        "y_ref": ry[in_frame],
    }
    transients = {"x": tx_a, "y": ty_a, "flux": np.array(tflux), "snr": snr, "host": np.array(kinds)}
    params = {
        "seed": seed,
        "size": size,
        "reference_size": rshape[0],
        "seeing_fwhm": list(seeing_fwhm),
        "reference_fwhm": reference_fwhm,
        "shift": list(shift),
        "rotation_deg": rotation_deg,
        "scale_change": scale_change,
        "reference_distortion": reference_distortion,
        "flux_ratio": flux_ratio,
        "depth": depth,
        "gain": gain,
        "read_noise": read_noise,
        "sky_sigma": math.sqrt(var_sky),
        "n_stars": int(in_frame.sum()),
        "n_galaxies": int(n_gal),
        "_psf_a": psf_a,
        "_psf_b": psf_b,
        "_psf_r": psf_r,
    }
    return Pair(
        science=science.astype(np.float32),
        reference=reference.astype(np.float32),
        science_header=science_header,
        reference_header=reference_header,
        ideal_difference=ideal.astype(np.float32),
        science_variance=science_variance.astype(np.float32),
        reference_variance=reference_variance.astype(np.float32),
        stars=stars,
        transients=transients,
        params=params,
    )


def write_pair(pair: Pair, folder: Any, name: str, reference: Pair | None = None) -> dict[str, Any]:
    """Write ``pair`` as ``<name>_sci.fits`` and ``<name>_ref.fits`` (with their headers: WCS,
    GAIN, SATURATE) into ``folder``, as a user would have them. ``reference``: take the reference
    image of another pair instead (another field: a pair that must be refused)."""
    from pathlib import Path

    from astrid.imaging.fits import write_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ref = reference or pair
    science_header = pair.science_header.copy()
    # what an observatory's science frame carries besides its WCS (the data-quality gate needs EXPTIME)
    science_header.update({"EXPTIME": 60.0, "MJD-OBS": 61000.25 + pair.params["seed"], "FILTER": "r"})
    return {
        "science": write_image(folder / f"{name}_sci.fits", pair.science, science_header),
        "reference": write_image(folder / f"{name}_ref.fits", ref.reference, ref.reference_header),
    }
