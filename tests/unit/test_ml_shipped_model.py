"""The shipped model, scored on held-out synthetic frames (seeds it was never trained on).

The issue's floors (recall >= 0.95 at SNR >= 7, >= 0.80 at 4.5-7, <= 1 false/Mpix) are not all met
by this model yet (docs/model.md has the measured table); what is asserted here is what it does
achieve, so a regression shows: F1 far above the matched-filter baseline, bright transients found,
star residuals of a bad subtraction vetted away.
"""

from __future__ import annotations

from astrid.imaging.synthetic import make_observation
from astrid.ml.baseline import MatchedFilterDetector
from astrid.ml.engine import get_engine
from astrid.ml.evaluate import evaluate_many
from astrid.ml.scoring import match_detections
from astrid.ml.weights import load_model
from astrid.paths import shipped_model_path


def test_shipped_card_states_measured_quality():
    _, card = load_model(shipped_model_path())
    held_out = card.metrics["held_out"]
    assert held_out["unet"]["observations"] >= 10
    assert held_out["unet"]["f1"] > held_out["baseline_matched_filter"]["f1"] + 0.4


def test_shipped_model_beats_the_baseline_on_held_out_frames():
    observations = [make_observation(1_500_000 + i, size=512) for i in range(3)]
    reports = evaluate_many(
        {"unet": get_engine(device="cpu"), "baseline": MatchedFilterDetector()}, observations
    )
    unet, baseline = reports["unet"], reports["baseline"]
    assert unet.f1 >= 0.7, unet.to_markdown()
    assert unet.f1 > baseline.f1 + 0.3, (unet.f1, baseline.f1)
    assert unet.recall_between(7.0) >= 0.85, unet.to_markdown()


def test_shipped_operating_point_vets_the_star_residuals_of_a_bad_subtraction():
    """A 5 % PSF-model mismatch leaves a transient-like residual on every bright star: the card's
    vetting level must remove those false detections and keep every real one."""
    engine = get_engine(device="cpu")
    assert engine.min_excess is not None  # calibrated with vetting (thresholds.star_residual_min_excess)
    false_vetted = false_plain = 0
    for seed in (1_500_102, 1_500_103):
        obs = make_observation(seed, size=512, psf_mismatch=0.05, star_density=5000.0)
        vetted = match_detections(engine.analyse(obs)[1], obs.truth)
        plain = match_detections(engine.analyse(obs, min_excess=None)[1], obs.truth)
        assert vetted.true_positives == plain.true_positives > 0
        false_vetted += vetted.false_positives
        false_plain += plain.false_positives
    assert false_plain >= 10 and false_vetted <= 0.2 * false_plain, (false_vetted, false_plain)
