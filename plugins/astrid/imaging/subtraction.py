"""Difference imaging inside AstrID: align a reference to a science image, PSF-match, subtract.

One entry point, :func:`subtract`, on arrays (+ FITS headers for WCS, ``GAIN``, ``SATURATE``)::

    result = subtract(science, reference, science_header=h_sci, reference_header=h_ref)
    result.difference   # float32, science frame and units, NaN where there is no honest pixel
    result.noise        # float32 1σ per pixel of the difference (NaN where the difference is)
    result.reference    # the background-subtracted reference resampled onto the science grid
                        # (NaN outside the overlap): the detector's reference channel
    result.mask         # uint8: NO_DATA (1) no overlap / bad input, SATURATED (2) a saturated pixel
                        # within the kernel's reach
    result.meta         # method + quality figures, a JSON-ready dict for the observation's metadata

Bad pairs raise a :class:`~astrid.errors.SubtractionError` (an ``ObservationError``: the pipeline
fails that observation, not the run) naming the problem and the fix, never a garbage difference:
:class:`~astrid.errors.NoOverlapError`, :class:`~astrid.errors.AlignmentError`,
:class:`~astrid.errors.KernelFitError`.

Method (docs/subtraction.md has the measurements behind each choice)
--------------------------------------------------------------------
1. **Background and stars** of each image with SEP (SExtractor's algorithms as a library):
   64-px mesh background + RMS, then sources above 5σ.
2. **Alignment** of the reference onto the science grid. Where both headers carry a celestial WCS,
   the pixel→pixel map is computed from the two WCSs (astropy, on a 17×17 grid, fitted by a cubic
   polynomial) and then *checked and corrected* with the stars: science stars predicted into the
   reference must land on reference stars; an affine correction fitted to the matches absorbs
   the usual few-tenths-of-a-pixel WCS errors. Where a WCS is missing, or disagrees with the
   stars, the map comes from asterism (triangle) matching of the two star lists (astroalign),
   refined the same way. The reference is resampled with cubic interpolation (cubic convolution
   for an affine map, a cubic spline for a distorted one); pixels whose interpolation support
   leaves the reference are NO_DATA — never extrapolated.
3. **PSF matching** (Alard & Lupton 1998; Alard 2000): the sharper image is convolved with a
   kernel that is a sum of Gaussians × polynomials (three widths scaled to the seeing difference,
   degrees 6/4/2: 49 basis functions), plus a wide "wing" Gaussian (2 × the broader FWHM, reach up
   to 25 px, fitted on stamps of 3 FWHM) when ≥ 25 stars support it, whose coefficients vary as
   a polynomial of the position (``spatial_order``, default 2), plus a differential background
   polynomial. The kernel sum is
   held constant over the frame (one photometric scale), so the flux-scale is fitted, not assumed.
   The fit is a weighted least squares over stamps around bright unsaturated stars that dominate
   their stamp, spread over the frame; stamps and pixels that do not fit (variables, transients on stars,
   cosmic rays) are clipped and the fit repeated. One star in five is held out of the fit and
   used to grade it.
4. **Subtraction**: ``science − K(x, y) ⊗ reference − background`` (or, when the reference has
   the broader PSF, ``(K ⊗ science − reference − background) / flux_scale``: the difference is in
   science units either way and a new source is positive).
5. **Noise map**: background variance (SEP RMS²) and photon noise (through the gain), the
   convolved image's through K²; the background part is calibrated on the difference's own sky
   pixels (SEP's RMS of a crowded field includes confusion noise that the subtraction removes).

The realtime budget (seconds per 2048² frame against the detector's own inference time) is
measured by ``bench/subtraction.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

from astrid.errors import AlignmentError, KernelFitError, NoOverlapError, SubtractionError
from astrid.imaging.stats import FWHM_PER_SIGMA, mad_sigma

__all__ = ["NO_DATA", "SATURATED", "Subtraction", "subtract"]

log = logging.getLogger(__name__)

METHOD = "alard-lupton"
METHOD_VERSION = 2  # 2: the wing term (WING_*)
NO_DATA = 1
SATURATED = 2

MIN_SIDE = 64  # below this there is no room for a kernel, its stamps and a background mesh
DETECT_SIGMA = 5.0
ALIGN_STARS = 300  # brightest stars of each image used to register them
# control points for asterism matching, tried in turn: 30 is fast (0.1 s, 1 s to give up); a crowded
# 2048² pair shared only 14 of its 30 brightest stars and needed 50 (4 s to give up)
ASTERISM_STARS = (30, 50)
MIN_ALIGN_MATCHES = 6  # star pairs for an asterism registration (and for an affine WCS correction)
MIN_WCS_MATCHES = 3  # star pairs that confirm a WCS (fewer than 6: only a shift is corrected)
AFFINE_TOLERANCE = 0.01  # px: a map this close to affine is resampled with the affine fast path
# Alard-Lupton basis (the ISIS/HOTPANTS default): Gaussian σ in units of the seeing-difference σ, and
# the polynomial degree of each.
BASIS_WIDTHS = (0.5, 1.0, 2.0)
BASIS_DEGREES = (6, 4, 2)
KERNEL_REACH_SIGMA = 3.0  # kernel half-width in units of the widest σ
MAX_HALF_WIDTH = 25
# The wing term: one more (zero-sum) Gaussian of σ = WING_SIGMA_FWHM × the broader FWHM, degree
# WING_DEGREE, which carries the broader image's Moffat wings (r⁻⁵·⁶ against the sharper one's r⁻⁷)
# out to MAX_HALF_WIDTH px; its fit stamps are WING_HALF_FWHM × that FWHM a side, so the wide term
# is measured where it matters instead of being degenerate with the background. Used only when at
# least WING_MIN_STARS stars have whole stamps of that size: with 10–18 stars the kernel sum came
# out up to 3 % off (512²–640² pairs), with ≥ 24 within 0.35 %; without it the kernel sum was ~1 % low
# and bright stars left +0.4σ per pixel at 15–20 px, where the detector made false detections
# (docs/subtraction.md).
WING_SIGMA_FWHM = 2.0
WING_DEGREE = 0
WING_HALF_FWHM = 3.0
WING_MIN_STARS = 25
MIN_BASIS_SIGMA = 0.8  # px: floor of that σ (same seeing still needs shifts and shape terms)
HOLDOUT_EVERY = 5  # one kernel star in this many grades the fit instead of entering it
HALF_FWHM = 1.5  # fitted stamp half-size in units of the larger FWHM
CLIP_SIGMA = 5.0  # pixel residuals beyond this many σ are dropped from the next iteration
FIT_ITERATIONS = 2
GAIN_RANGE = (1e-3, 1e5)  # e-/ADU: a header GAIN outside this is a typo, not a detector
_STAR_DTYPE = [("x", "f8"), ("y", "f8"), ("flux", "f8"), ("peak", "f8"), ("flag", "i4")]


@dataclass
class Subtraction:
    """A difference image with its noise map, the aligned reference, a mask and quality figures.
    All arrays are on the science pixel grid."""

    difference: np.ndarray
    noise: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        """True where the difference is a real pixel (not NO_DATA)."""
        return (self.mask & NO_DATA) == 0

    def header(self, base: fits.Header | None = None) -> fits.Header:
        """``base`` (e.g. the science header: it carries the WCS the difference shares) plus the
        method and its quality figures as ``ASTRID SUB*`` cards."""
        h = base.copy() if base is not None else fits.Header()
        h["IMAGETYP"] = ("DIFFERENCE", "science - PSF-matched reference")
        cards = {
            "METHOD": (self.meta.get("method"), "difference imaging method"),
            "ALIGN": (self.meta.get("alignment"), "how the reference was registered"),
            "ALRMS": (self.meta.get("alignment_rms_px"), "[px] star residual rms of the alignment"),
            "OVERLAP": (self.meta.get("overlap_fraction"), "fraction of the science frame covered"),
            "FSCALE": (self.meta.get("flux_scale"), "science / reference photometric ratio"),
            "NSTARS": (self.meta.get("kernel_stars"), "stars used to fit the kernel"),
            "KCHI2": (self.meta.get("kernel_fit_chi2"), "median reduced chi2 of the kernel fit"),
            "SCHI2": (self.meta.get("star_chi2_median"), "median chi2/pix of held-out stars"),
        }
        for key, (value, comment) in cards.items():
            if value is not None:
                h[f"HIERARCH ASTRID SUB {key}"] = (
                    round(value, 5) if isinstance(value, float) else value,
                    comment,
                )
        return h

    def write(self, difference_path: Any, noise_path: Any = None, header: fits.Header | None = None) -> dict:
        """Write the difference (and the noise map) as float32 FITS with :meth:`header`.
        Returns ``{"difference_uri": ..., "noise_uri": ...}`` (``noise_uri`` only when written)."""
        from astrid.imaging.fits import write_image

        h = self.header(header)
        out = {"difference_uri": str(write_image(difference_path, self.difference, h))}
        if noise_path is not None:
            hn = h.copy()
            hn["IMAGETYP"] = ("NOISE", "1-sigma noise of the difference image")
            out["noise_uri"] = str(write_image(noise_path, self.noise, hn))
        return out


# --------------------------------------------------------------------------------------------
# per-image preparation


@dataclass
class _Image:
    role: str
    data: np.ndarray  # float32, background subtracted, bad pixels 0
    back: np.ndarray
    sky: float  # median background
    rms: np.ndarray
    global_rms: float
    bad: np.ndarray  # non-finite input
    saturated: np.ndarray
    saturation: float | None
    gain: float | None
    gain_source: str
    wcs: WCS | None
    wcs_problem: str | None
    stars: np.ndarray  # structured: x, y, flux, peak, flag (brightest first)
    notes: list[str] = field(default_factory=list)


def _as_image(array: Any, role: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise SubtractionError(f"the {role} image must be 2-D, got shape {a.shape}: pass one image plane")
    if min(a.shape) < MIN_SIDE:
        raise SubtractionError(
            f"the {role} image is {a.shape[1]}×{a.shape[0]} px, below {MIN_SIDE} px a side: too small to "
            f"fit a PSF-matching kernel; pass a larger frame or a ready-made difference image"
        )
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise SubtractionError(f"the {role} image has dtype {a.dtype}, not real numbers")
    a = np.ascontiguousarray(a, dtype=np.float32)
    finite = np.isfinite(a)
    if finite.mean() < 0.5:
        raise SubtractionError(
            f"the {role} image is mostly NaN/inf ({finite.mean():.1%} finite): it has no usable pixels"
        )
    values = a[finite]
    if values.min() == values.max():
        raise SubtractionError(
            f"the {role} image is constant ({values[0]:g}): it has no noise, so it is not a sky image"
        )
    return a


def _header_float(header: Mapping | None, key: str) -> float | None:
    if header is None:
        return None
    try:
        value = float(header.get(key))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _wcs(header: fits.Header | None, shape: tuple[int, int], role: str) -> tuple[WCS | None, str | None]:
    if header is None:
        return None, None
    from astrid.imaging.fits import celestial_wcs  # the one WCS sanity check of the project

    problems: list[str] = []
    wcs = celestial_wcs(header, shape, f"{role} header", problems)
    return wcs, (problems[0] if problems else None)


def _prepare(image: np.ndarray, header: fits.Header | None, role: str) -> _Image:
    import sep

    bad = ~np.isfinite(image)
    notes: list[str] = []
    saturation = _header_float(header, "SATURATE")
    if saturation is not None and saturation <= float(np.nanmedian(image[::8, ::8])):
        notes.append(f"{role}: SATURATE = {saturation:g} is not above the image's median: ignored")
        saturation = None
    saturated = (image >= saturation) if saturation is not None else np.zeros(image.shape, dtype=bool)
    filled = np.where(bad, np.float32(0.0), image) if bad.any() else image
    bkg = sep.Background(filled, mask=bad | saturated, bw=64, bh=64, fw=3, fh=3)
    back = bkg.back(dtype=np.float32)
    rms = bkg.rms(dtype=np.float32)
    data = filled - back
    data[bad] = 0.0
    global_rms = float(bkg.globalrms)
    if not global_rms > 0:
        raise SubtractionError(
            f"the {role} image has no noise (its background RMS is {global_rms:g}): it is not a sky image"
        )
    sky = float(np.median(back[:: max(1, back.shape[0] // 256), :: max(1, back.shape[1] // 256)]))
    gain, gain_source = _header_float(header, "GAIN"), "header GAIN"
    if gain is not None and not GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]:
        notes.append(
            f"{role}: GAIN = {gain:g} e-/ADU is outside {GAIN_RANGE[0]:g}–{GAIN_RANGE[1]:g}: ignored"
        )
        gain = None
    if gain is None:
        if sky > DETECT_SIGMA * global_rms:  # sky photon noise dominates: gain = sky / rms²
            gain, gain_source = sky / global_rms**2, "sky level / sky variance"
        else:
            gain_source = "unknown (sky-subtracted image without GAIN): background noise only"
    wcs, problem = _wcs(header, image.shape, role)
    return _Image(
        role=role,
        data=data,
        back=back,
        sky=sky,
        rms=rms,
        global_rms=global_rms,
        bad=bad,
        saturated=saturated,
        saturation=saturation,
        gain=gain,
        gain_source=gain_source,
        wcs=wcs,
        wcs_problem=problem,
        stars=_stars(data, global_rms, bad | saturated),
        notes=notes,
    )


def _stars(data: np.ndarray, rms: float, mask: np.ndarray) -> np.ndarray:
    """SEP sources above DETECT_SIGMA, brightest first (empty when extraction gives up)."""
    import sep

    sep.set_extract_pixstack(max(300_000, data.size // 4))
    sep.set_sub_object_limit(4096)
    for sigma in (DETECT_SIGMA, 3 * DETECT_SIGMA):
        try:
            objects = sep.extract(data, sigma * rms, mask=mask, minarea=5)
            break
        except Exception as exc:  # SEP raises plain Exception on buffer overflows in crowded fields
            log.info("source extraction at %.0fσ failed (%s); retrying higher", sigma, exc)
    else:
        return np.zeros(0, dtype=_STAR_DTYPE)
    objects = objects[np.isfinite(objects["x"]) & np.isfinite(objects["y"]) & (objects["flux"] > 0)]
    order = np.argsort(-objects["flux"])
    out = np.zeros(len(order), dtype=_STAR_DTYPE)
    for name in out.dtype.names:
        out[name] = objects[name][order]
    return out


def _fwhm(img: _Image) -> float | None:
    """Median FWHM (px) of unblended unsaturated stars, from SEP's half-light radius (2·r50)."""
    import sep

    s = img.stars
    s = s[(s["flag"] == 0) & (s["peak"] < _peak_limit(img))][:100]
    if len(s) < 3:
        return None
    r50, flag = sep.flux_radius(img.data, s["x"], s["y"], np.full(len(s), 12.0), 0.5, subpix=5)
    r50 = r50[(flag == 0) & np.isfinite(r50) & (r50 > 0.3)]
    return float(2.0 * np.median(r50)) if len(r50) >= 3 else None


