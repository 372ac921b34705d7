"""The drift check's core: the KS rule, the windows, and check_drift over a real SQLite catalog.

The catalog rows are written through the catalog's own API (register, claim, complete, reject,
record_statistics) with explicit times, so the reference window is days old without waiting.
The values are drawn from known distributions: the test knows which statistic moved.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from astrid.catalog import Catalog, NewObservation
from astrid.drift import STATISTICS, check_drift, input_statistics, ks_test, windows
from astrid.metrics import metric_name
from tests.catalog_helpers import FakeDetection
from tests.recording_metrics import RecordingMetrics

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)
RULE = {"threshold": 0.2, "alpha": 0.01 / 6, "min_samples": 30}


def test_ks_rule_needs_a_large_and_significant_difference():
    rng = np.random.default_rng(1)
    same = ks_test("sky", rng.normal(0, 1, 300), rng.normal(0, 1, 300), **RULE)
    assert not same.drifted and same.d < 0.2
    shifted = ks_test("sky", rng.normal(0, 1, 300), rng.normal(1.0, 1, 300), **RULE)
    assert shifted.drifted and shifted.d > 0.3 and shifted.p_value < 1e-6
    # tiny but "significant" with 20 000 values a side: below the D threshold, not drift
    tiny = ks_test("sky", rng.normal(0, 1, 20_000), rng.normal(0.08, 1, 20_000), **RULE)
    assert tiny.p_value < RULE["alpha"] and tiny.d < 0.2 and not tiny.drifted
    # large D on a handful of values is not significant enough
    few = ks_test(
        "sky", [1.0, 2, 3, 4, 5, 6], [3.0, 4, 5, 6, 7, 8], threshold=0.2, alpha=0.01 / 6, min_samples=5
    )
    assert few.d >= 0.2 and not few.drifted
    # too few values: not tested at all, and said so
    short = ks_test("sky", [1.0] * 10, [2.0] * 40, **RULE)
    assert short.d is None and not short.drifted and "not tested" in short.note
    # NaN (not measured) is left out, not counted
    assert ks_test("sky", [float("nan")] * 40 + [1.0], [1.0] * 40, **RULE).reference_n == 1


def test_windows_reference_is_the_champions_first_hours_before_the_current_window():
    first = NOW - timedelta(days=10)
    reference, current = windows(first, NOW, window_hours=24, reference_hours=168)
    assert current == (NOW - timedelta(hours=24), NOW)
    assert reference == (first, first + timedelta(hours=168))
    recent = NOW - timedelta(days=3)  # served 3 days: the reference stops where the current window starts
    assert windows(recent, NOW, window_hours=24, reference_hours=168)[0] == (
        recent,
        NOW - timedelta(hours=24),
    )
    assert windows(NOW - timedelta(hours=5), NOW, window_hours=24, reference_hours=168)[0] is None
    assert windows(None, NOW, window_hours=24, reference_hours=168)[0] is None


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path}/drift.db")
    cat.migrate()
    yield cat
    cat.dispose()


def _infer(
    catalog, name: str, at: datetime, *, version="1", sky=1000.0, seeing=3.0, noise=10.0, scores=(0.9,)
):
    """One observation inferred by ``version`` at ``at``, its statistics recorded as the pipeline does."""
    (oid,) = catalog.register(
        [NewObservation(name=name, science_uri=f"{name}_sci.fits", reference_uri="r.fits")]
    )
    (claim,) = catalog.claim(1, f"run-{name}", timedelta(minutes=5), now=at)
    found = [FakeDetection(10.0 + i, 10.0, None, None, s, 1.0) for i, s in enumerate(scores)]
    catalog.complete(claim, f"run-{name}", version, found, now=at)
    catalog.record_statistics(
        oid,
        f"run-{name}",
        version,
        sky=sky,
        seeing_px=seeing,
        noise=noise,
        megapixels=1.0,
        detections=len(found),
        now=at,
    )
    return oid


def _night(catalog, prefix: str, start: datetime, n: int, rng, **shift) -> None:
    for i in range(n):
        _infer(
            catalog,
            f"{prefix}-{i}",
            start + timedelta(minutes=10 * i),
            sky=float(rng.lognormal(np.log(800), 0.3)) * shift.get("sky", 1.0),
            seeing=float(rng.uniform(2.5, 4.0)) + shift.get("seeing", 0.0),
            noise=float(rng.normal(10, 1)),
            scores=tuple(rng.uniform(0.5, 1.0, size=int(rng.integers(1, 4)))),
        )


def _check(catalog, metrics=None, champion="1"):
    return check_drift(
        catalog,
        champion,
        now=NOW,
        window_hours=24,
        reference_hours=168,
        min_samples=30,
        threshold=0.2,
        p_value=0.01,
        metrics=metrics,
        dag_id="astrid_drift_check",
    )


def test_a_shifted_sky_is_drift_and_only_the_sky(catalog):
    rng = np.random.default_rng(7)
    _night(catalog, "ref", NOW - timedelta(days=4), 60, rng)
    _night(catalog, "cur", NOW - timedelta(hours=20), 60, rng, sky=3.0)  # a bright-sky night
    metrics = RecordingMetrics()
    report = _check(catalog, metrics)
    assert report.drifted == ["sky"], report.table()
    assert report.reason.startswith("drift against champion v1's reference window: sky (D=")
    sky = next(t for t in report.tests if t.statistic == "sky")
    assert sky.reference_n == sky.current_n == 60 and sky.d > 0.8
    assert sky.current_median / sky.reference_median == pytest.approx(3.0, rel=0.3)
    gauges = {stat: value for kind, stat, value in metrics.sent if kind == "gauge"}
    assert gauges[metric_name("astrid.drift.sky", "astrid_drift_check")] == sky.d
    assert gauges[metric_name("astrid.drift.drifted", "astrid_drift_check")] == 1
    assert {t.statistic for t in report.tests} == set(STATISTICS)
    assert "| sky | 60 | 60 |" in report.table() and "**yes**" in report.table()


def test_the_same_conditions_are_quiet(catalog):
    rng = np.random.default_rng(8)
    _night(catalog, "ref", NOW - timedelta(days=4), 60, rng)
    _night(catalog, "cur", NOW - timedelta(hours=20), 60, rng)
    report = _check(catalog)
    assert report.drifted == [] and report.reason == ""
    tested = {t.statistic: t for t in report.tests}
    assert tested["score"].reference_n > 60  # one value per detection
    assert all(
        t.d is not None for t in report.tests if t.statistic != "rejection_rate" or t.reference_n >= 30
    )


def test_worse_seeing_and_a_rising_rejection_rate_are_drift(catalog):
    rng = np.random.default_rng(9)
    _night(catalog, "ref", NOW - timedelta(days=4), 40, rng)
    _night(catalog, "cur", NOW - timedelta(hours=20), 40, rng, seeing=2.5)
    # 40 of the current night's 80 observations refused by the quality gate
    for i in range(40):
        (oid,) = catalog.register(
            [NewObservation(name=f"bad-{i}", science_uri="b.fits", reference_uri="r.fits")]
        )
        catalog.claim(1, f"gate-{i}", timedelta(minutes=5), now=NOW - timedelta(hours=2))
        catalog.reject(oid, f"gate-{i}", "fwhm_px above 15", now=NOW - timedelta(hours=2))
    report = _check(catalog)
    assert set(report.drifted) == {"seeing", "rejection_rate"}, report.table()
    rate = next(t for t in report.tests if t.statistic == "rejection_rate")
    assert rate.d == pytest.approx(40 / 80, abs=1e-3)  # D of a 0/1 indicator: the change of the rate


def test_a_new_champion_has_no_reference_yet_and_other_versions_do_not_count(catalog):
    rng = np.random.default_rng(10)
    _night(catalog, "ref", NOW - timedelta(days=4), 40, rng)
    _night(catalog, "cur", NOW - timedelta(hours=20), 40, rng, sky=5.0)
    metrics = RecordingMetrics()
    fresh = _check(catalog, metrics, champion="2")  # version 2 never served
    assert fresh.tests == [] and fresh.reason == "" and "no reference window" in fresh.note
    assert ("gauge", metric_name("astrid.drift.drifted", "astrid_drift_check"), 0) in metrics.sent
    assert _check(catalog, champion=None).note == "no champion yet"


def test_record_statistics_is_one_row_per_observation_and_version(catalog):
    oid = _infer(catalog, "once", NOW - timedelta(hours=1))
    catalog.record_statistics(
        oid, "retry", "1", sky=float("nan"), seeing_px=None, noise=5.0, megapixels=4.0, detections=2
    )
    (row,) = catalog.statistics(model_version="1")
    assert row["run_id"] == "retry" and row["sky"] is None and row["megapixels"] == 4.0  # NaN stored as NULL


def test_input_statistics_come_from_the_quality_profile():
    from astrid.imaging.synthetic import make_observation
    from astrid.quality import observation_profile

    obs = make_observation(5, size=128, sky_level=2000.0, seeing_fwhm=4.0)

    class Triplet:
        science, reference, difference = obs.science, obs.reference, obs.difference
        header, wcs, name = obs.header, obs.wcs, "t"

    stats = input_statistics(Triplet)
    profile = observation_profile(Triplet)
    assert stats == {
        "sky": profile["sci_background"],
        "seeing_px": profile["fwhm_px"],
        "noise": profile["diff_noise"],
        "megapixels": 128 * 128 / 1e6,
    }
    assert stats["sky"] == pytest.approx(2000.0, rel=0.2)
    # larger seeing, larger recorded seeing (the profile's unit convention is the quality gate's)
    wider = make_observation(5, size=128, sky_level=2000.0, seeing_fwhm=6.0)

    class Wider(Triplet):
        science, reference, difference, header = (
            wider.science,
            wider.reference,
            wider.difference,
            wider.header,
        )

    assert input_statistics(Wider)["seeing_px"] == pytest.approx(stats["seeing_px"] * 1.5, rel=0.01)
