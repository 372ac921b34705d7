"""Cost of star-residual vetting next to the U-Net, on full-size frames.

    PYTHONPATH=plugins .venv/bin/python bench/vetting.py [--frames 3] [--size 2048] [--repeats 3] [--write]

One process, the shipped model loaded once. For each synthetic frame (survey-default knobs),
best of ``repeats``: ``analyse(..., min_excess=None)`` (frame statistics, U-Net, detection
extraction) against ``analyse()`` with the card's vetting level (the same plus
:class:`astrid.ml.vetting.StarResidualVetter`: the frame's matched-filter map, its reference
stars and their residual model). The ratio is the price of vetting per frame; it replaces the
"Vetting" section of docs/benchmarks.md with ``--write``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT / "plugins"), str(ROOT / "bench")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(frames: int, size: int, repeats: int) -> list[dict]:
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.engine import get_engine

    engine = get_engine(device="cpu")
    rows = []
    for seed in range(frames):
        obs = make_observation(900 + seed, size=size)
        engine.analyse(obs)  # warm-up: first-use allocations
        plain = _best(lambda o=obs: engine.analyse(o, min_excess=None), repeats)
        vetted = _best(lambda o=obs: engine.analyse(o), repeats)
        found = (len(engine.analyse(obs, min_excess=None)[1]), len(engine.analyse(obs)[1]))
        rows.append({"seed": 900 + seed, "plain_s": plain, "vetted_s": vetted, "detections": found})
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, level: float | None) -> str:
    lines = [
        "## Vetting",
        "",
        f"Star-residual vetting (`astrid.ml.vetting`, the card's level z ≥ {level}) next to the rest of",
        f"`InferenceEngine.analyse` on {args.size}² synthetic frames, one process, shipped model, cpu,",
        f"best of {args.repeats}; measured {time.strftime('%Y-%m-%d')} on this 2-core machine, Python "
        f"{platform.python_version()}:",
        "",
        "```bash",
        f"PYTHONPATH=plugins .venv/bin/python bench/vetting.py --frames {args.frames} --size {args.size} "
        f"--repeats {args.repeats} --write",
        "```",
        "",
        "| frame seed | analyse without vetting (s) | with vetting (s) | ratio | detections without → with |",
        "|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['plain_s']:.2f} | {r['vetted_s']:.2f} | {r['vetted_s'] / r['plain_s']:.3f}× "
            f"| {r['detections'][0]} → {r['detections'][1]} |"
        )
    mean = sum(r["vetted_s"] / r["plain_s"] for r in rows) / len(rows)
    lines += ["", f"Vetting adds {100 * (mean - 1):.1f} % to a frame's analysis on average.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--write", action="store_true", help="write the Vetting section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from astrid.ml.engine import get_engine

    rows = measure(args.frames, args.size, args.repeats)
    text = markdown(rows, args, get_engine(device="cpu").min_excess)
    print(text)
    if args.write:
        from load import write_section

        write_section(text, "## Vetting")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
