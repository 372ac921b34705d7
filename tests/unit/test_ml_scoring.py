"""Pure scoring (astrid.ml.scoring): one-to-one matching, recall per SNR bin, rates, markdown."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from astrid.ml.detect import Detection
from astrid.ml.scoring import (
    FLOORS,
    SNR_BINS,
    EvaluationReport,
    bin_label,
    comparison_markdown,
    match_detections,
    score_detections,
)


def _t(x, y, snr):
    return SimpleNamespace(x=x, y=y, snr=snr, flux=1.0, host="blank")


def _d(x, y, score=0.9):
    return Detection(x, y, None, None, score, 1.0)


def test_match_is_one_to_one_within_radius_by_score():
    truth = [_t(10, 10, 8), _t(50, 50, 5)]
    dets = [_d(11, 10, 0.7), _d(10.5, 10.5, 0.99), _d(52.9, 50, 0.8), _d(80, 80, 0.6)]
    r = match_detections(dets, truth, radius=3.0)
    assert r.truth_matched == [True, True]
    # the higher-scored of the two near (10, 10) claims it; the other is a duplicate = false
    assert r.detection_true == [False, True, True, False]
    assert (r.true_positives, r.false_positives) == (2, 2)
    assert match_detections([_d(13.5, 10)], [_t(10, 10, 8)]).truth_matched == [False]
    assert match_detections([], truth).truth_matched == [False, False]


def test_match_accepts_dicts():
    r = match_detections([{"x": 1.0, "y": 1.0, "score": 0.9}], [{"x": 2.0, "y": 1.0, "snr": 5}])
    assert r.truth_matched == [True]


def test_score_bins_rates_and_markdown():
    truth = [_t(10, 10, 2.0), _t(30, 30, 5.0), _t(50, 50, 8.0), _t(70, 70, 25.0)]
    dets = [_d(30, 30), _d(50, 51), _d(70, 70), _d(90, 10)]
    report = score_detections([(dets, truth, 2_000_000)], detector="u", threshold=0.5)
    bins = {b["label"]: (b["n"], b["recovered"]) for b in report.recall_by_snr}
    assert (
        bins["<3"] == (1, 0) and bins["4.5–7"] == (1, 1) and bins["7–10"] == (1, 1) and bins["≥20"] == (1, 1)
    )
    assert report.recall == pytest.approx(0.75)
    assert report.precision == pytest.approx(0.75)
    assert report.f1 == pytest.approx(0.75)
    assert report.false_per_mpix == pytest.approx(0.5)
    assert report.recall_between(7.0) == 1.0
    assert math.isnan(report.recall_between(3.0, 4.5))
    assert report.meets_floors() == {
        "recall_snr_ge_7": True,
        "recall_snr_4.5_7": True,
        "false_per_mpix": True,
    }
    d = report.to_dict()
    assert d["f1"] == 0.75 and d["recall_by_snr"][-1]["hi"] is None
    md = report.to_markdown()
    assert "| recall, SNR 4.5–7 | 1.000 (1/1) |" in md and "| F1 | 0.750 |" in md


def test_empty_report_is_safe():
    r = EvaluationReport(detector="x")
    assert r.f1 == 0.0 and r.precision == 0.0 and r.false_per_mpix == 0.0


def test_a_detection_without_score_and_no_truth_are_handled():
    r = match_detections([{"x": 5.0, "y": 5.0}, {"x": 6.0, "y": 5.0, "score": None}], [])
    assert (r.truth_matched, r.detection_true, r.false_positives) == ([], [False, False], 2)
    # unscored detections rank as 0: the scored one claims the transient even though it is listed last
    r = match_detections([{"x": 5.0, "y": 5.0}, {"x": 6.0, "y": 5.0, "score": 0.1}], [{"x": 5.5, "y": 5.0}])
    assert r.detection_true == [False, True]


def test_the_nearest_free_transient_is_claimed_and_the_radius_is_inclusive():
    truth = [_t(10, 10, 8), _t(12, 10, 8)]
    r = match_detections([_d(11.8, 10, 0.9), _d(10.4, 10, 0.5)], truth, radius=3.0)
    assert r.truth_matched == [True, True] and r.detection_true == [True, True]
    assert match_detections([_d(13, 10)], [_t(10, 10, 8)], radius=3.0).truth_matched == [True]
    assert match_detections([_d(13, 10)], [_t(10, 10, 8)], radius=2.9).truth_matched == [False]


def test_bin_labels():
    assert [bin_label(lo, hi) for lo, hi in SNR_BINS] == ["<3", "3–4.5", "4.5–7", "7–10", "10–20", "≥20"]


def test_score_sums_observations_and_uses_the_given_bins():
    frame1 = ([_d(10, 10)], [_t(10, 10, 0.5), _t(40, 40, 12.0)], 500_000)
    frame2 = ([_d(40, 40), _d(41, 41)], [_t(40, 40, 12.0)], 1_500_000)
    report = score_detections(
        iter([frame1, frame2]), detector="d", radius=2.0, bins=((1.0, 10.0), (10.0, math.inf))
    )
    assert (report.observations, report.truth, report.detections) == (2, 3, 3)
    assert (report.true_positives, report.false_positives) == (2, 1)
    assert report.megapixels == pytest.approx(2.0) and report.radius == 2.0 and report.threshold is None
    # SNR 0.5 lies below the first bin: counted there, as the first bin is open below
    assert [(b["label"], b["n"], b["recovered"]) for b in report.recall_by_snr] == [
        ("1–10", 1, 1),
        ("≥10", 2, 1),
    ]
    assert report.recall == pytest.approx(2 / 3)
    assert report.false_per_mpix == pytest.approx(0.5)


def test_floors_fail_when_a_rate_or_recall_misses_them():
    truth = [_t(10 * i, 10, 8.0) for i in range(1, 11)]
    found = [_d(10 * i, 10) for i in range(1, 10)]  # 9 of 10 at SNR 7-10: below the 0.95 floor
    report = score_detections([(found + [_d(500, 500)] * 3, truth, 1_000_000)])
    assert report.recall_between(7.0) == pytest.approx(0.9)
    assert report.false_per_mpix == pytest.approx(3.0)
    assert report.false_per_mpix > FLOORS["false_per_mpix_max"]
    floors = report.meets_floors()
    assert floors["recall_snr_ge_7"] is False and floors["false_per_mpix"] is False
    assert math.isnan(report.recall_between(4.5, 7.0)) and floors["recall_snr_4.5_7"] is False


def test_comparison_markdown_has_one_column_per_detector():
    truth = [_t(10, 10, 5.0), _t(30, 30, 25.0)]
    a = score_detections([([_d(10, 10), _d(30, 30)], truth, 1_000_000)], detector="unet", threshold=0.5)
    b = score_detections([([_d(30, 30), _d(80, 80)], truth, 1_000_000)], detector="mf")
    md = comparison_markdown([a, b])
    lines = md.splitlines()
    assert lines[0] == "| | unet | mf |" and lines[1] == "|---|---:|---:|"
    assert "| recall, SNR 4.5–7 | 1.000 (1/1) | 0.000 (0/1) |" in lines
    assert "| recall, SNR 3–4.5 | – | – |" in lines  # an empty bin
    assert "| false detections / Mpix | 0.000 (0) | 1.000 (1) |" in lines
    assert "| threshold | 0.5 | – |" in lines
    assert len(lines) == 2 + len(SNR_BINS) + 7
    assert comparison_markdown([]) == ""
    assert a.to_markdown() == comparison_markdown([a])
