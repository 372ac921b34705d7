"""The one home of robust image statistics (astrid.imaging.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astrid.imaging.stats import FWHM_PER_SIGMA, finite_sample, mad_sigma, median_sigma


def test_mad_sigma_is_the_gaussian_sigma_despite_outliers():
    rng = np.random.default_rng(5)
    sky = rng.normal(100.0, 7.0, 200_000)
    sky[:2_000] = 1e6  # 1 % stars/cosmic rays: the standard deviation would explode
    center, sigma = median_sigma(sky)
    assert center == pytest.approx(100.0, abs=0.1)
    assert sigma == pytest.approx(7.0, rel=0.02)
    assert np.std(sky) > 1000 * sigma


def test_finite_sample_drops_non_finite_pixels_and_bounds_the_work():
    image = np.arange(2048 * 2048, dtype=np.float32).reshape(2048, 2048)
    image[0, :] = np.nan
    image[:, 0] = np.inf
    sample = finite_sample(image, 1 << 18)
    assert sample.dtype == np.float64 and np.isfinite(sample).all()
    assert 0 < sample.size <= 1 << 18
    small = np.array([[1.0, np.nan], [3.0, 4.0]])
    assert sorted(finite_sample(small, 100)) == [1.0, 3.0, 4.0]


def test_no_values_give_nan_not_a_number_that_looks_real():
    assert all(math.isnan(v) for v in median_sigma(np.array([])))
    assert math.isnan(mad_sigma(np.array([])))
    assert median_sigma(np.full(10, 3.0)) == (3.0, 0.0)  # a constant: zero noise, said as such


def test_fwhm_per_sigma_of_a_sampled_gaussian():
    x = np.linspace(-10, 10, 200_001)
    profile = np.exp(-(x**2) / 2)
    above = x[profile >= 0.5]
    assert above[-1] - above[0] == pytest.approx(FWHM_PER_SIGMA, abs=1e-3)
