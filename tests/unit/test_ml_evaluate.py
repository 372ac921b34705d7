"""The evaluation harness: held-out seeds, scoring against the ideal detector, the workflow
(matching and per-SNR scores themselves: test_ml_scoring.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from astrid.errors import ConfigError
from astrid.ml.detect import Detection
from astrid.ml.evaluate import check_held_out


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


# -- against the ideal detector (issue 19) ---------------------------------------------------------


def _records():
    """Two hand-made frames: known rate curves, local SNRs, host classes, matches and false counts."""
    from astrid.ml.evaluate import FrameRecord
    from astrid.ml.ideal import NoisePeakRate

    curve = NoisePeakRate(rate_at_fit_level=150.0, steepness=1.0)
    a = FrameRecord(
        n_pixels=1_000_000,
        rate=curve,
        snr_local=[5.0, 6.0, 8.0, 20.0, 3.0],
        host=["blank", "galaxy", "blank", "star", "blank"],
        found={"m": [True, False, True, True, True], "b": [True, True, True, True, False]},
        false={"m": 1, "b": 30},
    )
    b = FrameRecord(
        n_pixels=1_000_000,
        rate=curve,
        snr_local=[4.6, 9.0, 13.0],
        host=["crowded", "crowded", "galaxy"],
        found={"m": [False, True, False], "b": [True, True, True]},
        false={"m": 0, "b": 20},
    )
    return [a, b]


def test_ideal_report_numbers_on_a_seeded_case():
    from scipy.special import ndtr

    from astrid.ml.evaluate import ideal_report

    rep = ideal_report(_records(), ["m", "b"])
    assert rep.megapixels == pytest.approx(2.0) and rep.observations == 2
    t_m = _records()[0].rate.threshold(0.5)  # model: 1 false on 2 Mpix
    t_b = _records()[0].rate.threshold(25.0)  # baseline: 50 false on 2 Mpix
    assert t_m > t_b
    r = rep.row("m", "all", "4.5–7")  # SNR 5 (found), 6 (missed), 4.6 (missed)
    assert (r["n"], r["found"]) == (3, 1)
    ideal = (ndtr(5 - t_m) + ndtr(6 - t_m) + ndtr(4.6 - t_m)) / 3
    assert r["ideal"] == pytest.approx(ideal)
    assert r["efficiency"] == pytest.approx((1 / 3) / ideal)
    # F1 of the bin: its 3 transients as positives, every false detection (1) against it
    assert r["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    r = rep.row("m", "all", "≥12")  # SNR 20 (found) and 13 (missed)
    assert (r["n"], r["found"], r["recall"]) == (2, 1, 0.5)
    assert rep.row("m", "crowded", "7–12")["found"] == 1 and rep.row("m", "galaxy", "≥12")["found"] == 0
    assert rep.row("b", "all", "4.5–7")["ideal"] > rep.row("m", "all", "4.5–7")["ideal"]
    s = rep.summary["m"]
    assert s["false_detections"] == 1 and s["false_per_mpix"] == pytest.approx(0.5)
    # SNR >= 4.5: 7 transients (the SNR-3 one is found but not scored), 4 found, 1 false
    assert s["recall_snr_ge_4.5"] == pytest.approx(4 / 7)
    assert s["f1_snr_ge_4.5"] == pytest.approx(2 * 0.8 * (4 / 7) / (0.8 + 4 / 7))
    floors = rep.floors("m")
    assert floors == {
        "efficiency ≥ 0.90 every bin": False,
        "efficiency ≥ 0.85 every host-class bin": True,  # no host-class bin has 10 transients
        "F1 ≥ 0.85 at SNR ≥ 4.5": False,
        "≤ 1 false / Mpix": True,
    }
    assert rep.floors("b")["≤ 1 false / Mpix"] is False
    d = rep.to_dict()
    assert d["floors_met"]["m"] == floors and d["rows"][0]["hi"] == 7.0
    assert {(x["detector"], x["host"]) for x in d["rows"]} == {
        (det, h) for det in ("m", "b") for h in ("all", "blank", "galaxy", "star", "crowded")
    }


def test_ideal_report_on_real_frames_and_markdown():
    from astrid.imaging.realsky import make_real_sky_observation
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.baseline import MatchedFilterDetector
    from astrid.ml.evaluate import evaluate_many, ideal_markdown, ideal_report

    class Truth:
        """A detector that reports every injected transient: the ideal's upper end."""

        version = "truth"

        def detect(self, obs):
            return [Detection(t.x, t.y, None, None, 1.0, t.flux) for t in obs.truth]

    records = []
    frames = [make_observation(4242, size=384), make_real_sky_observation(3, size=256)]
    evaluate_many({"truth": Truth(), "mf": MatchedFilterDetector()}, frames, records=records)
    assert len(records) == 2 and all(len(r.host) == len(r.snr_local) for r in records)
    rep = ideal_report(records, ["truth", "mf"])
    assert rep.summary["truth"]["false_detections"] == 0
    for r in rep.rows:
        if r["detector"] == "truth" and r["n"]:
            assert r["recall"] == 1.0 and r["efficiency"] >= 1.0
    md = ideal_markdown(rep, "truth", "mf")
    assert md.count("| all |") == 3 and "| crowded |" in md and "Floors (model):" in md


def test_run_evaluation_reports_both_families_against_the_ideal(tmp_path):
    """The `astrid evaluate` workflow end to end with the shipped model on tiny frames."""
    from pathlib import Path

    from astrid.ml.evaluate import run_evaluation

    model = Path(__file__).resolve().parents[2] / "include" / "models" / "astrid-unet"
    md = tmp_path / "model.md"
    png = tmp_path / "img" / "eff.png"
    out = run_evaluation(
        model,
        seed=1000,
        observations=2,
        size=256,
        crowded_every=2,
        real_sky=1,
        real_sky_size=128,
        device="cpu",
        update_card=False,
        markdown=md,
        plot=png,
    )
    assert set(out.ideal) == {"synthetic", "real_sky"}
    assert out.ideal["synthetic"].observations == 2 and out.ideal["real_sky"].observations == 1
    text = md.read_text()
    assert "<!-- astrid-evaluate:start:ideal-crowded2 -->" in text and "**Real sky**" in text
    assert "--crowded-every 2 --real-sky 1" in text
    assert png.exists() and png.stat().st_size > 1000
