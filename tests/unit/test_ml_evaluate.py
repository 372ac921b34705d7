"""Matching, scoring and report formatting (no model needed)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from astrid.errors import ConfigError
from astrid.ml.detect import Detection
from astrid.ml.evaluate import EvaluationReport, check_held_out, match_detections, score_detections


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


def test_held_out_check_refuses_training_seeds():
    card = SimpleNamespace(
        data={"train_seeds": [1_010_000, 1_010_239]},
        training={"calibration": {"seeds": [2_010_000, 2_010_011]}},
    )
    check_held_out(range(1000, 1020), card)
    with pytest.raises(ConfigError, match="training seeds"):
        check_held_out(range(1_010_200, 1_010_300), card)
    with pytest.raises(ConfigError, match="calibration seeds"):
        check_held_out(range(2_010_011, 2_010_012), card)
