"""Detection extraction geometry, flux, WCS conversion, and the matched-filter baseline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.wcs import WCS

from astrid.ml.baseline import MatchedFilterDetector
from astrid.ml.detect import Detection, aperture_flux, extract_detections
from astrid.ml.normalise import measure_seeing


def _gauss(shape, x, y, sigma, amp=1.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _tan_wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [30.5, 20.5]
    w.wcs.cdelt = [-0.0002, 0.0002]
    w.wcs.pc = [[0.9, 0.1], [-0.1, 0.9]]
    return w


@pytest.mark.parametrize(("x", "y"), [(40.3, 25.7), (17.0, 33.45), (61.81, 12.12)])
def test_centroid_is_subpixel_accurate(x, y):
    prob = _gauss((48, 80), x, y, sigma=2.0).astype(np.float32)
    (det,) = extract_detections(prob, np.zeros_like(prob), threshold=0.5)
    assert abs(det.x - x) < 0.05 and abs(det.y - y) < 0.05
    assert det.score == pytest.approx(prob.max())
    assert det.ra is None and det.dec is None


def test_one_detection_per_component_sorted_by_score():
    prob = _gauss((64, 64), 10.2, 12.0, 1.5, 0.7) + _gauss((64, 64), 45.0, 50.6, 1.5, 0.95)
    dets = extract_detections(prob, np.zeros_like(prob), threshold=0.5)
    assert [round(d.x) for d in dets] == [45, 10]
    assert dets[0].score > dets[1].score
    assert extract_detections(prob, np.zeros_like(prob), threshold=0.99) == []


def test_flux_is_background_subtracted_aperture_sum():
    total = 1000.0
    sigma = 1.0
    diff = 5.0 + total * _gauss((40, 40), 20.4, 19.6, sigma) / (2 * np.pi * sigma**2)
    prob = _gauss((40, 40), 20.4, 19.6, 1.5)
    (det,) = extract_detections(prob, diff, threshold=0.5, aperture_radius=3.0)
    # radius 3 = 3σ holds 1 - exp(-4.5) = 98.9 % of a Gaussian's flux; the constant 5 is removed
    assert det.flux == pytest.approx(total * (1 - np.exp(-4.5)), rel=0.02)
    assert aperture_flux(diff, 20.4, 19.6, 3.0) == pytest.approx(det.flux)


def test_wcs_matches_astropy_pixel_to_world_zero_based():
    wcs = _tan_wcs()
    prob = _gauss((48, 64), 33.3, 21.7, 2.0)
    (det,) = extract_detections(prob, np.zeros_like(prob), threshold=0.5, wcs=wcs)
    sky = wcs.pixel_to_world(det.x, det.y)  # astropy's high-level API, 0-based pixels
    assert det.ra == pytest.approx(sky.ra.deg, abs=1e-10)
    assert det.dec == pytest.approx(sky.dec.deg, abs=1e-10)
    # and 0-based: crpix (1-based 30.5, 20.5) is pixel (29.5, 19.5)
    ra0, dec0 = wcs.pixel_to_world_values(29.5, 19.5)
    assert (float(ra0), float(dec0)) == pytest.approx((150.1, 2.2))


def test_detection_dict_and_frozen():
    d = Detection(1.0, 2.0, None, None, 0.9, 12.0)
    assert d.to_dict() == {
        **{"x": 1.0, "y": 2.0, "ra": None, "dec": None, "score": 0.9, "flux": 12.0},
        **{"flux_err": None, "snr": None, "mag": None, "mag_err": None, "stamp_uri": None},  # after the six
    }
    assert list(d.to_dict())[:6] == ["x", "y", "ra", "dec", "score", "flux"]
    with pytest.raises(AttributeError):
        d.x = 3.0  # type: ignore[misc]


def _field(seed=0, size=192, fwhm=3.5):
    rng = np.random.default_rng(seed)
    sigma = fwhm / 2.3548
    sci = rng.normal(200.0, 10.0, (size, size))
    ref = rng.normal(200.0, 10.0, (size, size))
    for x, y in rng.uniform(12, size - 12, size=(25, 2)):
        star = _gauss((size, size), x, y, sigma, rng.uniform(500, 3000))
        sci, ref = sci + star, ref + star
    truth = [(50.2, 60.7), (140.5, 30.1), (100.0, 150.3)]
    for x, y in truth:  # ~SNR 25 point sources only in the science image
        sci = sci + _gauss((size, size), x, y, sigma, 180.0)
    t = SimpleNamespace(science=sci.astype(np.float32), reference=ref.astype(np.float32), wcs=None)
    t.difference = t.science - t.reference
    return t, truth


def test_measure_seeing_recovers_fwhm():
    t, _ = _field(fwhm=3.5)
    assert measure_seeing(t.science) == pytest.approx(3.5, rel=0.1)


def test_matched_filter_finds_injected_sources():
    t, truth = _field()
    dets = MatchedFilterDetector().detect(t)
    for x, y in truth:
        assert min(np.hypot(d.x - x, d.y - y) for d in dets) < 1.0
    assert len(dets) <= len(truth) + 1
    assert all(d.score >= 5.0 for d in dets)
