"""Photometry: flux errors, SNR and magnitudes checked against photutils and against known noise."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from astropy.io import fits
from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture
from photutils.aperture import aperture_photometry as photutils_photometry

from astrid.imaging.synthetic import make_observation
from astrid.ml.detect import Detection, aperture_photometry
from astrid.photometry import NoiseModel, magnitude, measure, zeropoint


@pytest.fixture(scope="module")
def observation():
    obs = make_observation(20160, size=384, n_transients=12)
    assert len(obs.truth) >= 8
    return obs


def test_flux_and_error_agree_with_photutils(observation):
    """Same pixels, same error map: our aperture sum, background and error equal photutils'."""
    diff = observation.difference.astype(np.float64)
    error = NoiseModel(observation.difference, observation.science).sigma().astype(np.float64)
    positions = [(t.x, t.y) for t in observation.truth]
    aperture = CircularAperture(positions, r=3.0)
    annulus = CircularAnnulus(positions, r_in=6.0, r_out=10.0)
    table = photutils_photometry(diff, aperture, error=error, method="center")
    background = ApertureStats(diff, annulus, sigma_clip=None, sum_method="center")
    pixels = ApertureStats(diff, aperture, sigma_clip=None, sum_method="center").sum_aper_area.value
    ring_var = ApertureStats(error**2, annulus, sigma_clip=None, sum_method="center")
    for i, (x, y) in enumerate(positions):
        flux, err = aperture_photometry(diff, x, y, 3.0, (6.0, 10.0), error=error)
        expected_flux = table["aperture_sum"][i] - background.median[i] * pixels[i]
        n_ring = ring_var.sum_aper_area.value[i]
        expected_err = math.sqrt(
            table["aperture_sum_err"][i] ** 2 + pixels[i] ** 2 * (math.pi / 2) * ring_var.mean[i] / n_ring
        )
        assert flux == pytest.approx(expected_flux, rel=1e-9, abs=1e-6)
        assert err == pytest.approx(expected_err, rel=1e-9)


def _point_sources(rng, shape, n, sigma_psf, fluxes):
    """A noiseless image of Gaussian point sources on a grid (sub-pixel positions)."""
    h, w = shape
    side = math.ceil(math.sqrt(n))
    xs = np.linspace(20, w - 21, side)[np.arange(n) % side] + rng.uniform(-0.5, 0.5, n)
    ys = np.linspace(20, h - 21, side)[np.arange(n) // side] + rng.uniform(-0.5, 0.5, n)
    yy, xx = np.mgrid[:h, :w]
    model = np.zeros(shape)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        model += (
            f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma_psf**2)) / (2 * np.pi * sigma_psf**2)
        )
    return xs, ys, model


