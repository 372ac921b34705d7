"""From a per-pixel score map to a list of detections (the one place that does this).

Conventions: pixel coordinates are 0-based numpy (``x`` = column, ``y`` = row; the centre of
the first pixel is (0, 0)). Sky coordinates come from ``wcs.pixel_to_world_values(x, y)``,
which is 0-based too (astropy's "pixel" convention, *not* FITS' 1-based ``all_pix2world(..., 1)``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

# 8-connected components: diagonal neighbours belong to the same source.
_STRUCTURE = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    """One candidate transient. ``ra``/``dec`` in degrees, ``None`` when there is no WCS."""

    x: float
    y: float
    ra: float | None
    dec: float | None
    score: float
    flux: float
    # Photometry (astrid.photometry.measure), after the contract's six columns; None = not measured.
    flux_err: float | None = None  # 1σ of ``flux``, from the difference image's per-pixel noise
    snr: float | None = None  # flux / flux_err
    mag: float | None = None  # AB, from the header's zero point; None without one or for flux <= 0
    mag_err: float | None = None
    stamp_uri: str | None = None  # storage URI prefix of its stamps (astrid.stamps), when written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aperture_flux(
    difference: np.ndarray,
    x: float,
    y: float,
    radius: float = 3.0,
    annulus: tuple[float, float] = (6.0, 10.0),
) -> float:
    """Background-subtracted circular aperture sum on ``difference`` at (x, y).

    Sum of the pixels whose centres lie within ``radius`` px of (x, y), minus the number of
    those pixels times the *median* of the pixels in the annulus ``annulus[0] <= r < annulus[1]``
    (the local background; 0 if the annulus has no finite pixel). Non-finite pixels are ignored.
    Units are those of the difference image (counts/ADU).
    """
    return aperture_photometry(difference, x, y, radius, annulus)[0]


def aperture_photometry(
    difference: np.ndarray,
    x: float,
    y: float,
    radius: float = 3.0,
    annulus: tuple[float, float] = (6.0, 10.0),
    error: np.ndarray | None = None,
) -> tuple[float, float]:
    """(flux, flux_err): :func:`aperture_flux` and its 1σ uncertainty from ``error``, the
    per-pixel 1σ noise map of ``difference`` (``nan`` without one).

    ``flux_err² = Σ_aperture σ² + N² · (π/2) · mean_annulus(σ²) / N_annulus``: the pixels'
    noise summed in quadrature (what ``photutils.aperture.aperture_photometry(error=...)``
    reports as ``aperture_sum_err``), plus the variance of the background the ``N`` aperture
    pixels subtract (the annulus median, whose variance is π/2 times that of the mean).
    """
    h, w = difference.shape
    r_out = annulus[1]
    x0, x1 = max(0, math.floor(x - r_out)), min(w, math.ceil(x + r_out) + 1)
    y0, y1 = max(0, math.floor(y - r_out)), min(h, math.ceil(y + r_out) + 1)
    if x0 >= x1 or y0 >= y1:
        return float("nan"), float("nan")
    cut = np.asarray(difference[y0:y1, x0:x1], dtype=np.float64)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r = np.hypot(xx - x, yy - y)
    finite = np.isfinite(cut)
    in_ring = (r >= annulus[0]) & (r < annulus[1]) & finite
    ring = cut[in_ring]
    background = float(np.median(ring)) if ring.size else 0.0
    inside = (r <= radius) & finite
    n = int(inside.sum())
    flux = float(cut[inside].sum() - background * n)
    if error is None:
        return flux, float("nan")
    var = np.square(np.asarray(error[y0:y1, x0:x1], dtype=np.float64))
    var_bkg = (math.pi / 2) * float(var[in_ring].mean()) / ring.size if ring.size else 0.0
    return flux, float(math.sqrt(var[inside].sum() + n * n * var_bkg))


def extract_detections(
    probability: np.ndarray,
    difference: np.ndarray,
    threshold: float,
    wcs: Any = None,
    *,
    grow: int = 3,
    aperture_radius: float = 3.0,
) -> list[Detection]:
    """Threshold ``probability``, label 8-connected components, one :class:`Detection` each.

    - ``score``: the component's peak value.
    - ``x``/``y``: the score-weighted centroid over the component *grown by* ``grow`` pixels
      (pixels of other components excluded), so the weights include the wings of the peak
      symmetrically and the centroid is not biased by where the threshold cuts the pixel grid.
    - ``flux``: :func:`aperture_flux` on ``difference`` at the centroid (radius
      ``aperture_radius``, local background = annulus median).
    - ``ra``/``dec``: ``wcs.pixel_to_world_values(x, y)`` (0-based) when ``wcs`` is given.

    Detections are sorted by descending score.
    """
    prob = np.asarray(probability)
    if prob.ndim != 2:
        raise ValueError(f"probability must be 2-D, got shape {prob.shape}")
    if difference is not None and np.shape(difference) != prob.shape:
        raise ValueError(f"difference shape {np.shape(difference)} != probability shape {prob.shape}")
    mask = prob > threshold
    if not mask.any():
        return []
    labels, _ = ndimage.label(mask, structure=_STRUCTURE)
    slices = ndimage.find_objects(labels)
    h, w = prob.shape
    xs, ys, scores = [], [], []
    for index, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        r0, r1 = max(0, sl[0].start - grow), min(h, sl[0].stop + grow)
        c0, c1 = max(0, sl[1].start - grow), min(w, sl[1].stop + grow)
        lab = labels[r0:r1, c0:c1]
        own = lab == index
        region = ndimage.binary_dilation(own, structure=_STRUCTURE, iterations=grow) & ((lab == 0) | own)
        p = np.where(region, np.nan_to_num(prob[r0:r1, c0:c1].astype(np.float64), nan=0.0), 0.0)
        p = np.clip(p, 0.0, None)
        total = p.sum()
        yy, xx = np.mgrid[r0:r1, c0:c1]
        if total > 0:
            xs.append(float((p * xx).sum() / total))
            ys.append(float((p * yy).sum() / total))
        else:  # pragma: no cover - a component above threshold always has positive weight
            xs.append(float(xx[own].mean()))
            ys.append(float(yy[own].mean()))
        scores.append(float(np.nanmax(prob[r0:r1, c0:c1][own])))
    ras: list[float | None] = [None] * len(xs)
    decs: list[float | None] = [None] * len(xs)
    if wcs is not None and xs:
        world = wcs.pixel_to_world_values(np.asarray(xs), np.asarray(ys))
        ras = [float(v) for v in np.atleast_1d(world[0])]
        decs = [float(v) for v in np.atleast_1d(world[1])]
    detections = []
    for x, y, ra, dec, score in zip(xs, ys, ras, decs, scores, strict=True):
        flux = aperture_flux(difference, x, y, aperture_radius) if difference is not None else float("nan")
        detections.append(Detection(x=x, y=y, ra=ra, dec=dec, score=score, flux=flux))
    detections.sort(key=lambda d: -d.score)
    return detections
