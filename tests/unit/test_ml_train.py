"""Training is deterministic from its seed and writes a loadable, complete model card.

A deliberately tiny run (2 frames of 128², 2 epochs of 32 patches, base-4 depth-2 net): it checks
the machinery, not the quality (that is test_ml_shipped_model.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrid.ml.normalise import normalise_stack, robust_stats, stack_stats
from astrid.ml.train import TrainConfig, make_frame, mine, sample_batches, train, train_seeds
from astrid.ml.weights import load_model

torch.set_num_threads(1)

TINY = TrainConfig(
    seed=3,
    epochs=2,
    observations=2,
    size=128,
    patch=48,
    patches_per_epoch=32,
    batch_size=16,
    base_channels=4,
    depth=2,
    mine_after=(1,),
    calibration_observations=1,
    calibration_size=128,
    knobs={"n_transients": 4},
    threads=1,
)


def test_training_is_deterministic_and_card_complete(tmp_path):
    a = train(TINY, tmp_path / "a", version="t")
    b = train(TINY, tmp_path / "b", version="t")
    assert a.card.sha256 == b.card.sha256  # bit-identical weights from the same seed
    _, card = load_model(tmp_path / "a")
    assert card.training["seed"] == 3 and card.training["recipe"]["epochs"] == 2
    assert card.data["train_seeds"] == [train_seeds(3, 2).start, train_seeds(3, 2).stop - 1]
    assert card.data["train_seeds"][0] >= 1_000_000
    assert card.command.startswith("astrid train --output")
    assert card.thresholds["default"] == 0.5 and "raw_calibrated" in card.thresholds
    assert card.normalisation["module"] == "astrid.ml.normalise"
    assert len(card.training["epochs_history"]) == 2


def test_patches_have_targets_at_transients():
    from astrid.imaging.synthetic import make_observation

    obs = make_observation(train_seeds(3, 1).start, size=128, n_transients=4, snr_range=(10.0, 20.0))
    frame = make_frame(obs, TINY)
    assert frame.target.sum() > 0 and frame.x.shape == (5, 128, 128)
    for t in obs.truth:
        assert frame.target[round(t.y), round(t.x)] == 1
    cfg = TrainConfig(**{**TINY.to_dict(), "positive_fraction": 1.0, "hard_negative_fraction": 0.0})
    xs, ts, ws = next(sample_batches([frame], cfg, np.random.default_rng(0), 8))
    assert xs.shape == (8, 5, 48, 48) and ts.shape == ws.shape == (8, 1, 48, 48)
    assert (ts.reshape(8, -1).max(axis=1) == 1).all()  # every positive patch contains its target


class _FixedMap(torch.nn.Module):
    """Stands in for the U-Net with a chosen probability map, so the mining rules are checked
    against known answers (the real model's maps are exercised by the training test above)."""

    multiple = 1

    def __init__(self, prob: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.logit(torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6))[None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], 1, *self.logits.shape[-2:])


def test_mining_finds_false_positives_and_missed_transients():
    from astrid.imaging.synthetic import make_observation

    obs = make_observation(train_seeds(3, 1).start, size=128, n_transients=6, snr_range=(3.0, 30.0))
    frame = make_frame(obs, TINY)
    prob = np.zeros((128, 128), np.float32)
    found = [t for t in obs.truth if t.snr >= 10]  # the model "finds" only the bright ones
    for t in found:
        prob[round(t.y), round(t.x)] = 0.9
    far = np.hypot(frame.positives[:, 0] - 20, frame.positives[:, 1] - 20).min() > 10
    prob[20, 20] = 0.8  # and one false positive
    on = TrainConfig(**{**TINY.to_dict(), "missed_fraction": 0.5})
    n_fp, n_missed = mine(_FixedMap(prob), [frame], on)
    assert far and n_fp == 1 and frame.mined.tolist() == [[20, 20]]
    expect = sorted((t.y, t.x) for t in obs.truth if 4.5 <= t.snr < 10)
    assert expect and n_missed == len(expect)
    np.testing.assert_allclose(sorted(map(tuple, frame.missed)), expect, atol=1e-3)
    frame.missed = frame.missed[:0]
    assert mine(_FixedMap(prob), [frame], TINY) == (1, 0)  # off by default and len(frame.missed) == 0


def test_missed_transients_are_drawn_for_positive_patches():
    from astrid.imaging.synthetic import make_observation

    obs = make_observation(train_seeds(3, 1).start, size=128, n_transients=1, snr_range=(10.0, 20.0))
    frame = make_frame(obs, TINY)
    (t,) = obs.truth
    # the ordinary positive pool points at the corner farthest from the transient: only the
    # missed pool leads to its target
    decoy = [0.0 if t.y > 64 else 127.0, 0.0 if t.x > 64 else 127.0]
    frame.positives = np.array([decoy], np.float32)
    frame.missed = np.array([[t.y, t.x]], np.float32)
    base = {**TINY.to_dict(), "positive_fraction": 1.0, "hard_negative_fraction": 0.0}
    for fraction, every_patch_has_target in ((1.0, True), (0.0, False)):
        cfg = TrainConfig(**{**base, "missed_fraction": fraction})
        _, ts, _ = next(sample_batches([frame], cfg, np.random.default_rng(0), 16))
        assert (ts.reshape(16, -1).max(axis=1) == 1).all() == every_patch_has_target