def test_errors_are_calibrated_with_photon_noise():
    """Pulls (measured − true) / error have unit spread, faint and bright sources alike.

    A Poisson science frame (sky 800 ADU, gain 2 e-/ADU) over a perfect reference: the
    difference's noise is the sky's plus each source's own photon noise. Without the source term
    the bright sources' pulls would spread ~3x wider than 1.
    """
    gain, sky, shape = 2.0, 800.0, (400, 400)
    pulls = {"faint": [], "bright": []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n = 81
        fluxes = np.where(np.arange(n) % 2 == 0, 600.0, 60000.0)
        xs, ys, model = _point_sources(rng, shape, n, 1.6, fluxes)
        science = rng.poisson((model + sky) * gain) / gain
        difference = science - sky
        noise = NoiseModel(difference, science)
        assert noise.gain == pytest.approx(gain, rel=0.05)
        error = noise.sigma()
        for x, y, f in zip(xs, ys, fluxes, strict=True):
            truth = aperture_photometry(model, x, y)[0]
            flux, err = aperture_photometry(difference, x, y, error=error)
            pulls["bright" if f > 1000 else "faint"].append((flux - truth) / err)
    for kind, values in pulls.items():
        spread = float(np.std(values))
        assert 0.85 < spread < 1.15, f"{kind}: pull spread {spread:.2f}"
        assert abs(float(np.mean(values))) < 0.25, kind


def test_noise_model_follows_a_noise_gradient():
    rng = np.random.default_rng(7)
    h, w = 256, 512
    true_sigma = np.broadcast_to(np.linspace(5.0, 20.0, w), (h, w))
    difference = rng.normal(0.0, 1.0, (h, w)) * true_sigma
    sigma = NoiseModel(difference).sigma()
    assert sigma.shape == (h, w) and sigma.dtype == np.float32
    inner = (slice(32, -32), slice(64, -64))  # the outermost half box extrapolates flat
    assert np.median(np.abs(sigma[inner] / true_sigma[inner] - 1)) < 0.05
    # a window is the same numbers as the full map
    np.testing.assert_array_equal(
        NoiseModel(difference).sigma(slice(10, 40), slice(300, 333)), sigma[10:40, 300:333]
    )


def test_noise_model_ignores_non_finite_pixels_and_sky_subtracted_science(caplog):
    rng = np.random.default_rng(1)
    difference = rng.normal(0, 3.0, (128, 128))
    difference[:, :20] = np.nan
    science = rng.normal(0, 3.0, (128, 128))  # sky-subtracted: no gain can be measured
    with caplog.at_level(logging.INFO, logger="astrid.photometry"):
        noise = NoiseModel(difference, science)
    assert noise.gain is None and "photon noise" in caplog.text
    assert np.all(np.isfinite(noise.sigma()))
    assert float(np.median(noise.sigma())) == pytest.approx(3.0, rel=0.08)


def _header(**cards):
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    return header


def test_zeropoint_keys_and_broken_values(caplog):
    assert zeropoint(_header(MAGZP=26.1, PHOTZP=30.0)) == 26.1
    assert zeropoint(_header(PHOTZP=30.0)) == 30.0
    assert zeropoint(_header(MAGZPT=27.5)) == 27.5
    assert zeropoint(_header(ZP_AB=24.0, MAGZP=26.1), "zp_ab") == 24.0  # the configured key first
    assert zeropoint(_header(MAGZP=26.1), "ZP_AB") == 26.1  # configured key absent: the standard ones
    assert zeropoint(_header(EXPTIME=30.0)) is None
    assert zeropoint(None) is None
    # a FITS card cannot hold NaN/inf, but a header is any mapping (and a notebook may pass a dict)
    for bad in ("26.1", float("nan"), float("inf"), -3.0, 99.0, True, None):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="astrid.photometry"):
            assert zeropoint({"MAGZP": bad, "PHOTZP": 30.0}) is None, bad
        assert "MAGZP" in caplog.text


def test_magnitude_and_error():
    mag, err = magnitude(1000.0, 50.0, 27.0)
    assert mag == pytest.approx(27.0 - 7.5)
    assert err == pytest.approx(2.5 / math.log(10) * 0.05)
    assert magnitude(-5.0, 1.0, 27.0) == (None, None)
    assert magnitude(0.0, 1.0, 27.0) == (None, None)
    assert magnitude(100.0, 1.0, None) == (None, None)
    assert magnitude(100.0, None, 25.0) == (pytest.approx(20.0), None)


def test_measure_fills_every_field(observation):
    dets = [Detection(t.x, t.y, None, None, 0.9, 0.0) for t in observation.truth]
    measured = measure(dets, observation)
    zp = observation.header["MAGZPT"]
    error = NoiseModel(observation.difference, observation.science).sigma()
    for d, m in zip(dets, measured, strict=True):
        flux, err = aperture_photometry(observation.difference, d.x, d.y, error=error)
        assert m.flux == pytest.approx(flux, rel=1e-6) and m.flux_err == pytest.approx(err, rel=1e-6)
        assert m.snr == pytest.approx(m.flux / m.flux_err)
        if m.flux > 0:
            assert m.mag == pytest.approx(zp - 2.5 * math.log10(m.flux))
            assert m.mag_err == pytest.approx(1.0857362 / m.snr, rel=1e-6)
        else:
            assert m.mag is None and m.mag_err is None
        assert (m.x, m.y, m.score) == (d.x, d.y, d.score)
    # bright injected transients are measured as significant
    bright = [m for m, t in zip(measured, observation.truth, strict=True) if t.snr > 15]
    assert bright and all(m.snr > 5 for m in bright)
    assert measure([], observation) == []


def test_measure_at_the_frame_edge_and_without_header(observation):
    class Bare:
        difference = observation.difference
        science = observation.science

    dets = [Detection(0.2, 0.4, None, None, 0.9, 0.0), Detection(383.6, 100.0, None, None, 0.8, 0.0)]
    for m in measure(dets, Bare()):
        assert math.isfinite(m.flux) and m.flux_err > 0 and m.mag is None