def _peak_limit(img: _Image) -> float:
    """Highest background-subtracted peak of a star we trust to be linear."""
    if img.saturation is not None:
        return 0.7 * img.saturation - img.sky
    return 0.5 * float(img.stars["peak"].max()) if len(img.stars) else 0.0


# --------------------------------------------------------------------------------------------
# alignment: a smooth map from science pixels to reference pixels


def _terms(x: Any, y: Any, order: int) -> list[Any]:
    """Monomials x^i y^j (i + j ≤ order), constant first."""
    return [x**i * y ** (d - i) for d in range(order + 1) for i in range(d, -1, -1)]


def _grid(shape: tuple[int, int], n: int = 17) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of an n×n grid spanning the frame, corners included."""
    h, w = shape
    gy, gx = np.meshgrid(np.linspace(0, h - 1, n), np.linspace(0, w - 1, n), indexing="ij")
    return gx.ravel(), gy.ravel()


@dataclass
class _Frame:
    """Normalised coordinates of a frame: u = (x − cx) / half, v = (y − cy) / half, so polynomial
    coefficients stay well conditioned whatever the frame size."""

    cx: float
    cy: float
    half: float

    @classmethod
    def of(cls, shape: tuple[int, int]) -> _Frame:
        h, w = shape
        return cls((w - 1) / 2, (h - 1) / 2, max(h, w) / 2)

    def norm(self, x: Any, y: Any) -> tuple[Any, Any]:
        return (x - self.cx) / self.half, (y - self.cy) / self.half


@dataclass
class _PixelMap:
    """Science pixel (x, y) → reference pixel: a polynomial in the science frame's normalised
    coordinates."""

    frame: _Frame
    order: int
    coef_x: np.ndarray
    coef_y: np.ndarray

    @classmethod
    def fit(cls, frame: _Frame, x: Any, y: Any, rx: Any, ry: Any, order: int) -> _PixelMap:
        a = np.column_stack(_terms(*frame.norm(np.asarray(x, float), np.asarray(y, float)), order))
        cx = np.linalg.lstsq(a, np.asarray(rx, float), rcond=None)[0]
        cy = np.linalg.lstsq(a, np.asarray(ry, float), rcond=None)[0]
        return cls(frame, order, cx, cy)

    def __call__(self, x: Any, y: Any) -> tuple[Any, Any]:
        t = _terms(*self.frame.norm(x, y), self.order)
        return (
            sum(c * v for c, v in zip(self.coef_x, t, strict=True)),
            sum(c * v for c, v in zip(self.coef_y, t, strict=True)),
        )

    def affine(self, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """The best affine approximation (3×3, science (x, y, 1) → reference) over the frame and
        its worst deviation from this map, in reference px."""
        gx, gy = _grid(shape)
        rx, ry = self(gx, gy)
        a = np.column_stack([gx, gy, np.ones_like(gx)])
        mx = np.linalg.lstsq(a, rx, rcond=None)[0]
        my = np.linalg.lstsq(a, ry, rcond=None)[0]
        deviation = float(np.max(np.hypot(a @ mx - rx, a @ my - ry)))
        return np.array([mx, my, [0.0, 0.0, 1.0]]), deviation

    def inverse(self, shape: tuple[int, int], ref_shape: tuple[int, int]) -> _PixelMap:
        """Reference px → science px, fitted through this map on a 17×17 grid of the science frame."""
        gx, gy = _grid(shape)
        rx, ry = self(gx, gy)
        return _PixelMap.fit(_Frame.of(ref_shape), rx, ry, gx, gy, self.order)

    def describe(self, shape: tuple[int, int]) -> dict[str, float]:
        """Offset of the frame centre, rotation and scale (local Jacobian at the centre)."""
        h, w = shape
        cx, cy = (w - 1) / 2, (h - 1) / 2
        x0, y0 = self(cx, cy)
        x1, y1 = self(cx + 1.0, cy)
        x2, y2 = self(cx, cy + 1.0)
        jac = np.array([[x1 - x0, x2 - x0], [y1 - y0, y2 - y0]], dtype=float)
        return {
            "shift_x_px": float(x0 - cx),
            "shift_y_px": float(y0 - cy),
            "rotation_deg": math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1])),
            "scale": math.sqrt(abs(float(np.linalg.det(jac)))),
        }


@dataclass
class _Alignment:
    pixel_map: _PixelMap
    method: str
    rms: float | None
    n_matches: int
    notes: list[str]


def _bright(img: _Image) -> np.ndarray:
    """The brightest (linear, where a saturation level is known) stars, for registration."""
    s = img.stars
    if img.saturation is not None:
        s = s[s["peak"] < _peak_limit(img)]
    return s[:ALIGN_STARS]


def _match(px: np.ndarray, py: np.ndarray, rx: np.ndarray, ry: np.ndarray, radius: float):
    """Indices (i into p, j into r) of mutual nearest neighbours closer than ``radius``."""
    if len(px) == 0 or len(rx) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    d, j = cKDTree(np.column_stack([rx, ry])).query(np.column_stack([px, py]), distance_upper_bound=radius)
    ok = np.isfinite(d)
    i, j = np.nonzero(ok)[0], j[ok]
    _, back = cKDTree(np.column_stack([px, py])).query(np.column_stack([rx[j], ry[j]]))
    mutual = back == i
    return i[mutual], j[mutual]


def _refine(
    shape: tuple[int, int],
    guess: _PixelMap,
    sci: np.ndarray,
    ref: np.ndarray,
    radius: float,
    min_matches: int,
) -> tuple[_PixelMap, float, int] | None:
    """Match science stars (mapped by ``guess``) to reference stars within ``radius`` and fit an
    affine correction (a shift with fewer than MIN_ALIGN_MATCHES pairs) with 3σ clipping:
    ``(corrected map, rms, matches)``, or ``None`` with fewer than ``min_matches`` pairs."""
    px, py = guess(sci["x"], sci["y"])
    i, j = _match(px, py, ref["x"], ref["y"], radius)
    if len(i) < min_matches:
        return None
    sx, sy, dx, dy = sci["x"][i], sci["y"][i], ref["x"][j] - px[i], ref["y"][j] - py[i]
    keep = np.ones(len(i), bool)
    for _ in range(5):
        order = 1 if keep.sum() >= MIN_ALIGN_MATCHES else 0
        corr = _PixelMap.fit(guess.frame, sx[keep], sy[keep], dx[keep], dy[keep], order)
        cx, cy = corr(sx, sy)
        resid = np.hypot(dx - cx, dy - cy)
        # robust clipping: the median 2-D residual (≈ 1.18 σ) is blind to the few false pairs
        # (a transient next to a star) that would inflate an rms-based threshold
        new = resid <= max(3.0 * float(np.median(resid[keep])), 0.1)
        if new.sum() < min_matches or np.array_equal(new, keep):
            break
        keep = new
    rms = float(np.sqrt(np.mean(resid[keep] ** 2)))
    gx, gy = _grid(shape)
    bx, by = guess(gx, gy)
    cx, cy = corr(gx, gy)
    return _PixelMap.fit(guess.frame, gx, gy, bx + cx, by + cy, guess.order), rms, int(keep.sum())


def _wcs_map(sci: _Image, ref: _Image, shape: tuple[int, int]) -> _PixelMap | None:
    """The WCS-predicted map (cubic polynomial through a 17×17 grid), or ``None``."""
    from astropy.wcs.utils import pixel_to_pixel

    gx, gy = _grid(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rx, ry = pixel_to_pixel(sci.wcs, ref.wcs, gx, gy)
        except Exception as exc:  # astropy raises many kinds for incompatible frames
            log.info("WCS pixel map failed: %s", exc)
            return None
    rx, ry = np.asarray(rx, float), np.asarray(ry, float)
    if not (np.all(np.isfinite(rx)) and np.all(np.isfinite(ry))):
        return None
    return _PixelMap.fit(_Frame.of(shape), gx, gy, rx, ry, 3)


def _asterism_map(s: np.ndarray, r: np.ndarray, shape: tuple[int, int]) -> _PixelMap | None:
    """Similarity transform from triangle (asterism) matching of the two star lists, or ``None``."""
    import astroalign

    if len(s) < MIN_ALIGN_MATCHES or len(r) < MIN_ALIGN_MATCHES:
        return None
    try:
        transform, _ = astroalign.find_transform(
            np.column_stack([s["x"], s["y"]]),
            np.column_stack([r["x"], r["y"]]),
            max_control_points=len(s),
        )
    except (astroalign.MaxIterError, ValueError, TypeError, IndexError) as exc:
        log.info("asterism matching failed: %s", exc)
        return None
    if not 0.2 < transform.scale < 5.0:
        return None
    m = transform.params  # science (x, y, 1) → reference
    gx, gy = _grid(shape, 3)
    return _PixelMap.fit(_Frame.of(shape), gx, gy, *(m[:2, :2] @ np.vstack([gx, gy]) + m[:2, 2:]), 1)


def _align(sci: _Image, ref: _Image, max_rms: float) -> _Alignment:
    shape = sci.data.shape
    s, r = _bright(sci), _bright(ref)
    notes: list[str] = []
    both = sci.wcs is not None and ref.wcs is not None
    wcs_map = _wcs_map(sci, ref, shape) if both else None
    if wcs_map is not None:
        for radius in (3.0, 8.0):
            refined = _refine(shape, wcs_map, s, r, radius, MIN_WCS_MATCHES)
            if refined is not None and refined[1] <= max_rms:
                return _Alignment(refined[0], "wcs+stars", refined[1], refined[2], notes)
        if len(s) < MIN_WCS_MATCHES or len(r) < MIN_WCS_MATCHES:
            notes.append(f"too few stars to check the WCS ({len(s)} science, {len(r)} reference): used as is")
            return _Alignment(wcs_map, "wcs", None, 0, notes)
        notes.append("the WCS disagrees with the stars: registered by asterism matching instead")
    elif both:  # no finite map: the frames lie on parts of the sky that do not project onto each other
        notes.append("the two WCSs map no science pixel into the reference")
    else:
        notes += [
            f"{img.role}: {img.wcs_problem or 'no celestial WCS'}" for img in (sci, ref) if img.wcs is None
        ]
    # control points: the brightest sources by flux, saturated ones included — a saturation cut
    # keeps different stars in the two images (other depth, seeing, flux scale) and the two
    # lists then share too few triangles (measured: failed on a 2048² pair)
    for n in ASTERISM_STARS:
        guess = _asterism_map(sci.stars[:n], ref.stars[:n], shape)
        refined = _refine(shape, guess, s, r, 2.0, MIN_ALIGN_MATCHES) if guess is not None else None
        if refined is not None and refined[1] <= max_rms:
            return _Alignment(refined[0], "asterism", refined[1], refined[2], notes)
    if both and wcs_map is None:
        raise NoOverlapError(
            "the reference does not overlap the science frame (their WCSs place them on different parts of "
            "the sky) and no common star pattern was found: pass the reference image of this field"
        )
    if wcs_map is not None:
        overlap = _overlap(wcs_map, shape, ref.data.shape)
        if overlap < 0.01:
            raise NoOverlapError(
                f"the reference does not overlap the science frame (by their WCSs, {overlap:.1%} of it) and "
                f"no common star pattern was found: pass the reference image of this field"
            )
        raise AlignmentError(
            f"the reference WCS disagrees with the stars (no consistent match of {len(s)} science and "
            f"{len(r)} reference stars within 8 px of where the WCSs put them, {overlap:.0%} predicted "
            f"overlap) and no common star pattern was found: re-solve the astrometry of both images or "
            f"pass the reference of this field"
        )
    raise AlignmentError(
        f"cannot register the reference ({'; '.join(notes)}) and no common star pattern was found among "
        f"{len(s)} science and {len(r)} reference stars: add a WCS to both headers or pass the reference "
        f"of this field"
    )


def _overlap(pm: _PixelMap, shape: tuple[int, int], ref_shape: tuple[int, int]) -> float:
    """Fraction of the science frame the reference covers (on a 64×64 grid)."""
    gx, gy = _grid(shape, 64)
    rx, ry = pm(gx, gy)
    h, w = ref_shape
    return float(np.mean((rx >= 0) & (rx <= w - 1) & (ry >= 0) & (ry <= h - 1)))


def _resample(
    pm: _PixelMap, shape: tuple[int, int], pad: int, ref: _Image
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The background-subtracted reference on the science grid grown by ``pad`` px a side:
    ``(aligned, footprint, saturated, resampling model)``. The footprint is where the 4×4 cubic
    support lies inside the reference and on finite pixels; ``saturated`` where it touches a
    saturated reference pixel."""
    from skimage.transform import AffineTransform, warp

    h, w = shape[0] + 2 * pad, shape[1] + 2 * pad
    rh, rw = ref.data.shape
    matrix, deviation = pm.affine(shape)
    if deviation <= AFFINE_TOLERANCE:
        full = matrix @ np.array([[1.0, 0.0, -pad], [0.0, 1.0, -pad], [0.0, 0.0, 1.0]])  # padded → ref
        aligned = warp(
            ref.data, AffineTransform(matrix=full), output_shape=(h, w), order=3, mode="constant",
            cval=np.nan, preserve_range=True,
        ).astype(np.float32)  # fmt: skip
        m = full.astype(np.float32)
        xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        rx, ry = m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        model = "affine, cubic convolution"
    else:
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        rx, ry = (np.asarray(a, dtype=np.float32) for a in pm(xs - pad, ys - pad))
        aligned = ndimage.map_coordinates(
            ref.data, [ry, rx], order=3, mode="constant", cval=np.nan, output=np.float32
        )
        model = f"polynomial order {pm.order}, cubic spline"
    footprint = (rx >= 1) & (rx <= rw - 2) & (ry >= 1) & (ry <= rh - 2) & np.isfinite(aligned)
    # flagged reference pixels are few: map them, rather than resampling whole masks
    inverse = pm.inverse(shape, ref.data.shape)
    footprint &= ~_touched(ref.bad, inverse, pad, (h, w))
    saturated = _touched(ref.saturated, inverse, pad, (h, w)) & footprint
    return np.where(footprint, aligned, np.float32(0.0)), footprint, saturated, model


