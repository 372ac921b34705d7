"""The shipped model, scored on held-out synthetic frames (seeds it was never trained on).

The issue's floors (recall >= 0.95 at SNR >= 7, >= 0.80 at 4.5-7, <= 1 false/Mpix) are NOT met by
this model yet (docs/model.md has the measured table); what is asserted here is what it does
achieve, so a regression shows: F1 far above the matched-filter baseline, bright transients found.
"""

from __future__ import annotations

from astrid.imaging.synthetic import make_observation
from astrid.ml.baseline import MatchedFilterDetector
from astrid.ml.engine import get_engine
from astrid.ml.evaluate import evaluate_many
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
