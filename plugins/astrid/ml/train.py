"""Train the U-Net on the synthetic survey: deterministic, CPU-friendly, calibrated at 0.5.

Recipe (every number is in :class:`TrainConfig` and recorded in the model card):

1. **Data.** ``observations`` frames of ``size``² px from :func:`astrid.imaging.synthetic.make_observation`
   with seeds ``1_000_000 + 10_000 * seed + i`` (evaluation seeds below 1,000,000 are never used
   for training). Every generator knob is drawn per seed by the generator itself (PSF shape and
   seeing, sky, gain, read noise, star density, galaxies, artifact rates, misregistration,
   PSF mismatch, ...); on top of that :func:`astrid.imaging.synthetic.training_knobs` widens some ranges beyond the survey
   defaults (more crowded fields, larger misregistration/PSF mismatch, more cosmic rays, trails
   and faders, more transients per frame, fainter transients) so the model does not learn one
   generator's exact settings.
2. **Inputs.** :func:`astrid.ml.normalise.normalise_stack` on the whole frame (as inference does).
3. **Targets.** A disk of radius ``target_radius`` px around every transient with
   SNR ≥ ``min_target_snr``; the ring out to ``ignore_radius`` around every transient, and the
   whole neighbourhood of fainter ones, is "don't care" (weight 0), so the loss neither rewards
   nor punishes sub-threshold or slightly offset responses.
4. **Patches.** ``patch``² crops, re-drawn every epoch: ``positive_fraction`` centred (with
   jitter) on transients, ``hard_negative_fraction`` on hard negatives (strongest residuals of
   the difference image away from transients — subtraction dipoles, cosmic rays, hot pixels,
   bad columns, trails, faders — and the brightest stars of the science image), the rest
   uniform; ``edge_fraction`` straddle the frame edges (residuals of sources partly outside the
   frame). After the epochs in ``mine_after`` the model's own false positives on the training
   frames are mined and oversampled as hard negatives, and the transients it misses
   (SNR ≥ ``missed_min_snr``, below ``missed_threshold``) make up ``missed_fraction`` of the
   positive patches until the next mining. Random flips/transposes (the 8
   symmetries of the square).
5. **Loss.** Pixel-weighted binary cross-entropy + soft Dice (batch-level), AdamW, one-cycle LR.
6. **Operating point.** On ``calibration_observations`` more frames (seeds
   ``2_000_000 + 10_000 * seed + i``, disjoint from training and evaluation) the full engine
   runs; for each star-residual vetting level in ``vetting_levels`` (:mod:`astrid.ml.vetting`;
   ``None`` = none) the lowest probability threshold whose false-detection rate is at most
   ``calibration_false_per_mpix`` is found, and the pair recovering the most transients of
   SNR ≥ 4.5 wins. The output bias is then shifted by the threshold's logit so that **0.5 is the
   calibrated operating point** (the threshold everyone uses by default), and the vetting level
   goes into the card (``thresholds.star_residual_min_excess``), where the engine reads it.
   :func:`recalibrate` (``astrid calibrate``) redoes this step alone on a trained model.

Deterministic for a fixed seed and thread count: ``torch.manual_seed``, one ``numpy`` Generator,
``torch.use_deterministic_algorithms(True)``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TRAIN_SEED_BASE = 1_000_000
CALIBRATION_SEED_BASE = 2_000_000
SEEDS_PER_RUN = 10_000
# star-residual vetting levels tried at calibration (None = no vetting): astrid.ml.vetting
VETTING_LEVELS: tuple[float | None, ...] = (None, 1.0, 1.5, 2.0, 2.5, 3.0)


def train_seeds(seed: int, n: int) -> range:
    """Generator seeds of the training observations of run ``seed``."""
    start = TRAIN_SEED_BASE + SEEDS_PER_RUN * seed
    return range(start, start + n)


def calibration_seeds(seed: int, n: int) -> range:
    start = CALIBRATION_SEED_BASE + SEEDS_PER_RUN * seed
    return range(start, start + n)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1
    epochs: int = 30
    observations: int = 240
    size: int = 512
    patch: int = 64
    patches_per_epoch: int = 3072
    batch_size: int = 48
    base_channels: int = 16
    depth: int = 3
    in_channels: int = 5  # difference, science, reference + residual + matched (astrid.ml.normalise)
    lr: float = 3e-3
    weight_decay: float = 1e-4
    target_radius: float = 2.5
    ignore_radius: float = 4.0
    min_target_snr: float = 3.0
    dice_weight: float = 0.25
    positive_fraction: float = 0.35
    hard_negative_fraction: float = 0.45
    edge_fraction: float = 0.05
    # epochs after which the model's own false positives are mined as hard negatives
    mine_after: tuple[int, ...] = (4, 8, 12, 16, 20, 24)
    mine_threshold: float = 0.3
    # at the same epochs, transients of SNR >= missed_min_snr the model scores below missed_threshold
    # are mined too, and drawn for this share of positive patches (0 turns it off). Off by default:
    # seed 1 with 0.5 calibrated worse than without (docs/model.md, "Tried and not shipped")
    missed_fraction: float = 0.0
    missed_min_snr: float = 4.5
    missed_threshold: float = 0.5
    # share of training frames with bright bulge+disc galaxy hosts (BRIGHT_HOST_KNOBS; 0 = off, the
    # shipped recipe): real skies' hosts are brighter than the default generator's (issue 19)
    bright_host_fraction: float = 0.0
    calibration_observations: int = 40
    calibration_size: int = 1024
    calibration_false_per_mpix: float = 0.8
    vetting_levels: tuple[float | None, ...] = VETTING_LEVELS
    threads: int = 2
    knobs: dict[str, Any] = field(default_factory=dict)  # fixed generator knobs for every frame (tests)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BRIGHT_HOST_KNOBS: dict[str, Any] = {
    "host_profile": "bulge_disc",
    "host_flux_range": (300.0, 6000.0),
    "host_fractions": (0.3, 0.1, 0.6),
}


@dataclass
class _Frame:
    x: np.ndarray  # (C, H, W) float16 normalised stack
    target: np.ndarray  # (H, W) uint8
    weight: np.ndarray  # (H, W) uint8 (0 = don't care)
    positives: np.ndarray  # (N, 2) (row, col)
    snr: np.ndarray  # (N,) optimal SNR of each positive
    negatives: np.ndarray  # (M, 2) (row, col)
    mined: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))  # model's own FPs
    missed: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # its misses


def _disk_masks(
    shape: tuple[int, int], truth: list[Any], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    target = np.zeros(shape, dtype=np.uint8)
    weight = np.ones(shape, dtype=np.uint8)
    r_ign = config.ignore_radius
    for t in truth:
        r0, r1 = max(0, math.floor(t.y - r_ign)), min(h, math.ceil(t.y + r_ign) + 1)
        c0, c1 = max(0, math.floor(t.x - r_ign)), min(w, math.ceil(t.x + r_ign) + 1)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        r = np.hypot(xx - t.x, yy - t.y)
        if t.snr >= config.min_target_snr:
            target[r0:r1, c0:c1] |= (r <= config.target_radius).astype(np.uint8)
            ring = (r > config.target_radius) & (r <= r_ign)
        else:
            ring = r <= r_ign
        weight[r0:r1, c0:c1][ring] = 0
    weight[target.astype(bool)] = 1
    from astrid.ml.engine import DEFAULT_BORDER

    b = DEFAULT_BORDER  # the engine zeroes this rim at inference: nothing to learn there
    weight[:b], weight[-b:], weight[:, :b], weight[:, -b:] = 0, 0, 0, 0
    return target, weight


def _hard_negatives(x: np.ndarray, truth: list[Any]) -> np.ndarray:
    """(row, col) of residuals and bright stars at least 8 px from every transient.

    Every local maximum of |difference| above 3.5σ (cosmic rays, hot pixels, bad columns,
    trails, subtraction dipoles, faders, noise peaks — up to 1000, strongest first) and the 200
    brightest stars of the science image.
    """
    from scipy import ndimage

    diff = np.abs(x[0].astype(np.float32))
    sci = x[1].astype(np.float32)
    picks = []
    for img, level, limit in ((diff, 3.5, 1000), (sci, 30.0, 200)):
        peaks = (img == ndimage.maximum_filter(img, size=9)) & (img > level)
        rows, cols = np.nonzero(peaks)
        order = np.argsort(-img[rows, cols])[:limit]
        picks.append(np.stack([rows[order], cols[order]], axis=1))
    cand = np.concatenate(picks) if picks else np.zeros((0, 2), int)
    if len(truth) and len(cand):
        t = np.array([[tr.y, tr.x] for tr in truth])
        d = np.hypot(cand[:, None, 0] - t[None, :, 0], cand[:, None, 1] - t[None, :, 1]).min(axis=1)
        cand = cand[d > 8]
    return cand.astype(np.int32)


def make_frame(obs: Any, config: TrainConfig) -> _Frame:
    """Normalised inputs, target/weight masks and sampling centres of one observation."""
    from astrid.ml.normalise import normalise_stack

    x = normalise_stack(obs.science, obs.reference, obs.difference, channels=config.in_channels)
    target, weight = _disk_masks(x.shape[1:], obs.truth, config)
    positives = np.array([[t.y, t.x] for t in obs.truth], dtype=np.float32).reshape(-1, 2)
    snr = np.array([t.snr for t in obs.truth], dtype=np.float32)
    negatives = _hard_negatives(x, obs.truth)
    return _Frame(x.astype(np.float16), target, weight, positives, snr, negatives)


def _crop(a: np.ndarray, r0: int, c0: int, p: int) -> np.ndarray:
    """``a[..., r0:r0+p, c0:c0+p]`` with reflection outside the frame."""
    h, w = a.shape[-2:]
    if r0 >= 0 and r0 + p <= h and c0 >= 0 and c0 + p <= w:
        return a[..., r0 : r0 + p, c0 : c0 + p]
    from astrid.ml.normalise import reflect_index

    rows = reflect_index(np.arange(r0, r0 + p), h)
    cols = reflect_index(np.arange(c0, c0 + p), w)
    return a[..., rows[:, None], cols[None, :]]


def sample_batches(
    frames: list[_Frame], config: TrainConfig, rng: np.random.Generator, n: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (x, target, weight) batches totalling ``n`` patches."""
    p = config.patch
    done = 0
    while done < n:
        b = min(config.batch_size, n - done)
        xs = np.empty((b, frames[0].x.shape[0], p, p), np.float32)
        ts = np.empty((b, 1, p, p), np.float32)
        ws = np.empty((b, 1, p, p), np.float32)
        for i in range(b):
            f = frames[int(rng.integers(len(frames)))]
            h, w = f.target.shape
            u = rng.random()
            if u < config.positive_fraction and len(f.positives):
                use_missed = len(f.missed) and rng.random() < config.missed_fraction
                pool = f.missed if use_missed else f.positives
                cy, cx = pool[int(rng.integers(len(pool)))]
                cy, cx = cy + rng.uniform(-0.35, 0.35) * p, cx + rng.uniform(-0.35, 0.35) * p
            elif u < config.positive_fraction + config.hard_negative_fraction and (
                len(f.negatives) or len(f.mined)
            ):
                use_mined = len(f.mined) and (not len(f.negatives) or rng.random() < 0.7)
                pool = f.mined if use_mined else f.negatives
                cy, cx = pool[int(rng.integers(len(pool)))]
                cy, cx = cy + rng.uniform(-0.35, 0.35) * p, cx + rng.uniform(-0.35, 0.35) * p
            elif u < config.positive_fraction + config.hard_negative_fraction + config.edge_fraction:
                # frame edges: subtraction residuals of partly-outside sources (no transient is that close)
                along = rng.uniform(0, max(h, w))
                side = int(rng.integers(4))
                cy, cx = [(0, along), (h - 1, along), (along, 0), (along, w - 1)][side]
                cy, cx = cy + rng.uniform(-0.25, 0.25) * p, cx + rng.uniform(-0.25, 0.25) * p
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r0, c0 = round(cy) - p // 2, round(cx) - p // 2
            x = _crop(f.x, r0, c0, p).astype(np.float32)
            t = _crop(f.target, r0, c0, p).astype(np.float32)
            wt = _crop(f.weight, r0, c0, p).astype(np.float32)
            k = int(rng.integers(8))  # dihedral augmentation
            if k & 1:
                x, t, wt = x[..., ::-1], t[..., ::-1], wt[..., ::-1]
            if k & 2:
                x, t, wt = x[..., ::-1, :], t[..., ::-1, :], wt[..., ::-1, :]
            if k & 4:
                x, t, wt = x.swapaxes(-1, -2), t.swapaxes(-1, -2), wt.swapaxes(-1, -2)
            xs[i], ts[i, 0], ws[i, 0] = x, t, wt
        done += b
        yield xs, ts, ws