def _touched(mask: np.ndarray, inverse: _PixelMap, pad: int, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of the padded science grid whose cubic (4×4) support includes a pixel of ``mask``
    (a reference-frame mask; ``inverse`` maps reference → science px)."""
    out = np.zeros(shape, dtype=bool)
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return out
    x, y = inverse(cols.astype(np.float64), rows.astype(np.float64))
    x0, y0 = np.floor(np.asarray(x) + pad).astype(np.int64), np.floor(np.asarray(y) + pad).astype(np.int64)
    h, w = shape
    for dy in range(-1, 3):
        for dx in range(-1, 3):
            r, c = y0 + dy, x0 + dx
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            out[r[ok], c[ok]] = True
    return out


# --------------------------------------------------------------------------------------------
# the PSF-matching kernel


@dataclass
class _Basis:
    """Separable Gaussian × polynomial kernel basis (Alard & Lupton). ``images[k]`` is the k-th
    (2hw+1)² basis image; every basis but the first is made zero-sum, so that the first one's
    (spatially constant) coefficient alone is the photometric scale."""

    hw: int
    sigmas: tuple[float, ...]
    filters: np.ndarray  # (n_filters, 2hw+1): f(u) = exp(-u²/2σ²) (u/σ)^a, unit L2 norm
    pairs: list[tuple[int, int]]  # (x filter, y filter) of each basis image
    sums: np.ndarray  # sum of each raw (separable) basis image
    images: np.ndarray  # (n, 2hw+1, 2hw+1)

    @classmethod
    def build(cls, sigma_match: float, hw: int | None, wing_sigma: float | None = None) -> _Basis:
        s = max(sigma_match, MIN_BASIS_SIGMA)
        sigmas = tuple(s * f for f in BASIS_WIDTHS)
        degrees = BASIS_DEGREES
        if wing_sigma is not None and wing_sigma > sigmas[-1]:
            sigmas, degrees = (*sigmas, wing_sigma), (*degrees, WING_DEGREE)
        if hw is None:
            hw = int(np.clip(math.ceil(KERNEL_REACH_SIGMA * sigmas[-1]), 4, MAX_HALF_WIDTH))
        u = np.arange(-hw, hw + 1, dtype=np.float64)
        filters: list[np.ndarray] = []
        pairs: list[tuple[int, int]] = []
        for sigma, degree in zip(sigmas, degrees, strict=True):
            first = len(filters)
            for a in range(degree + 1):
                f = np.exp(-0.5 * (u / sigma) ** 2) * (u / sigma) ** a
                filters.append(f / np.sqrt(np.sum(f * f)))
            pairs += [(first + a, first + b) for a in range(degree + 1) for b in range(degree + 1 - a)]
        raw = np.array([np.outer(filters[fy], filters[fx]) for fx, fy in pairs])
        sums = raw.sum(axis=(1, 2))
        images = raw.copy()
        images[0] /= sums[0]
        images[1:] -= sums[1:, None, None] * images[0]
        return cls(hw, sigmas, np.array(filters), pairs, sums, images)

    def __len__(self) -> int:
        return len(self.pairs)

    def convolve_stamps(self, stamps: np.ndarray, half: int) -> np.ndarray:
        """Every basis image convolved with every stamp ((n, 2(half+hw)+1, same)), on the central
        (2·half+1)² pixels: ``(n_stamps, n_basis, npix)``, in the zero-sum form of :attr:`images`.
        Separable, so each 1-D pass is one matrix product."""
        n, big, _ = stamps.shape
        hw, out = self.hw, 2 * half + 1
        # 1-D convolution as a matrix: result[c] = Σ_t f[t] · stamp[c + 2hw − t] (output c ↔ stamp c + hw)
        toeplitz = np.zeros((len(self.filters), big, out))
        cols = np.arange(out)
        for t in range(2 * hw + 1):
            toeplitz[:, cols + 2 * hw - t, cols] = self.filters[:, t : t + 1]
        along_x = np.einsum("nrc,kco->knro", stamps, toeplitz, optimize=True)
        conv = np.empty((n, len(self), out, out))
        for k, (fx, fy) in enumerate(self.pairs):
            conv[:, k] = np.einsum("ro,nrc->noc", toeplitz[fy], along_x[fx], optimize=True)
        conv = conv.reshape(n, len(self), out * out)
        conv[:, 0] /= self.sums[0]
        conv[:, 1:] -= self.sums[1:, None] * conv[:, :1]
        return conv


@dataclass
class _Kernel:
    """K(x, y) = Σ_j P_j(u, v) K_j, with P_j the monomials of the normalised science coordinates,
    plus a differential background polynomial."""

    basis: _Basis
    frame: _Frame
    spatial_order: int
    background_order: int
    coef: np.ndarray  # (n_basis, n_terms); the first basis has only its constant term
    bg_coef: np.ndarray

    @property
    def scale(self) -> float:
        """The kernel sum: the photometric ratio convolved → target."""
        return float(self.coef[0, 0])

    def images(self) -> np.ndarray:
        """The K_j, (n_terms, 2hw+1, 2hw+1)."""
        return np.einsum("kj,kab->jab", self.coef, self.basis.images)

    def at(self, x: float, y: float) -> np.ndarray:
        t = np.array(_terms(*self.frame.norm(x, y), self.spatial_order), dtype=float)
        return np.einsum("j,jab->ab", t, self.images())


def _stamps(image: np.ndarray, x: np.ndarray, y: np.ndarray, half: int, origin: int = 0) -> np.ndarray:
    """(2·half+1)² cut-outs of ``image`` centred on the pixels nearest to science (x, y); array
    pixel = science pixel + ``origin``."""
    r, c = np.rint(y).astype(int) + origin, np.rint(x).astype(int) + origin
    idx = np.arange(-half, half + 1)
    return image[(r[:, None] + idx)[:, :, None], (c[:, None] + idx)[:, None, :]]


def _fit_kernel(
    source: np.ndarray,
    target: np.ndarray,
    target_var: np.ndarray,
    target_gain: float | None,
    x: np.ndarray,
    y: np.ndarray,
    frame: _Frame,
    origin: int,
    basis: _Basis,
    half: int,
    spatial_order: int,
    background_order: int,
    min_stars: int,
) -> tuple[_Kernel, dict[str, Any], np.ndarray]:
    """Weighted least squares of ``K ⊗ source + background ≈ target`` over star stamps centred on
    science pixels (x, y) (array pixel = science pixel + ``origin``), clipping pixels beyond
    CLIP_SIGMA and stamps far above the median χ². Returns the kernel, fit figures and the
    mask of stamps kept."""
    conv = basis.convolve_stamps(_stamps(source, x, y, half + basis.hw, origin).astype(np.float64), half)
    n, nb, npix = conv.shape
    tgt = _stamps(target, x, y, half, origin).reshape(n, npix).astype(np.float64)
    var0 = _stamps(target_var, x, y, half, origin).reshape(n, npix).astype(np.float64)
    ext = np.concatenate([conv, np.ones((n, 1, npix))], axis=1)  # + the background column
    ext_t = np.ascontiguousarray(ext.transpose(0, 2, 1))  # batched matmul needs it contiguous (17× faster)
    u, v = frame.norm(x, y)
    p_k = np.column_stack(_terms(u, v, spatial_order))
    p_b = np.column_stack(_terms(u, v, background_order))
    n_terms = max(p_k.shape[1], p_b.shape[1])
    # spatial weights of each column's coefficients at each stamp: (n, nb + 1, n_terms)
    poly = np.zeros((n, nb + 1, n_terms))
    poly[:, 0, 0] = 1.0
    poly[:, 1:nb, : p_k.shape[1]] = p_k[:, None, :]
    poly[:, nb, : p_b.shape[1]] = p_b
    active = np.array(
        [0]
        + [k * n_terms + j for k in range(1, nb) for j in range(p_k.shape[1])]
        + [nb * n_terms + j for j in range(p_b.shape[1])]
    )
    weights = 1.0 / var0
    background_var = var0 - (np.maximum(tgt, 0) / target_gain if target_gain is not None else 0.0)
    keep = np.ones(n, bool)
    good = np.ones((n, npix), bool)
    for iteration in range(FIT_ITERATIONS + 1):
        w = np.where(good, weights, 0.0) * keep[:, None]
        m = np.matmul(ext * w[:, None, :], ext_t)  # (n, nb+1, nb+1)
        b_s = np.matmul(ext, (w * tgt)[:, :, None])[:, :, 0]
        a_full = np.einsum("nkj,nkl,nli->kjli", poly, m, poly, optimize=True).reshape(
            (nb + 1) * n_terms, (nb + 1) * n_terms
        )
        b_full = np.einsum("nkj,nk->kj", poly, b_s).ravel()
        a, b = a_full[np.ix_(active, active)], b_full[active]
        a[np.diag_indices_from(a)] += 1e-10 * np.trace(a) / len(a)
        try:  # numpy's BLAS throughout: mixing in SciPy's OpenBLAS makes the two thread pools fight
            theta = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            theta = np.linalg.lstsq(a, b, rcond=None)[0]
        full = np.zeros((nb + 1) * n_terms)
        full[active] = theta
        coef = full.reshape(nb + 1, n_terms)
        model = np.matmul(np.einsum("nkj,kj->nk", poly, coef)[:, None, :], ext)[:, 0, :]
        if target_gain is not None:  # the photon noise of the model, not of the noisy data
            weights = 1.0 / np.maximum(background_var + np.maximum(model, 0) / target_gain, 1e-12)
        chi = (tgt - model) * np.sqrt(weights)
        chi2 = np.sum(np.where(good, chi * chi, 0.0), axis=1) / np.maximum(good.sum(axis=1), 1)
        if iteration == FIT_ITERATIONS:
            break
        good = np.abs(chi) < CLIP_SIGMA
        med = float(np.median(chi2[keep]))
        mad = mad_sigma(chi2[keep], med)
        candidate = keep & (chi2 <= med + max(3.0 * mad, 0.5 * med))
        if candidate.sum() >= max(min_stars, n // 2):
            keep = candidate
    kernel = _Kernel(
        basis,
        frame,
        spatial_order,
        background_order,
        coef[:nb, : p_k.shape[1]].copy(),
        coef[nb, : p_b.shape[1]].copy(),
    )
    stats: dict[str, Any] = {
        "kernel_fit_chi2": float(np.median(chi2[keep])),
        "kernel_stars": int(keep.sum()),
        "kernel_stars_rejected": int(n - keep.sum()),
    }
    return kernel, stats, keep


def _polynomial_image(frame: _Frame, shape: tuple[int, int], origin: int, order: int) -> list[np.ndarray]:
    h, w = shape
    u, v = frame.norm(
        np.arange(w, dtype=np.float32)[None, :] - origin, np.arange(h, dtype=np.float32)[:, None] - origin
    )
    return [np.broadcast_to(np.asarray(t, dtype=np.float32), shape) for t in _terms(u, v, order)]


def _convolve(image: np.ndarray, kernels: np.ndarray) -> list[np.ndarray]:
    """``image`` convolved with each (2hw+1)² kernel, same shape, zero outside (FFT, one forward
    transform of the image)."""
    h, w = image.shape
    hw = kernels.shape[-1] // 2
    shape = (sfft.next_fast_len(h + 2 * hw, real=True), sfft.next_fast_len(w + 2 * hw, real=True))
    spectrum = sfft.rfft2(image, s=shape, workers=-1)
    out = []
    for k in kernels:
        conv = sfft.irfft2(
            spectrum * sfft.rfft2(k.astype(np.float32), s=shape, workers=-1), s=shape, workers=-1
        )
        out.append(conv[hw : hw + h, hw : hw + w])
    return out


def _grow(mask: np.ndarray, hw: int) -> np.ndarray:
    """``mask`` dilated by a (2hw+1)² square."""
    if hw <= 0 or not mask.any():
        return mask
    return ndimage.maximum_filter(mask.view(np.uint8), size=2 * hw + 1, mode="constant") > 0


def _erode(mask: np.ndarray, hw: int) -> np.ndarray:
    return ~_grow(~mask, hw)


def _kernel_stars(
    img: _Image, usable: np.ndarray, origin: int, half: int, reach: int, limit: int
) -> np.ndarray:
    """Indices into ``img.stars`` of unsaturated stars that dominate their (2·half+1)² fit stamp and
    whose whole (2·reach+1)² source stamp is ``usable`` (an array whose pixel = science pixel +
    ``origin``), brightest first in turn over a 4×4 grid of the frame (so the spatial terms are
    constrained everywhere)."""
    s = img.stars
    h, w = img.data.shape
    snr = s["flux"] / (img.global_rms * (2 * half + 1))
    idx = np.flatnonzero((s["peak"] < _peak_limit(img)) & (snr > 10.0) & ((s["flag"] & ~1) == 0))
    r, c = np.rint(s["y"][idx]).astype(int) + origin, np.rint(s["x"][idx]).astype(int) + origin
    uh, uw = usable.shape
    inside = (r >= reach) & (r < uh - reach) & (c >= reach) & (c < uw - reach)
    idx, r, c = idx[inside], r[inside], c[inside]
    idx = idx[np.all(_stamps(usable, c - origin, r - origin, reach, origin), axis=(1, 2))]
    if len(idx) == 0:
        return idx
    # the stamp is centred on its brightest source (fainter neighbours are fine: they are in both
    # images and the kernel model accounts for them)
    tree = cKDTree(np.column_stack([s["x"], s["y"]]))
    near = tree.query_ball_point(np.column_stack([s["x"][idx], s["y"][idx]]), half * math.sqrt(2))
    dominant = np.array([max(nb, key=lambda j: s["flux"][j]) == i for i, nb in zip(idx, near, strict=True)])
    idx = idx[dominant]
    cell = (np.minimum(s["y"][idx] * 4 // h, 3) * 4 + np.minimum(s["x"][idx] * 4 // w, 3)).astype(int)
    rank = np.zeros(len(idx), int)
    for k in np.unique(cell):
        members = np.flatnonzero(cell == k)  # already brightest first
        rank[members] = np.arange(len(members))
    return idx[np.argsort(rank, kind="stable")][:limit]


def _star_chi2(
    difference: np.ndarray, noise: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float
) -> np.ndarray:
    """Mean χ² per pixel in a circular aperture of ``radius`` px around each (x, y); NaN where any
    pixel of the aperture has no data."""
    r = math.ceil(radius)
    idx = np.arange(-r, r + 1)
    aperture = (idx[None, :] ** 2 + idx[:, None] ** 2) <= radius**2
    chi = (_stamps(difference, x, y, r) / _stamps(noise, x, y, r))[:, aperture]
    return np.where(np.all(np.isfinite(chi), axis=1), np.mean(chi * chi, axis=1), np.nan)


def _photons(data: np.ndarray, gain: float | None) -> np.ndarray:
    """Photon-noise variance of what sits on the sky (0 when the gain is unknown)."""
    if gain is None:
        return np.zeros(data.shape, dtype=np.float32)
    return np.maximum(data, 0.0) * np.float32(1.0 / gain)


def _variance(data: np.ndarray, background_var: Any, gain: float | None) -> np.ndarray:
    """Background variance plus the photon noise of what sits on the sky."""
    return _photons(data, gain) + np.asarray(background_var, dtype=np.float32)


def _spread(variance: np.ndarray, k2: np.ndarray) -> np.ndarray:
    """A variance map through a convolution: ``variance ⊗ K²`` (0 stays 0)."""
    if not variance.any():
        return variance
    return np.maximum(_convolve(variance, k2[None])[0], 0.0)


def _calibrate(difference: np.ndarray, bg_var: np.ndarray, src_var: np.ndarray, masked: np.ndarray) -> float:
    """Factor for the background variance that makes sky pixels of the difference scatter as the
    noise map says (robust: 1.4826 × MAD of their pulls). SEP's background RMS of a crowded field
    includes the confusion noise of unresolved stars, which the subtraction removes: without this
    the noise map came out 12 % high there (docs/subtraction.md). 1.0 when too few sky pixels."""
    step = max(1, int(math.sqrt(difference.size / 250_000)))
    d, b, p, m = (a[::step, ::step] for a in (difference, bg_var, src_var, masked))
    sky = ~m & (p < 0.1 * b) & np.isfinite(d)
    if sky.sum() < 1000:
        return 1.0
    pull = d[sky] / np.sqrt(b[sky] + p[sky])
    sigma = mad_sigma(pull)
    return float(np.clip(sigma * sigma, 0.25, 4.0))


# --------------------------------------------------------------------------------------------
# the entry point


def subtract(
    science: np.ndarray,
    reference: np.ndarray,
    *,
    science_header: fits.Header | None = None,
    reference_header: fits.Header | None = None,
    spatial_order: int = 2,
    background_order: int = 1,
    kernel_half_width: int | None = None,
    min_overlap: float = 0.2,
    min_kernel_stars: int = 10,
    max_kernel_stars: int = 200,
    max_alignment_rms: float = 0.5,
    max_star_chi2: float = 5.0,
) -> Subtraction:
    """Align ``reference`` to ``science``, PSF-match them and subtract (see the module docs).

    Headers supply the celestial WCS (alignment by WCS when both have one, by star patterns
    otherwise), ``GAIN`` (e-/ADU, for the photon noise; estimated from the sky when absent) and
    ``SATURATE`` (ADU; saturated pixels stay out of every fit and are flagged in the mask).

    ``spatial_order``: polynomial degree (0–3) of the kernel's variation over the frame, lowered
    when too few stars support it (recorded in ``meta["notes"]``). ``background_order``: degree of
    the differential background. ``min_overlap``: smallest fraction of the science frame the
    reference must cover. ``max_alignment_rms``: px, star residual rms above which a registration
    is refused. ``max_star_chi2``: when held-out stars leave a median χ² per pixel above this, the
    difference is refused.

    Raises :class:`~astrid.errors.SubtractionError` (``NoOverlapError``, ``AlignmentError``,
    ``KernelFitError``) for pairs that cannot give an honest difference, ``ValueError`` for
    options out of range.
    """
    options = _Options(
        spatial_order=spatial_order,
        background_order=background_order,
        kernel_half_width=kernel_half_width,
        min_overlap=min_overlap,
        min_kernel_stars=min_kernel_stars,
        max_kernel_stars=max_kernel_stars,
        max_alignment_rms=max_alignment_rms,
        max_star_chi2=max_star_chi2,
    )
    from threadpoolctl import threadpool_limits

    # the fit's matrices are small (≤ 300²): BLAS threads only contend, and on a busy 2-core worker
    # OpenBLAS's spinning threads made the fit 15× slower (measured)
    with threadpool_limits(limits=1, user_api="blas"):
        return _subtract(science, reference, science_header, reference_header, options)


def _subtract(
    science: np.ndarray,
    reference: np.ndarray,
    science_header: fits.Header | None,
    reference_header: fits.Header | None,
    options: _Options,
) -> Subtraction:
    seconds: dict[str, float] = {}
    t0 = t = time.perf_counter()
    sci = _prepare(_as_image(science, "science"), science_header, "science")
    ref = _prepare(_as_image(reference, "reference"), reference_header, "reference")
    shape = sci.data.shape
    seconds["background_and_stars"] = time.perf_counter() - t

    t = time.perf_counter()
    alignment = _align(sci, ref, options.max_alignment_rms)
    predicted = _overlap(alignment.pixel_map, shape, ref.data.shape)
    if predicted < options.min_overlap:
        raise NoOverlapError(
            f"the reference covers only {predicted:.1%} of the science frame (minimum {options.min_overlap:.0%}): "
            f"pass a reference of this field, or lower min_overlap"
        )
    geometry = alignment.pixel_map.describe(shape)
    fwhm_sci, fwhm_ref_own = _fwhm(sci), _fwhm(ref)
    if fwhm_sci is None or fwhm_ref_own is None:
        raise KernelFitError(
            f"too few isolated unsaturated stars to measure the seeing ({len(sci.stars)} science and "
            f"{len(ref.stars)} reference sources above {DETECT_SIGMA:.0f}σ): no PSF-matching kernel can be "
            f"fitted; pass deeper images or a ready-made difference"
        )
    fwhm_ref = fwhm_ref_own / geometry["scale"]  # in science pixels
    convolve_reference = fwhm_ref <= fwhm_sci
    sigma_match = math.sqrt(abs(fwhm_sci**2 - fwhm_ref**2)) / FWHM_PER_SIGMA
    basis = _Basis.build(sigma_match, options.kernel_half_width)
    fwhm_max = max(fwhm_sci, fwhm_ref)
    # a user-fixed half-width keeps the three-Gaussian basis
    wing = (
        _Basis.build(sigma_match, None, WING_SIGMA_FWHM * fwhm_max)
        if options.kernel_half_width is None
        else None
    )
    core_hw = basis.hw
    pad = max(basis.hw, wing.hw if wing is not None else 0)
    ref_al, footprint, ref_sat, resampling = _resample(alignment.pixel_map, shape, pad, ref)
    inner = (slice(pad, pad + shape[0]), slice(pad, pad + shape[1]))
    overlap = float(footprint[inner].mean())
    if overlap < options.min_overlap:
        raise NoOverlapError(
            f"the reference covers only {overlap:.1%} of the science frame (minimum {options.min_overlap:.0%}): "
            f"pass a reference of this field, or lower min_overlap"
        )
    seconds["align"] = time.perf_counter() - t

    t = time.perf_counter()
    sci_data = np.pad(sci.data, pad)
    sci_bad = np.pad(sci.bad, pad, constant_values=True)
    sci_sat = np.pad(sci.saturated, pad)
    sci_bg = np.pad(sci.rms, pad, mode="edge") ** 2
    var_sci = _variance(sci_data, sci_bg, sci.gain)
    half = int(np.clip(math.ceil(HALF_FWHM * fwhm_max), 5, 40))
    usable = footprint & ~sci_bad & ~sci_sat & ~ref_sat

    def select(half: int, hw: int) -> tuple[np.ndarray, np.ndarray]:
        candidates = _kernel_stars(
            sci, usable, pad, half, half + hw, options.max_kernel_stars * HOLDOUT_EVERY // 4
        )
        holdout = np.zeros(len(candidates), bool)
        if len(candidates) >= 2 * options.min_kernel_stars:
            holdout[HOLDOUT_EVERY - 1 :: HOLDOUT_EVERY] = True
        return candidates[~holdout], candidates[holdout]

    fit_idx, qa_idx = select(half, basis.hw)
    if wing is not None and len(fit_idx) >= WING_MIN_STARS:
        half_w = int(np.clip(math.ceil(WING_HALF_FWHM * fwhm_max), half, 40))
        fit_w, qa_w = select(half_w, wing.hw)
        if len(fit_w) >= max(WING_MIN_STARS, options.min_kernel_stars):
            basis, half, fit_idx, qa_idx = wing, half_w, fit_w, qa_w
    if len(fit_idx) < options.min_kernel_stars:
        raise KernelFitError(
            f"only {len(fit_idx)} unsaturated stars bright enough, with whole stamps in the overlap (need "
            f"≥ {options.min_kernel_stars}) to fit the PSF-matching kernel: pass deeper or larger images, or a "
            f"ready-made difference"
        )
    order = options.spatial_order
    while order > 0 and len(fit_idx) < 5 * (order + 1) * (order + 2) // 2:
        order -= 1
    if convolve_reference:
        source, target, target_var, target_gain = ref_al, sci_data, var_sci, sci.gain
    else:
        source, target, target_gain = sci_data, ref_al, ref.gain
        target_var = _variance(ref_al, ref.global_rms**2, ref.gain)
    kernel, fit_stats, kept = _fit_kernel(
        source, target, target_var, target_gain, sci.stars["x"][fit_idx], sci.stars["y"][fit_idx],
        alignment.pixel_map.frame, pad, basis, half, order, options.background_order, options.min_kernel_stars,
    )  # fmt: skip
    if not kernel.scale > 0:
        raise KernelFitError(
            f"the fitted kernel has a non-positive flux scale ({kernel.scale:.3g}): the two images do not "
            f"share their stars; pass the reference of this field"
        )
    seconds["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    padded = sci_data.shape
    frame = alignment.pixel_map.frame
    matched = np.zeros(padded, dtype=np.float32)
    for term, conv in zip(
        _polynomial_image(frame, padded, pad, order), _convolve(source, kernel.images()), strict=True
    ):
        matched += term * conv
    background = sum(
        np.float32(c) * term
        for c, term in zip(
            kernel.bg_coef, _polynomial_image(frame, padded, pad, options.background_order), strict=True
        )
    )
    # noise: a background part (sky + read noise as SEP measured it) and the photon noise of the
    # sources, the convolved side's through K² (the kernel at the frame centre)
    k_centre = kernel.at(frame.cx, frame.cy)
    k2 = (k_centre * k_centre).astype(np.float32)
    ref_bg = np.float32(ref.global_rms**2)
    raw = sci_data - matched - background if convolve_reference else matched - ref_al - background
    if convolve_reference:
        difference = raw
        bg_var = sci_bg + ref_bg * k2.sum()
        src_var = _photons(sci_data, sci.gain) + _spread(_photons(ref_al, ref.gain), k2)
        flux_scale = kernel.scale
    else:
        norm = np.float32(kernel.scale**-2)
        difference = raw * np.float32(1.0 / kernel.scale)
        bg_var = (sci_bg * k2.sum() + ref_bg) * norm
        src_var = (_spread(_photons(sci_data, sci.gain), k2) + _photons(ref_al, ref.gain)) * norm
        flux_scale = 1.0 / kernel.scale
    # honest pixels: the core kernel's whole reach lies on real data of the convolved image (the wing
    # term carries a few per cent of a star's flux: where it runs off the data it leaves what the
    # three-Gaussian kernel leaves everywhere, so it does not cost the frame's edges)
    convolved_ok = footprint if convolve_reference else ~sci_bad
    no_data = (~_erode(convolved_ok, core_hw) | sci_bad | ~footprint)[inner]
    reach = basis.hw
    saturated = (
        _grow(ref_sat, reach if convolve_reference else 0)
        | _grow(sci_sat, 0 if convolve_reference else reach)
    )[inner] & ~no_data
    nan = np.float32(np.nan)
    difference = np.where(no_data, nan, difference[inner]).astype(np.float32)
    bg_var, src_var = bg_var[inner], src_var[inner]
    rescale = _calibrate(difference, bg_var, src_var, no_data | saturated)
    noise = np.where(no_data, nan, np.sqrt(bg_var * np.float32(rescale) + src_var)).astype(np.float32)
    mask = (no_data * NO_DATA | saturated * SATURATED).astype(np.uint8)
    aligned_reference = np.where(footprint, ref_al, nan)[inner].astype(np.float32)
    seconds["subtract"] = time.perf_counter() - t

    # grading: the held-out stars (the fitted ones when too few were held out)
    graded = qa_idx if len(qa_idx) >= 5 else fit_idx[kept]
    chi2 = _star_chi2(
        difference, noise, sci.stars["x"][graded], sci.stars["y"][graded], max(3.0, 1.5 * fwhm_sci)
    )
    chi2 = chi2[np.isfinite(chi2)]
    star_chi2 = float(np.median(chi2)) if len(chi2) else None
    seconds["total"] = time.perf_counter() - t0
    notes = (
        sci.notes
        + ref.notes
        + alignment.notes
        + [
            f"{img.role}: no GAIN and no sky level to infer it from; the noise map has no photon noise for it "
            f"(add GAIN, e-/ADU, to the header)"
            for img in (sci, ref)
            if img.gain is None
        ]
        + ([f"kernel spatial order lowered to {order} (few stars)"] if order < options.spatial_order else [])
    )
    meta = {
        "method": METHOD,
        "method_version": METHOD_VERSION,
        "convolved": "reference" if convolve_reference else "science",
        "alignment": alignment.method,
        "alignment_resampling": resampling,
        "alignment_rms_px": _round(alignment.rms),
        "alignment_stars": alignment.n_matches,
        **{k: _round(v) for k, v in geometry.items()},
        "overlap_fraction": _round(overlap),
        "fwhm_science_px": _round(fwhm_sci),
        "fwhm_reference_px": _round(fwhm_ref),
        "kernel_half_width": basis.hw,
        "kernel_sigmas_px": [_round(s) for s in basis.sigmas],
        "kernel_basis_functions": len(basis),
        "kernel_wing": basis is wing,
        "kernel_spatial_order": order,
        "background_order": options.background_order,
        "flux_scale": _round(flux_scale),
        **{k: _round(v) if isinstance(v, float) else v for k, v in fit_stats.items()},
        "star_chi2_median": _round(star_chi2),
        "star_chi2_stars": len(chi2),
        "star_chi2_sample": "held-out" if graded is qa_idx else "fitted",
        "noise_model": f"science gain: {sci.gain_source}; reference gain: {ref.gain_source}",
        "gain_science": _round(sci.gain),
        "gain_reference": _round(ref.gain),
        "noise_median": _round(float(np.nanmedian(noise[::4, ::4]))),
        "noise_background_rescale": _round(rescale),
        "saturated_fraction": _round(float(np.mean(mask & SATURATED > 0))),
        "notes": notes,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    if star_chi2 is not None and star_chi2 > options.max_star_chi2:
        raise KernelFitError(
            f"the PSF-matched difference leaves stars at χ²/pixel {star_chi2:.1f} (median of {len(chi2)} "
            f"held-out stars; limit {options.max_star_chi2}): the kernel does not describe this pair (a PSF "
            f"varying faster than order {order}, a wrong SATURATE, or another field); check the pair "
            f"or supply a ready-made difference"
        )
    return Subtraction(difference, noise, aligned_reference, mask, meta)


def _round(value: float | None, digits: int = 5) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class _Options:
    """The options of :func:`subtract`, checked once."""

    spatial_order: int
    background_order: int
    kernel_half_width: int | None
    min_overlap: float
    min_kernel_stars: int
    max_kernel_stars: int
    max_alignment_rms: float
    max_star_chi2: float

    def __post_init__(self) -> None:
        def integer(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an int between {lo} and {hi}, got {value!r}")

        def positive(name: str, hi: float = math.inf) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= hi:
                raise ValueError(f"{name} must be a number in (0, {hi}], got {value!r}")

        integer("spatial_order", 0, 3)
        integer("background_order", 0, 3)
        if self.kernel_half_width is not None:
            integer("kernel_half_width", 2, 25)
        integer("min_kernel_stars", 3, 10_000)
        integer("max_kernel_stars", self.min_kernel_stars, 10_000)
        positive("min_overlap", 1.0)
        positive("max_alignment_rms")
        positive("max_star_chi2")
