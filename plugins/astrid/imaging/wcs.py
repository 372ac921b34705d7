"""Is a FITS header's celestial WCS plausible enough to turn pixels into RA/Dec?

astropy builds a WCS from almost anything: without ``CDELT``/``CD`` it assumes 1°/pixel, an
unparsable ``CRVAL1`` becomes 0, and a SIP polynomial with absurd terms is applied as written.
Each gives RA/Dec tens of degrees off, silently. :func:`wcs_problem` names what is wrong, so the
loader can drop the WCS (the quality gate then rejects the observation with the reason, and
``astrid detect`` writes empty RA/Dec with a warning) instead of writing wrong numbers.

Checks, in order:

1. every reference keyword present (``CRVALi``, ``CRPIXi``, ``CDELTi``, ``CDi_j``, ``PCi_j``, SIP
   ``A_p_q``/``B_p_q``…) is a finite number, and ``|CRVAL2|`` ≤ 90 for a latitude;
2. the header gives a pixel scale (``CDi_j``, ``CDELTi`` or ``PCi_j``), not astropy's 1°/pixel
   default;
3. the pixel scale on both axes is finite and within the configured range
   (``ASTRID_INFERENCE_MIN_PIXEL_SCALE`` … ``ASTRID_INFERENCE_MAX_PIXEL_SCALE``, arcsec/pixel), and
   within :data:`PIXSCALE_TOLERANCE` of the header's ``PIXSCALE`` when it has one;
4. at the frame's four corners, the distortion (SIP, lookup tables) moves positions by at most
   :data:`MAX_DISTORTION_FRACTION` of the frame's diagonal (at least :data:`MIN_DISTORTION_PX`),
   and every corner maps to finite RA/Dec.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

PIXSCALE_TOLERANCE = 0.05  # relative: PIXSCALE is often rounded to 2-3 digits
MAX_DISTORTION_FRACTION = 0.05  # of the frame's diagonal, at the corners
MIN_DISTORTION_PX = 10.0
_NUMERIC = re.compile(r"(CRVAL|CRPIX|CDELT)[1-9]|(CD|PC)[1-9]_[1-9]|[AB]P?_[0-9]+_[0-9]+|[AB]P?_ORDER")


def wcs_problem(
    header: Any, wcs: Any, shape: tuple[int, int], *, min_scale: float, max_scale: float
) -> str | None:
    """``None`` when the celestial ``wcs`` (built from ``header``) is plausible for a frame of
    ``shape`` (rows, columns); else a short reason naming the keyword or the figure."""
    for keyword in (k for k in header if _NUMERIC.fullmatch(k)):
        try:
            value = header[keyword]
        except Exception:  # astropy raises VerifyError for an unparsable card
            return f"{keyword} is not a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"{keyword} = {value!r} is not a finite number"
    latitude = wcs.wcs.lat + 1
    if f"CRVAL{latitude}" in header and abs(float(header[f"CRVAL{latitude}"])) > 90:
        return f"CRVAL{latitude} = {header[f'CRVAL{latitude}']} is not a declination (-90 to 90)"
    if not any(re.fullmatch(r"(CD|PC)[1-9]_[1-9]|CDELT[1-9]", k) for k in header):
        return "it has no pixel scale (no CDi_j, CDELTi or PCi_j keywords; astropy would assume 1°/pixel)"
    problem = _scale_problem(header, wcs, min_scale, max_scale)
    return problem or _distortion_problem(wcs, shape)


def _scale_problem(header: Any, wcs: Any, min_scale: float, max_scale: float) -> str | None:
    from astropy.wcs.utils import proj_plane_pixel_scales

    scales = np.asarray(proj_plane_pixel_scales(wcs), dtype=float) * 3600.0  # arcsec/pixel
    if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
        return "its pixel scale is not a finite positive number"
    low, high = float(scales.min()), float(scales.max())
    if low < min_scale or high > max_scale:
        return (
            f"its pixel scale {_arcsec(low, high)}″/pixel is outside {min_scale:g}–{max_scale:g}″/pixel "
            "(ASTRID_INFERENCE_MIN_PIXEL_SCALE, ASTRID_INFERENCE_MAX_PIXEL_SCALE)"
        )
    try:
        stated = header.get("PIXSCALE")
    except Exception:
        stated = None
    if (
        isinstance(stated, int | float)
        and not isinstance(stated, bool)
        and math.isfinite(stated)
        and stated > 0
    ):
        mean = float(np.mean(scales))
        if abs(mean - stated) > PIXSCALE_TOLERANCE * stated:
            return f"its pixel scale {mean:.4g}″/pixel disagrees with PIXSCALE = {stated:g}″/pixel"
    return None


def _distortion_problem(wcs: Any, shape: tuple[int, int]) -> str | None:
    h, w = shape
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    full = np.asarray(wcs.all_pix2world(corners, 0), dtype=float)
    if not np.all(np.isfinite(full)):
        return "it gives no finite RA/Dec at a corner of the frame"
    if (
        wcs.sip is None
        and wcs.cpdis1 is None
        and wcs.cpdis2 is None
        and wcs.det2im1 is None
        and wcs.det2im2 is None
    ):
        return None
    # where the distorted corners land, in the undistorted (linear) pixel frame
    linear = np.asarray(wcs.wcs_world2pix(full, 0), dtype=float)
    shift = float(np.max(np.hypot(*(linear - corners).T))) if np.all(np.isfinite(linear)) else math.inf
    allowed = max(MIN_DISTORTION_PX, MAX_DISTORTION_FRACTION * math.hypot(w, h))
    if not shift <= allowed:
        return f"its distortion (SIP) moves a corner of the frame by {shift:.4g} pixels (at most {allowed:.0f} plausible)"
    return None


def _arcsec(low: float, high: float) -> str:
    return f"{low:.4g}" if math.isclose(low, high, rel_tol=1e-3) else f"{low:.4g}–{high:.4g}"
