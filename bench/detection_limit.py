"""How many faint transients any matched-filter detector can find at a given false-detection rate.

    PYTHONPATH=plugins .venv/bin/python bench/detection_limit.py [--frames 10] [--write]

Not a speed benchmark: an information bound for the detector's quality floors. Two measurements
on synthetic frames of 1024², with the statistic the vetting uses (``M``, the difference's
per-pixel significance correlated with a Gaussian of the measured seeing, unit noise; the local
maximum within 2 px, as for a candidate):

* **noise**: frames with nothing in them but sky and noise (no stars, galaxies, cosmic rays, hot
  pixels, bad columns, trails or faders; three bright transients, masked out) — how many local
  maxima of ``M`` per megapixel reach each level. Whatever a detector calls a source at that
  level, noise alone gives it this many false detections.
* **transients**: survey-default frames — the fraction of blank-sky transients of SNR 4.5–7
  whose ``M`` reaches each level.

Together: the recall at SNR 4.5–7 that a matched filter could reach with noise alone using up a
given false-detection budget. ``--write`` replaces the ``detection-limit`` block of docs/model.md.

``astrid evaluate`` turns the same idea into the per-transient bound it reports
(:mod:`astrid.ml.ideal`: white noise through the frame's true PSF instead of empty synthetic
frames through the measured Gaussian, local SNR instead of the generator's SNR); both count peaks
with :func:`astrid.ml.ideal.local_maxima`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))

LEVELS = (4.0, 4.25, 4.5, 4.75, 5.0, 5.25, 5.5)
EMPTY_SKY = {
    "star_density": 1e-3,
    "galaxy_fraction": 0.0,
    "cosmic_ray_rate": 0.0,
    "hot_pixel_rate": 0.0,
    "n_bad_columns": 0,
    "satellite_trails": 0,
    "fader_rate": 0.0,
    "n_transients": 3,
    "snr_range": (60.0, 60.0),
}


def noise_peaks(frames: int, size: int) -> tuple[np.ndarray, float]:
    """Local maxima (5×5) of ``M`` on empty-sky frames, and the area searched (Mpix)."""
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.ideal import local_maxima
    from astrid.ml.normalise import matched_significance, stack_stats

    values, area = [], 0
    for seed in range(5000, 5000 + frames):
        obs = make_observation(seed, size=size, **EMPTY_SKY)
        stats = stack_stats(obs.science, obs.reference, obs.difference)
        m = matched_significance(obs.difference, obs.science, stats)
        ok = np.ones(m.shape, dtype=bool)
        ok[:16], ok[-16:], ok[:, :16], ok[:, -16:] = False, False, False, False
        for t in obs.truth:  # the three bright transients are not noise
            r, c = round(t.y), round(t.x)
            ok[max(r - 15, 0) : r + 16, max(c - 15, 0) : c + 16] = False
        peaks = local_maxima(m, 5) & ok
        values.extend(m[peaks].tolist())
        area += int(ok.sum())
    return np.asarray(values), area / 2**20


def faint_transients(frames: int, size: int) -> np.ndarray:
    """``M`` (local max within 2 px) at every blank-sky transient of SNR 4.5–7."""
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.normalise import matched_peaks, stack_stats
    from astrid.ml.vetting import STAR_RADIUS

    values = []
    for seed in range(5100, 5100 + 3 * frames):
        obs = make_observation(seed, size=size)
        faint = [t for t in obs.truth if 4.5 <= t.snr < 7.0 and t.host == "blank"]
        if faint:
            stats = stack_stats(obs.science, obs.reference, obs.difference)
            rows = np.array([round(t.y) for t in faint])
            cols = np.array([round(t.x) for t in faint])
            values.extend(matched_peaks(obs.difference, obs.science, stats, rows, cols, STAR_RADIUS).tolist())
    return np.asarray(values)


def markdown(peaks: np.ndarray, mpix: float, faint: np.ndarray, args: argparse.Namespace) -> str:
    lines = [
        f"Empty-sky noise: {args.frames} frames of {args.size}² ({mpix:.1f} Mpix searched); faint transients: "
        f"{len(faint)} blank-sky transients of SNR 4.5–7 on {3 * args.frames} survey-default frames.",
        "",
        "```",
        f"PYTHONPATH=plugins .venv/bin/python bench/detection_limit.py --frames {args.frames} --write",
        "```",
        "",
        "| matched statistic ≥ | noise-only false detections / Mpix | recall of blank-sky SNR 4.5–7 |",
        "|---:|---:|---:|",
    ]
    for level in LEVELS:
        lines.append(f"| {level:g} | {np.sum(peaks >= level) / mpix:.2f} | {np.mean(faint >= level):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--write", action="store_true", help="write the detection-limit block of docs/model.md"
    )
    args = parser.parse_args(argv)
    peaks, mpix = noise_peaks(args.frames, args.size)
    text = markdown(peaks, mpix, faint_transients(args.frames, args.size), args)
    print(text)
    if args.write:
        from astrid.ml.evaluate import update_markdown

        update_markdown(ROOT / "docs" / "model.md", text, key="detection-limit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
