"""The validation review (astrid.review): stamps of what a model got wrong, kept bounded and most
instructive first, on a gallery page that shows any observation name as text."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from astrid.imaging.synthetic import make_observation
from astrid.review import ValidationReview


@pytest.fixture(scope="module")
def observation():
    return make_observation(11, size=256, n_transients=8)


def _detection(x: float, y: float, score: float) -> SimpleNamespace:
    return SimpleNamespace(x=x, y=y, score=score)


def test_missed_and_false_cases_are_kept_brightest_and_most_confident_first(observation, tmp_path):
    truth = observation.truth
    probability = np.zeros_like(observation.difference)
    found = [_detection(t.x + 0.5, t.y, 0.9) for t in truth[:3]]  # three found, the rest missed
    bogus = [_detection(20.0 + 30 * k, 200.0, score) for k, score in enumerate((0.55, 0.95, 0.7))]
    review = ValidationReview(limit=4)
    review.add("frame-1", observation, probability, found + bogus, truth)

    assert review.counts == {"missed": len(truth) - 3, "false": 3}
    missed_snr = sorted((t.snr for t in truth[3:]), reverse=True)[:4]
    assert [c.value for c in review.missed] == pytest.approx(missed_snr)
    assert [c.value for c in review.false] == [0.95, 0.7, 0.55]
    assert all(c.png.startswith(b"\x89PNG") for c in review.missed + review.false)

    written = review.write(tmp_path, "Validation of champion v1")
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert "index.html" in names and len([n for n in names if n.startswith("missed/")]) == 4
    page = (tmp_path / "index.html").read_text()
    assert f"Missed transients (4 of {len(truth) - 3}" in page and "False detections (3 of 3" in page


def test_a_second_frame_displaces_only_less_instructive_cases(observation):
    probability = np.zeros_like(observation.difference)
    review = ValidationReview(limit=2)
    review.add("a", observation, probability, [_detection(40, 40, 0.6), _detection(80, 80, 0.7)], [])
    review.add("b", observation, probability, [_detection(120, 120, 0.99), _detection(160, 160, 0.5)], [])
    assert [(c.observation, c.value) for c in review.false] == [("b", 0.99), ("a", 0.7)]
    assert review.counts["false"] == 4


def test_observation_names_cannot_inject_markup_or_escape_the_folder(observation, tmp_path):
    probability = np.zeros_like(observation.difference)
    review = ValidationReview()
    name = "../../<script>alert(1)</script>"
    review.add(name, observation, probability, [_detection(50, 50, 0.8)], [])
    written = review.write(tmp_path, "<b>title</b>")
    assert all(tmp_path in p.resolve().parents for p in written)
    page = (tmp_path / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>title" not in page


def test_efficiency_is_recall_over_the_ideal_recall_at_the_models_own_false_rate(observation, tmp_path):
    from astrid.ml.ideal import ideal_recall

    truth = observation.truth
    probability = np.zeros_like(observation.difference)
    everything = [_detection(t.x, t.y, 0.9) for t in truth]
    review = ValidationReview()
    review.add("all-found", observation, probability, everything, truth)
    rows = review.efficiency(mpix=0.5)
    assert [(r["lo"], r["hi"]) for r in rows] == [(4.5, 7.0), (7.0, 12.0), (12.0, float("inf"))]
    snr = np.array([t.snr_local for t in truth])
    for r in rows:
        inside = (snr >= r["lo"]) & (snr < r["hi"])
        assert r["n"] == int(inside.sum())
        if r["n"]:
            expected_ideal = float(ideal_recall(snr[inside], r["t_star"]).mean())
            assert r["ideal"] == pytest.approx(expected_ideal)
            assert r["efficiency"] == pytest.approx(1.0 / expected_ideal)  # found them all
    # no false detection is taken as one (the ideal is never made arbitrarily strict): t* ~ 4-5.5
    assert 3.5 < rows[0]["t_star"] < 5.5

    missed_all = ValidationReview()
    missed_all.add("none-found", observation, probability, [], truth)
    assert all(r["efficiency"] == 0.0 for r in missed_all.efficiency(mpix=0.5) if r["n"])
    written = {p.name for p in review.write(tmp_path, "v1")}
    assert "efficiency_vs_snr.png" in written
    assert "efficiency_vs_snr.png" in (tmp_path / "index.html").read_text()