def test_normalisation_is_robust_and_per_pixel():
    rng = np.random.default_rng(0)
    img = rng.normal(1000.0, 30.0, (256, 256))
    img[100:110, 100:110] += 1e5  # a saturated star must not move the statistics
    s = robust_stats(img)
    assert abs(s.background - 1000) < 1.0 and abs(s.noise - 30) < 1.0
    sci, ref = img.astype(np.float32), rng.normal(500.0, 10.0, (256, 256)).astype(np.float32)
    diff = (sci - 1000 - (ref - 500)).astype(np.float32)
    stats = stack_stats(sci, ref, diff)
    full = normalise_stack(sci, ref, diff, stats)
    tile = normalise_stack(sci[40:140, 60:200], ref[40:140, 60:200], diff[40:140, 60:200], stats)
    np.testing.assert_array_equal(full[:, 40:140, 60:200], tile)  # tiles see the frame's inputs
    assert abs(np.median(full[0])) < 0.05 and 0.9 < np.std(full[0][:50, :50]) < 1.1  # difference in σ
    # the star's photon noise enters the difference's per-pixel σ
    assert stats.gain is not None
    sigma = np.sqrt(stats.difference.noise**2 + (sci[105, 105] - stats.science.background) / stats.gain)
    expected = 20 * np.arcsinh((diff[105, 105] - stats.difference.background) / sigma / 20)
    assert full[0][105, 105] == np.float32(expected) or abs(full[0][105, 105] - expected) < 1e-3


def test_residual_channel_measures_the_frames_subtraction_quality():
    """ε tracks a known flux-scale error; clean subtractions give ~0; cosmic rays are not stars."""
    from astrid.imaging.synthetic import make_observation

    def eps(**knobs):
        o = make_observation(
            train_seeds(3, 1).start,
            size=512,
            misregistration=0.0,
            psf_mismatch=0.0,
            star_density=6000.0,
            **knobs,
        )
        return stack_stats(o.science, o.reference, o.difference).residual, o

    clean, _ = eps(flux_scale_error=0.0, cosmic_ray_rate=400.0)
    scaled, o = eps(flux_scale_error=0.05, cosmic_ray_rate=400.0)
    assert clean < 0.01 and 0.045 < scaled < 0.055  # a pure 5 % scale error reads as ε = 0.05
    x = normalise_stack(o.science, o.reference, o.difference, channels=4)
    assert x.shape == (4, 512, 512) and x[3].max() > 1.0 and x[3].min() >= 0.0
    np.testing.assert_array_equal(x[:3], normalise_stack(o.science, o.reference, o.difference))
    with pytest.raises(ValueError, match="3 to 5 input channels"):
        normalise_stack(o.science, o.reference, o.difference, channels=6)


def test_train_command_sets_input_channels_and_card_records_the_command(tmp_path, monkeypatch):
    """``astrid train --in-channels 3`` gives a 3-channel network; the card's command names every
    architecture flag, so running it again reproduces the same weights."""
    from astrid.cli import main

    args = [
        "train", "--output", str(tmp_path / "m"), "--seed", "3", "--epochs", "1", "--observations", "1",
        "--size", "128", "--patch", "48", "--patches-per-epoch", "16", "--batch-size", "16",
        "--base-channels", "4", "--depth", "2", "--in-channels", "3", "--mine-after", "",
        "--calibration-observations", "0", "--threads", "1",
    ]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["astrid", *args])
    assert main(args) == 0
    model, card = load_model(tmp_path / "m")
    assert model.in_channels == 3 and card.architecture["in_channels"] == 3
    assert "--in-channels 3" in card.command
    with pytest.raises(SystemExit):
        main([*args[:-2], "--in-channels", "6"])  # argparse names the valid choices


def test_calibrate_command_moves_the_operating_point_without_retraining(tmp_path, monkeypatch, capsys):
    """``astrid calibrate`` undoes the card's old shift before calibrating again: run twice with
    the same recipe it lands on the same operating point and (up to float rounding) the same
    output bias, under a new version whose stale metrics are gone."""
    from astrid.cli import main

    trained = train(TINY, tmp_path / "m", version="t").card
    before, _ = load_model(tmp_path / "m")
    args = ["calibrate", "--model", str(tmp_path / "m"), "--version", "t2"]
    monkeypatch.setattr("sys.argv", ["astrid", *args])
    assert main(args) == 0
    assert "raw threshold" in capsys.readouterr().out
    after, card = load_model(tmp_path / "m")  # the sha256 in the card matches the rewritten weights
    cal = card.training["calibration"]
    assert card.version == "t2" and card.metrics == {}
    assert cal["threshold"] == trained.training["calibration"]["threshold"] == cal["previous"]["threshold"]
    assert cal["command"] == "astrid " + " ".join(args)
    assert card.thresholds["raw_calibrated"] == cal["threshold"]
    assert card.thresholds["star_residual_min_excess"] == cal["min_excess"]
    assert cal["min_excess"] in TINY.vetting_levels and len(cal["levels"]) == len(TINY.vetting_levels)
    torch.testing.assert_close(after.head.bias, before.head.bias, rtol=0, atol=1e-5)


def test_bright_hosts_change_only_the_chosen_frames():
    from astrid.ml.train import generate_observations

    seeds = range(1_010_000, 1_010_004)
    plain = list(generate_observations(seeds, 128, np.random.default_rng(3), {}, False, ""))
    none = list(
        generate_observations(
            seeds, 128, np.random.default_rng(3), {}, False, "", 0.0, np.random.default_rng([1, 0xB1])
        )
    )
    every = list(
        generate_observations(
            seeds, 128, np.random.default_rng(3), {}, False, "", 1.0, np.random.default_rng([1, 0xB1])
        )
    )
    for a, b in zip(plain, none, strict=True):
        np.testing.assert_array_equal(a.difference, b.difference)
    assert all(o.params["host_profile"] == "bulge_disc" for o in every)
    assert all(tuple(o.params["host_flux_range"]) == (300.0, 6000.0) for o in every)
    assert all(o.params["host_profile"] == "sersic" for o in plain)
