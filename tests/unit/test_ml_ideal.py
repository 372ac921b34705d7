"""The ideal-detector bound (astrid.ml.ideal) checked by simulation, and the host classes.

No mocks: pure noise frames plus transients, filtered with the true PSF, detected by the same
connected-component extraction the detectors use (astrid.ml.detect.extract_detections)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import fftconvolve

from astrid.imaging.synthetic import add_stamp, make_observation, moffat_stamp, point_stamp
from astrid.ml.detect import extract_detections
from astrid.ml.ideal import NoisePeakRate, host_classes, ideal_recall, noise_peaks, unit_filter
from astrid.ml.scoring import match_detections

PSF = moffat_stamp(14, 3.0, 3.0, 0.05, 0.4)


def _frame(rng: np.random.Generator, snr: float, n: int = 100, size: int = 1024):
    """Unit white noise plus ``n`` point sources of optimal SNR ``snr`` (sources add no noise,
    so the local SNR is exactly ``snr``), and the frame correlated with the unit PSF filter."""
    img = rng.standard_normal((size, size))
    weight = math.sqrt(float((PSF * PSF).sum()))  # SNR = flux * sqrt(sum P^2) for unit noise
    truth = []
    side = int(math.sqrt(n))
    step = (size - 64) / side
    for i in range(side):
        for j in range(side):
            x, y = 32 + (j + rng.uniform(0.2, 0.8)) * step, 32 + (i + rng.uniform(0.2, 0.8)) * step
            stamp, r0, c0 = point_stamp(PSF, x, y)
            add_stamp(img, stamp, r0, c0, snr / weight)
            truth.append({"x": x, "y": y, "snr": snr})
    m = fftconvolve(img, unit_filter(PSF)[::-1, ::-1], mode="same")
    return m, truth


def test_noise_peak_rate_fit_matches_direct_counts() -> None:
    rate = NoisePeakRate.simulate(PSF, seed=3)
    values, area = noise_peaks(PSF, mpix=24, seed=11)
    for level in (3.75, 4.25):
        direct = float((values >= level).sum())
        expected = rate.rate(level) * area
        # Poisson scatter of the direct count plus the fit's shape error (docstring: up to ~40 % at 4.5-5)
        assert abs(direct - expected) < 3 * math.sqrt(expected) + 0.25 * expected, (level, direct, expected)
    assert rate.threshold(rate.rate(4.6)) == pytest.approx(4.6, abs=1e-6)
    assert rate.threshold(1.0) > rate.threshold(10.0) > rate.threshold(300.0) > 2.0


@pytest.mark.parametrize("snr", [4.0, 5.0, 6.0])
def test_matched_filter_recall_matches_the_ideal_formula(snr: float) -> None:
    rng = np.random.default_rng(int(snr * 10))
    t_star = NoisePeakRate.simulate(PSF, seed=5).threshold(1.0)  # the operating point: 1 false / Mpix
    found, n = 0, 0
    for _ in range(3):
        m, truth = _frame(rng, snr)
        dets = extract_detections(m, None, t_star)
        found += sum(match_detections(dets, truth).truth_matched)
        n += len(truth)
    predicted = float(ideal_recall(snr, t_star))
    # binomial scatter (n = 300) plus a small allowance for the peak search within 3 px lifting
    # the measured value above N(snr, 1)
    assert abs(found / n - predicted) < 3 * math.sqrt(predicted * (1 - predicted) / n) + 0.04, (
        found / n,
        predicted,
        t_star,
    )


def test_false_rate_at_t_star_matches_the_target() -> None:
    rng = np.random.default_rng(7)
    target = 20.0  # per Mpix: enough false detections to count on 3 Mpix
    t_star = NoisePeakRate.simulate(PSF, seed=8).threshold(target)
    false = 0
    for _ in range(3):
        m = fftconvolve(rng.standard_normal((1024, 1024)), unit_filter(PSF)[::-1, ::-1], mode="same")
        false += len(extract_detections(m[16:-16, 16:-16], None, t_star))
    expected = target * 3 * (1024 - 32) ** 2 / 1e6
    assert abs(false - expected) < 3 * math.sqrt(expected) + 0.3 * expected, (false, expected)


def test_host_classes_follow_the_scene() -> None:
    # blank-sky transients in a sparse field are blank; a crowded (Galactic-plane) field is crowded
    sparse = make_observation(
        21, size=512, star_density=800, galaxy_fraction=0.05, host_fractions=(1, 0, 0), crowded=False
    )
    assert sparse.truth and np.mean([c == "blank" for c in host_classes(sparse)]) >= 0.8
    dense = make_observation(22, size=512, crowded=True, star_density=40000)
    assert dense.truth and np.mean([c == "crowded" for c in host_classes(dense)]) >= 0.8
    pairs = []
    for seed in (30, 31, 32, 33):
        hosted = make_observation(
            seed,
            size=512,
            star_density=800,
            galaxy_fraction=0.05,
            host_fractions=(0, 0.5, 0.5),
            crowded=False,
        )
        pairs += list(zip([t.host for t in hosted.truth], host_classes(hosted), strict=True))
    stars = [c for h, c in pairs if h == "star"]
    galaxies = [c for h, c in pairs if h == "galaxy"]
    assert len(stars) >= 8 and np.mean([c == "star" for c in stars]) >= 0.7
    assert len(galaxies) >= 8 and np.mean([c == "galaxy" for c in galaxies]) >= 0.7