def _frame_probability(model: Any, f: _Frame) -> np.ndarray:
    """The model's probability map over one whole training frame (eval mode, no grad)."""
    import torch

    x = torch.from_numpy(f.x.astype(np.float32))[None].contiguous(memory_format=torch.channels_last)
    weight = next(model.parameters(), None)
    if weight is not None:
        x = x.to(weight.device)  # the device the model trains on
    h, w = f.target.shape
    m = model.multiple
    if h % m or w % m:
        x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
    return torch.sigmoid(model(x))[0, 0, :h, :w].cpu().numpy()


def _false_positives(prob: np.ndarray, f: _Frame, threshold: float, limit: int) -> np.ndarray:
    """(row, col) of the strongest components above ``threshold`` more than 6 px from every
    transient and 8 px from the frame edge."""
    from scipy import ndimage

    h, w = prob.shape
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros((0, 2), np.int32)
    idx = np.arange(1, n + 1)
    peaks = np.array(ndimage.maximum_position(prob, labels, idx), dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(ndimage.maximum(prob, labels, idx))
    inside = (peaks[:, 0] >= 8) & (peaks[:, 0] < h - 8) & (peaks[:, 1] >= 8) & (peaks[:, 1] < w - 8)
    peaks, scores = peaks[inside], scores[inside]
    if len(f.positives):
        d = np.hypot(peaks[:, None, 0] - f.positives[None, :, 0], peaks[:, None, 1] - f.positives[None, :, 1])
        keep = d.min(axis=1) > 6.0
        peaks, scores = peaks[keep], scores[keep]
    return peaks[np.argsort(-scores)[:limit]].astype(np.int32)


def _missed(prob: np.ndarray, f: _Frame, min_snr: float, threshold: float) -> np.ndarray:
    """(row, col) of transients of SNR >= ``min_snr`` whose best probability within 2 px is
    below ``threshold`` — the hosted and crowded cases the model has not learned yet."""
    from scipy import ndimage

    if not len(f.positives):
        return np.zeros((0, 2), np.float32)
    best = ndimage.maximum_filter(prob, size=5)
    h, w = prob.shape
    rows = np.clip(np.round(f.positives[:, 0]).astype(int), 0, h - 1)
    cols = np.clip(np.round(f.positives[:, 1]).astype(int), 0, w - 1)
    miss = (f.snr >= min_snr) & (best[rows, cols] < threshold)
    return f.positives[miss]


def mine(model: Any, frames: list[_Frame], config: TrainConfig, limit: int = 300) -> tuple[int, int]:
    """Run the model over every training frame; store its false positives (oversampled as hard
    negatives) and, when ``missed_fraction`` > 0, its missed transients (oversampled as
    positives). Returns how many of each were found in total.

    False positives: components above ``mine_threshold`` more than 6 px from every transient.
    Misses: why mine them too — the positives the model gets wrong are transients on galaxy
    nuclei and bright stars, a minority of all positives but most of its misses; without this
    the star/residual hard negatives outweigh them and the model learns to suppress hosts.
    """
    import torch

    model.eval()
    n_fp = n_missed = 0
    with torch.inference_mode():
        for f in frames:
            prob = _frame_probability(model, f)
            f.mined = _false_positives(prob, f, config.mine_threshold, limit)
            n_fp += len(f.mined)
            if config.missed_fraction > 0:
                f.missed = _missed(prob, f, config.missed_min_snr, config.missed_threshold)
                n_missed += len(f.missed)
    model.train()
    return n_fp, n_missed


@dataclass
class TrainResult:
    weights: Path
    card: Any
    seconds: float
    history: list[dict[str, float]]


def _loss_fn(config: TrainConfig) -> Callable:
    import torch
    import torch.nn.functional as F

    def loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        bce = F.binary_cross_entropy_with_logits(
            logits, target, weight=weight, reduction="sum"
        ) / weight.sum().clamp(min=1)
        prob = torch.sigmoid(logits) * weight
        inter = (prob * target).sum()
        dice = 1 - (2 * inter + 1) / (prob.sum() + (target * weight).sum() + 1)
        return bce + config.dice_weight * dice

    return loss


def generate_observations(
    seeds: range,
    size: int,
    knob_rng: np.random.Generator | None,
    fixed: dict[str, Any],
    progress: bool,
    desc: str,
    bright_fraction: float = 0.0,
    bright_rng: np.random.Generator | None = None,
) -> Iterator[Any]:
    """The frames of ``seeds``; with ``bright_rng``, a ``bright_fraction`` of them (drawn from that
    stream only, so the other frames are unchanged) get :data:`BRIGHT_HOST_KNOBS`."""
    from astrid.imaging.synthetic import make_observation, training_knobs

    iterator: Any = seeds
    if progress:
        from tqdm import tqdm

        iterator = tqdm(seeds, desc=desc, unit="obs")
    for s in iterator:
        knobs = training_knobs(knob_rng, size) if knob_rng is not None else {}
        if bright_rng is not None and bright_rng.random() < bright_fraction:
            knobs.update(BRIGHT_HOST_KNOBS)
        knobs.update(fixed)
        yield make_observation(s, size=size, **knobs)


def calibrate_threshold(
    engine: Any,
    observations: list[Any],
    max_false_per_mpix: float,
    grid: np.ndarray | None = None,
    vetting_levels: tuple[float | None, ...] = (None,),
) -> dict[str, Any]:
    """The operating point: a probability threshold and a star-residual vetting level.

    For each vetting level (``None`` = no vetting, else the ``min_excess`` of
    :mod:`astrid.ml.vetting`) the lowest threshold whose false-detection rate on
    ``observations`` is ≤ ``max_false_per_mpix`` is found; the level whose point recovers the
    most transients of SNR ≥ 4.5 wins (no level reaching the rate: the one with the fewest false
    detections at its highest threshold). Returns the chosen threshold and level, the sweep that
    found them, and each level's own best point for the record.
    """
    from astrid.ml.detect import extract_detections
    from astrid.ml.scoring import score_detections
    from astrid.ml.vetting import StarResidualVetter

    vetting = any(level is not None for level in vetting_levels)
    maps = [(engine.probability(o), o, StarResidualVetter(o) if vetting else None) for o in observations]

    def sweep(level: float | None) -> dict[str, Any]:
        rows: dict[float, dict[str, Any]] = {}

        def at(t: float) -> dict[str, Any]:
            t = round(float(t), 4)
            if t not in rows:
                pairs = []
                for p, o, vetter in maps:
                    found = extract_detections(p, o.difference, t)
                    if level is not None:
                        found = vetter.keep(found, level)
                    pairs.append((found, o.truth, o.difference.size))
                r = score_detections(pairs, threshold=t)
                rows[t] = {
                    "threshold": t,
                    "false_per_mpix": round(r.false_per_mpix, 4),
                    "recall_snr_ge_7": round(r.recall_between(7.0), 4),
                    "recall_snr_4.5_7": round(r.recall_between(4.5, 7.0), 4),
                    "recall_snr_ge_4.5": round(r.recall_between(4.5), 4),
                    "f1": round(r.f1, 4),
                }
            return rows[t]

        chosen = _lowest_passing(at, max_false_per_mpix, grid)
        return {
            "min_excess": level,
            "threshold": chosen,
            "chosen": at(chosen),
            "table": [rows[k] for k in sorted(rows)],
        }

    sweeps = [sweep(level) for level in vetting_levels]

    def merit(result: dict[str, Any]) -> tuple[bool, float]:
        row = result["chosen"]
        passes = row["false_per_mpix"] <= max_false_per_mpix
        return (passes, row["recall_snr_ge_4.5"] if passes else -row["false_per_mpix"])

    best = max(sweeps, key=merit)  # first of equals: the least vetting
    return {
        "threshold": best["threshold"],
        "min_excess": best["min_excess"],
        "chosen": best["chosen"],
        "table": best["table"],
        "levels": [{k: r[k] for k in ("min_excess", "threshold", "chosen")} for r in sweeps],
    }


def _lowest_passing(
    at: Callable[[float], dict[str, Any]], max_false: float, grid: np.ndarray | None
) -> float:
    """Lowest threshold with ``at(t)['false_per_mpix'] <= max_false`` (the highest tried if none)."""
    # thresholds evenly spaced in logit (0.047 ... 0.999), then refined between the last failing
    # and the first passing one
    coarse = 1 / (1 + np.exp(-np.linspace(-3.0, 7.0, 21))) if grid is None else np.asarray(grid, dtype=float)
    chosen = None
    previous = None
    for t in coarse:
        if at(t)["false_per_mpix"] <= max_false:
            chosen = float(t)
            break
        previous = float(t)
    if chosen is None:
        return round(float(coarse[-1]), 4)
    if previous is not None and grid is None:
        lo, hi = math.log(previous / (1 - previous)), math.log(chosen / (1 - chosen))
        for z in np.linspace(lo, hi, 6)[1:-1]:
            t = 1 / (1 + math.exp(-z))
            if at(t)["false_per_mpix"] <= max_false:
                chosen = t
                break
    return round(chosen, 4)


def calibrate_model(model: Any, config: TrainConfig, *, progress: bool = False) -> dict[str, Any]:
    """Place ``model``'s operating point at probability 0.5 (its head bias is shifted in place).

    Runs the fp32 engine (deterministic) over the calibration frames of ``config``'s seed,
    calibrates threshold and vetting level (:func:`calibrate_threshold`) and shifts the output
    bias by the threshold's logit. Returns the record that goes into the card.
    """
    import torch

    from astrid.ml.engine import InferenceEngine

    if config.calibration_observations <= 0:
        return {"threshold": 0.5, "min_excess": None, "note": "not calibrated (calibration_observations=0)"}
    seeds = calibration_seeds(config.seed, config.calibration_observations)
    cal_obs = list(
        generate_observations(
            seeds, config.calibration_size, None, config.knobs, progress, "calibration observations"
        )
    )
    model.eval()
    engine = InferenceEngine(model, device="cpu", batch_size=4, precision="fp32")  # deterministic
    calibration = calibrate_threshold(
        engine, cal_obs, config.calibration_false_per_mpix, vetting_levels=tuple(config.vetting_levels)
    )
    t = calibration["threshold"]
    shift = math.log(t / (1 - t))
    with torch.no_grad():
        model.head.bias -= shift
    calibration.update(
        logit_shift=round(shift, 5),
        seeds=[seeds.start, seeds.stop - 1],
        size=config.calibration_size,
        target_false_per_mpix=config.calibration_false_per_mpix,
        note=f"output bias shifted by -logit({t}) so that probability 0.5 is this operating point",
    )
    log.info(
        "calibrated operating point: raw threshold %.4f -> 0.5, vetting %s", t, calibration["min_excess"]
    )
    return calibration


def card_thresholds(calibration: dict[str, Any]) -> dict[str, Any]:
    """The card's ``thresholds`` for a calibration record (the engine reads the vetting level here)."""
    return {
        "default": 0.5,
        "recommended": 0.5,
        "raw_calibrated": calibration["threshold"],
        "star_residual_min_excess": calibration.get("min_excess"),
    }


def train(
    config: TrainConfig,
    output: str | Path,
    *,
    version: str | None = None,
    command: str | None = None,
    progress: bool = False,
    extra_observations: Sequence[Any] = (),
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train, calibrate and write ``model.safetensors`` + ``model_card.json`` into ``output``.

    Hooks for orchestrators (the training DAG, :mod:`astrid.training`):

    * ``extra_observations``: labelled frames trained on beside the synthetic ones (objects with
      ``science``, ``reference``, ``difference`` arrays and ``truth`` transients, like
      :class:`~astrid.imaging.synthetic.SyntheticObservation`); counted in the card's ``data``.
    * ``on_epoch``: called with each epoch's history row (``epoch``, ``loss``, ``seconds``...)
      as soon as the epoch ends, e.g. to log it to MLflow while training runs.
    * ``device``: ``cpu`` (default, deterministic) or ``cuda``; calibration always runs on CPU.
    """
    import torch

    from astrid.ml.engine import DEFAULT_BORDER
    from astrid.ml.normalise import describe
    from astrid.ml.unet import UNet, count_parameters
    from astrid.ml.weights import ModelCard, save_model

    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(config.seed)
    knob_rng = np.random.default_rng([config.seed, 1])

    seeds = train_seeds(config.seed, config.observations)
    frames = [
        make_frame(o, config)
        for o in generate_observations(
            seeds,
            config.size,
            knob_rng,
            config.knobs,
            progress,
            "generating training observations",
            config.bright_host_fraction,
            np.random.default_rng([config.seed, 0xB1]) if config.bright_host_fraction > 0 else None,
        )
    ]
    frames += [make_frame(o, config) for o in extra_observations]
    n_pos = sum(len(f.positives) for f in frames)
    log.info("training data: %d frames of %d² px, %d transients", len(frames), config.size, n_pos)

    model = UNet(in_channels=config.in_channels, base_channels=config.base_channels, depth=config.depth)
    model = model.to(device=device, memory_format=torch.channels_last)  # ~3x faster CPU convolutions
    steps_per_epoch = math.ceil(config.patches_per_epoch / config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.15
    )
    loss_fn = _loss_fn(config)
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps_per_epoch * config.epochs, desc="training", unit="step")
    model.train()
    for epoch in range(1, config.epochs + 1):
        t0, total, count = time.perf_counter(), 0.0, 0
        for xs, ts, ws in sample_batches(frames, config, rng, config.patches_per_epoch):
            logits = model(torch.from_numpy(xs).to(device).contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits, torch.from_numpy(ts).to(device), torch.from_numpy(ws).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(xs)
            count += len(xs)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{total / count:.4f}")
        row = {"epoch": epoch, "loss": round(total / count, 5), "seconds": round(time.perf_counter() - t0, 1)}
        if epoch in config.mine_after and epoch < config.epochs:
            row["mined_false_positives"], row["mined_missed_transients"] = mine(model, frames, config)
            log.info(
                "epoch %d: mined %d false positives as hard negatives, %d missed transients",
                epoch,
                row["mined_false_positives"],
                row["mined_missed_transients"],
            )
        history.append(row)
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch, config.epochs, row["loss"], row["seconds"])
        if on_epoch is not None:
            on_epoch(dict(row))
    if bar is not None:
        bar.close()
    model = model.cpu().eval()  # calibration and saving run on CPU
    train_seconds = time.perf_counter() - started

    calibration = calibrate_model(model, config, progress=progress)

    version = version or time.strftime("%Y.%m.%d")
    card = ModelCard(
        name="astrid-unet",
        version=version,
        architecture=model.config(),
        parameters=count_parameters(model),
        training={
            "recipe": config.to_dict(),
            "seed": config.seed,
            "epochs_history": history,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            "torch": torch.__version__,
            "threads": config.threads,
            "device": device,
            "optimizer": f"AdamW(lr={config.lr}, weight_decay={config.weight_decay}), OneCycleLR",
            "loss": f"weighted BCE + {config.dice_weight} × soft Dice",
            "hard_negative_mining": f"model false positives (p > {config.mine_threshold}) on the training frames "
            f"after epochs {list(config.mine_after)} are oversampled as hard negatives",
            "missed_transient_mining": (
                f"transients of SNR >= {config.missed_min_snr} the model scores below {config.missed_threshold} "
                f"on the training frames, mined at the same epochs, are {config.missed_fraction:.0%} of positive patches"
                if config.missed_fraction > 0
                else "off"
            ),
            "calibration": calibration,
        },
        data={
            "generator": "astrid.imaging.synthetic.make_observation",
            "generator_version": _generator_version(),
            "train_seeds": [seeds.start, seeds.stop - 1],
            "frame_size": config.size,
            "transients": n_pos,
            "extra_observations": len(extra_observations),
            "knob_overrides": "training_knobs() in astrid/imaging/synthetic.py (per frame, on top of the generator's own draws)",
            "fixed_knobs": config.knobs,
            "held_out": "seeds < 1,000,000 are never used for training or calibration",
        },
        command=command or _command(config, output),
        thresholds=card_thresholds(calibration),
        normalisation={**describe(), "inference_edge_border_px": DEFAULT_BORDER},
    )
    weights = save_model(model, card, output)
    from astrid.ml.weights import read_card

    return TrainResult(
        weights=weights, card=read_card(output), seconds=time.perf_counter() - started, history=history
    )


def _generator_version() -> int | None:
    try:
        from astrid.imaging.synthetic import GENERATOR_VERSION

        return int(GENERATOR_VERSION)
    except (ImportError, AttributeError):  # pragma: no cover
        return None


def _command(config: TrainConfig, output: str | Path) -> str:
    return (
        f"astrid train --output {output} --seed {config.seed} --epochs {config.epochs} "
        f"--observations {config.observations} --size {config.size} --patch {config.patch} "
        f"--patches-per-epoch {config.patches_per_epoch} --batch-size {config.batch_size} "
        f"--base-channels {config.base_channels} --depth {config.depth} --in-channels {config.in_channels} "
        f"--mine-after {','.join(map(str, config.mine_after))} "
        f"--missed-fraction {config.missed_fraction} "
        f"--calibration-observations {config.calibration_observations} --threads {config.threads}"
    )


def recalibrate(
    directory: str | Path,
    *,
    observations: int | None = None,
    version: str | None = None,
    command: str | None = None,
    progress: bool = False,
) -> Any:
    """Re-place a trained model's operating point without retraining; returns the new card.

    Why: the operating point depends on what runs after the network (the star-residual vetting
    of :mod:`astrid.ml.vetting`), so a change there must not cost a 30-minute retraining. The
    card's previous ``logit_shift`` is undone, :func:`calibrate_model` runs with the card's own
    recipe (``observations`` overrides its calibration frame count), and weights + card are
    rewritten under a new version. Metrics measured at the old operating point are dropped:
    run ``astrid evaluate`` again.
    """
    from dataclasses import fields, replace

    import torch

    from astrid.ml.weights import load_model, save_model

    model, card = load_model(directory)
    known = {f.name for f in fields(TrainConfig)}
    recipe = {k: tuple(v) if isinstance(v, list) else v for k, v in card.training.get("recipe", {}).items()}
    config = TrainConfig(**{k: v for k, v in recipe.items() if k in known})
    if observations is not None:
        config = replace(config, calibration_observations=observations)
    previous = card.training.get("calibration", {})
    with torch.no_grad():
        model.head.bias += float(previous.get("logit_shift", 0.0))
    calibration = calibrate_model(model, config, progress=progress)
    calibration["command"] = command or f"astrid calibrate --model {directory}"
    calibration["previous"] = {
        k: previous.get(k) for k in ("threshold", "min_excess", "logit_shift", "seeds")
    }
    card.training["recipe"] = config.to_dict()
    card.training["calibration"] = calibration
    card.thresholds = card_thresholds(calibration)
    card.metrics = {}
    card.version = version or time.strftime("%Y.%m.%d")
    save_model(model, card, directory)
    from astrid.ml.weights import read_card

    return read_card(directory)
