"""Inference benchmark: our engine vs the naive way the original ticket ran the model.

    PYTHONPATH=plugins .venv/bin/python bench/inference.py [--device cpu|cuda] [--write]

* **engine**: ``get_engine()`` once per process (model loaded once, BatchNorm folded into the
  convolutions), overlapping tiles spread evenly over the frame and streamed in batches,
  ``inference_mode``, ``channels_last``, autocast (bf16 on CUDA and on CPUs with native bf16).
* **engine fp32**: the same engine forced to fp32 (``precision="fp32"``), to show what the
  precision is worth on its own.
* **naive**: for *every* observation the model is loaded from disk again, the whole frame is
  normalised and pushed through the network in one fp32 forward pass (batch of one), under
  ``torch.no_grad``.

Each configuration runs in a fresh subprocess so peak memory is its own: ``ru_maxrss`` of the
child (host RSS high-water mark, includes the input frames), plus
``torch.cuda.max_memory_allocated`` on CUDA. Inputs are synthetic survey frames (stars,
galaxies, transients: the per-frame statistics cost more on a starry sky than on noise); the frames
exist before timing starts and are the same for every mode.
With ``--write`` the markdown replaces the ``## Inference`` section of docs/benchmarks.md
(other sections are left alone).

``--stamps`` runs only the separate *stamps and photometry* measurement (see its section at the
end of this file) and, with ``--write``, replaces the ``## Stamps and photometry`` section.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SIZES = (512, 1024, 2048, 4096)


def _frames(size: int, n: int):
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.normalise import normalise_stack  # noqa: F401 (import cost outside timing)

    # a real-looking frame (stars, galaxies, transients): the frame statistics (seeing, the
    # subtraction residual from the reference's stars) cost more on a sky full of stars than on noise
    src = make_observation(size, size=size)
    sci, ref, diff = src.science, src.reference, src.difference

    class Obs:
        pass

    obs = []
    for i in range(n):  # n views of the same arrays: distinct observations, no extra memory
        o = Obs()
        o.science, o.reference, o.difference, o.name, o.wcs = sci, ref, diff, f"bench-{i}", None
        obs.append(o)
    return obs


def _naive(model_path: str, obs, device: str) -> None:
    """How the original ticket did it: reload per observation, full frame, fp32, batch of one."""
    import numpy as np
    import torch

    from astrid.ml.normalise import normalise_stack
    from astrid.ml.weights import load_model

    for o in obs:
        model, _ = load_model(model_path)
        model = model.to(device)
        x = normalise_stack(o.science, o.reference, o.difference, channels=model.in_channels)
        h, w = x.shape[1:]
        m = model.multiple
        x = np.pad(x, ((0, 0), (0, -h % m), (0, -w % m)), mode="reflect")
        with torch.no_grad():
            p = torch.sigmoid(model(torch.from_numpy(x)[None].to(device)))[0, 0, :h, :w].cpu().numpy()
        del model, p


def _worker(spec: dict) -> dict:
    import psutil
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    obs = _frames(spec["size"], spec["n"])
    before = psutil.Process().memory_info().rss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        if spec["mode"] in ("engine", "engine fp32"):
            from astrid.ml.engine import InferenceEngine, get_engine

            if spec["mode"] == "engine":
                engine = get_engine(spec["model"], device=device, batch_size=spec["batch_size"])
            else:
                engine = InferenceEngine.from_path(
                    spec["model"], device=device, batch_size=spec["batch_size"], precision="fp32"
                )
            for o in obs:
                engine.probability(o)
        else:
            _naive(spec["model"], obs, device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    out = {
        **spec,
        "seconds": min(times),
        "peak_rss_mb": peak / 2**20,
        "inference_rss_mb": max(0, peak - before) / 2**20,
    }
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_row(r: dict) -> str:
    mpix = r["size"] ** 2 * r["n"] / 1e6
    cells = [
        f"{r['size']}²",
        str(r["n"]),
        r["mode"],
        f"{r['seconds']:.2f}",
        f"{mpix / r['seconds']:.2f}",
        f"{r['n'] / r['seconds']:.3f}",
        f"{r['peak_rss_mb']:.0f}",
        f"{r['inference_rss_mb']:.0f}",
    ]
    if "cuda_peak_mb" in r:
        cells.append(f"{r['cuda_peak_mb']:.0f}")
    return "| " + " | ".join(cells) + " |"


def markdown(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    import torch

    cuda = any("cuda_peak_mb" in r for r in results)
    by = {(r["mode"], r["size"], r["n"]): r for r in results}
    lines = ["## Inference", ""]
    dev = results[0]["device"]
    hw = (
        torch.cuda.get_device_name(0)
        if dev == "cuda"
        else f"{platform.processor() or platform.machine()}, {args.threads} torch threads"
    )
    lines += [
        f"Measured {time.strftime('%Y-%m-%d')} on {dev} ({hw}), torch {torch.__version__}, model "
        f"`{Path(args.model).relative_to(ROOT) if Path(args.model).is_relative_to(ROOT) else args.model}`; "
        f"benchmark wall time {wall:.0f} s.",
        "",
        "```",
        f"PYTHONPATH=plugins .venv/bin/python bench/inference.py --device {args.device} --threads {args.threads}"
        + (" --write" if args.write else ""),
        "```",
        "",
        "*engine*: model loaded once per process with BatchNorm folded, tiles of at most 640² (1024² on CUDA) "
        f"spread evenly with 52 px context margins, batch {args.batch_size}, inference_mode, channels_last, "
        f"{_precision_label(dev)}. *engine fp32*: the same, fp32. *naive*: model re-loaded from "
        "disk for every observation, whole frame in one fp32 forward pass, batch of one. Peak RSS is the child "
        "process's high-water mark including the input frames (3 float32 arrays); 'inference RSS' is the "
        "growth over the RSS before inference started.",
        "",
    ]
    ratio_rows = []
    for n in (1, args.many):
        e, v = by.get(("engine", 2048, n)), by.get(("naive", 2048, n))
        f = by.get(("engine fp32", 2048, n))
        if e and v:
            ratio_rows.append(
                f"| 2048² × {n} | {v['seconds'] / e['seconds']:.2f}× "
                f"| {(v['seconds'] / f['seconds']) if f else float('nan'):.2f}× | {v['inference_rss_mb'] / max(e['inference_rss_mb'], 1):.1f}× "
                f"| {e['inference_rss_mb']:.0f} MB vs {v['inference_rss_mb']:.0f} MB |"
                + (f" {v['cuda_peak_mb'] / max(e['cuda_peak_mb'], 1):.1f}× |" if cuda else "")
            )
    if ratio_rows:
        lines += [
            "**Engine vs naive** (speed-up = naive time / engine time; memory ratio on inference RSS):",
            "",
            "| workload | speed-up | speed-up of engine fp32 | memory ratio | inference RSS engine vs naive |"
            + (" CUDA peak ratio |" if cuda else ""),
            "|---|---:|---:|---:|---|" + ("---:|" if cuda else ""),
            *ratio_rows,
            "",
        ]
    head = "| frame | obs | mode | seconds | Mpix/s | obs/s | peak RSS MB | inference RSS MB |"
    sep = "|---|---:|---|---:|---:|---:|---:|---:|"
    if cuda:
        head += " CUDA peak MB |"
        sep += "---:|"
    lines += ["**Scaling** (one observation per run; best of the repeats):", "", head, sep]
    lines += [_fmt_row(r) for r in sorted(results, key=lambda r: (r["n"] > 1, r["size"], r["mode"]))]
    growth = []
    for mode in ("engine", "naive"):
        a, b = by.get((mode, 512, 1)), by.get((mode, 4096, 1))
        if a and b:
            growth.append(
                f"{mode}: 512² → 4096² (64× the pixels) took {b['seconds'] / a['seconds']:.0f}× the time and "
                f"{b['inference_rss_mb'] / max(a['inference_rss_mb'], 1):.1f}× the inference memory"
            )
    if growth:
        lines += ["", "Growth: " + "; ".join(growth) + "."]
    return "\n".join(lines) + "\n"


def _precision_label(device: str) -> str:
    from astrid.ml.engine import cpu_supports_bf16

    if device == "cuda" or cpu_supports_bf16():
        return "autocast to bf16 (native on this device)"
    return "no autocast (this CPU has no native bf16, so precision auto is fp32 and *engine* equals *engine fp32* up to noise)"


def write_section(text: str, path: Path = DOC, title: str = "Inference") -> None:
    """Replace (or append) the ``## {title}`` section of ``path``; other sections untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", doc, count=1)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc.rstrip("\n") + "\n")


# ==== Stamps and photometry (issue 16) ==========================================================
# What a frame's detections cost on top of its inference: astrid.photometry.measure (noise model,
# flux errors, magnitudes) and astrid.stamps.write_stamps (PNG + FITS per detection, local
# storage), against InferenceEngine.analyse (inference, extraction, vetting) of the same frame,
# in one process, best of the repeats. The budget is ~10 % of the inference time.

STAMP_SEEDS = (900, 901, 902)
STAMPS_SECTION = "Stamps and photometry"


STEPS = ("analyse", "photometry", "stamps")


def stamps_benchmark(args: argparse.Namespace) -> list[dict]:
    """Per frame, the best of ``args.repeats`` for each step, in wall time and in this process's
    CPU time (all its threads: torch's and the stamp writers'). CPU time is what a step costs
    the machine; on a shared, loaded machine it is also the steadier measure, since waiting for a
    core inflates the wall time of whatever is running."""
    import tempfile

    import torch

    from astrid.config import InferenceSchedulingConfig
    from astrid.imaging.synthetic import make_observation
    from astrid.ml.engine import get_engine
    from astrid.photometry import measure
    from astrid.stamps import stamp_prefix, write_stamps
    from astrid.storage import StorageRoot

    torch.set_num_threads(args.threads)
    limit = InferenceSchedulingConfig().stamps_max_per_observation
    engine = get_engine(args.model, device=args.device, batch_size=args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="astrid-bench-stamps-") as tmp:
        storage = StorageRoot(Path(tmp))
        for size in (int(s) for s in args.sizes.split(",")):
            for seed in STAMP_SEEDS:
                obs = make_observation(seed, size=size)
                # warm-up: allocations, caches, and the first use of astropy/PIL's imports
                probability, detections = engine.analyse(obs)
                warm = stamp_prefix(storage.path / "warm-up", seed, str(size))
                write_stamps(warm, obs, probability, measure(detections, obs), storage=storage, limit=limit)
                best = {f"{step} {clock}": math.inf for step in STEPS for clock in ("wall", "cpu")}
                for repeat in range(args.repeats):
                    marks = [(time.perf_counter(), time.process_time())]
                    probability, detections = engine.analyse(obs)
                    marks.append((time.perf_counter(), time.process_time()))
                    measured = measure(detections, obs)
                    marks.append((time.perf_counter(), time.process_time()))
                    prefix = stamp_prefix(storage.path / f"r{repeat}", seed, f"bench-{size}")
                    write_stamps(prefix, obs, probability, measured, storage=storage, limit=limit)
                    marks.append((time.perf_counter(), time.process_time()))
                    for i, step in enumerate(STEPS):
                        for j, clock in enumerate(("wall", "cpu")):
                            key = f"{step} {clock}"
                            best[key] = min(best[key], marks[i + 1][j] - marks[i][j])
                n = len(detections)
                rows.append({"seed": seed, "size": size, "detections": n, "written": min(n, limit), **best})
                print(f"  {size}² seed {seed}: {n} detections, {best}", file=sys.stderr, flush=True)
    return rows


def _cost(rows: list[dict], clock: str) -> float:
    extra = sum(r[f"photometry {clock}"] + r[f"stamps {clock}"] for r in rows)
    return extra / sum(r[f"analyse {clock}"] for r in rows)


def stamps_markdown(rows: list[dict], args: argparse.Namespace, load: tuple[float, float]) -> str:
    import torch

    lines = [
        f"## {STAMPS_SECTION}",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {args.device} "
        f"({platform.processor() or platform.machine()}, {args.threads} torch threads, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, shipped model, synthetic survey frames (the seeds of the vetting benchmark), "
        f"local storage, best of {args.repeats}. The machine was shared: 1-minute load average "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end, so wall times are inflated by waiting for "
        "a core (inference, on two threads, the most); the CPU-time ratio is the steadier figure.",
        "",
        "```",
        f"PYTHONPATH=plugins .venv/bin/python bench/inference.py --stamps --device {args.device} "
        f"--threads {args.threads} --sizes {args.sizes} --repeats {args.repeats}"
        + (" --write" if args.write else ""),
        "```",
        "",
        "*analyse*: `InferenceEngine.analyse` (inference, extraction, vetting). *photometry*: "
        "`astrid.photometry.measure` (noise model, flux errors, magnitudes). *stamps*: `astrid.stamps.write_stamps` "
        "(a PNG strip and a FITS file per observation holding its best "
        "`ASTRID_INFERENCE_STAMPS_MAX_PER_OBSERVATION` detections). CPU: this process's CPU time, all threads.",
        "",
        "| frame | seed | detections | analyse s wall / CPU | photometry s wall / CPU | stamps s wall / CPU "
        "| CPU ms per stamp | cost vs analyse, CPU | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = 1000 * r["stamps cpu"] / r["written"] if r["written"] else 0.0
        cells = [f"{r[f'{step} wall']:.3f} / {r[f'{step} cpu']:.3f}" for step in STEPS]
        lines.append(
            f"| {r['size']}² | {r['seed']} | {r['detections']} | {' | '.join(cells)} | {per:.2f} "
            f"| {100 * _cost([r], 'cpu'):.1f} % | {100 * _cost([r], 'wall'):.1f} % |"
        )
    lines += [
        "",
        f"Photometry and stamps add {100 * _cost(rows, 'cpu'):.1f} % to the frames' analysis in CPU time "
        f"({100 * _cost(rows, 'wall'):.1f} % in wall time on this loaded machine). On object storage "
        "the stamps add two PUT requests per observation (not measured here: no S3 endpoint but a local "
        "moto server, whose latency says nothing about S3's).",
    ]
    return "\n".join(lines) + "\n"


# ==== end of stamps and photometry =============================================================


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--model", default=str(ROOT / "include" / "models" / "astrid-unet"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--many", type=int, default=10, help="observations in the multi-observation run (default 10)"
    )
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="frame sides for the scaling table"
    )
    parser.add_argument(
        "--write", action="store_true", help="update the Inference section of docs/benchmarks.md"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--stamps", action="store_true", help="measure only the cost of photometry + stamps (own section)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the --stamps measurement")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.stamps:
        before = os.getloadavg()[0]
        rows = stamps_benchmark(args)
        text = stamps_markdown(rows, args, (before, os.getloadavg()[0]))
        print(text)
        if args.write:
            write_section(text, title=STAMPS_SECTION)
            print(f"updated {DOC}", file=sys.stderr)
        return 0
    started = time.perf_counter()
    base = {
        "device": args.device,
        "model": args.model,
        "threads": args.threads,
        "batch_size": args.batch_size,
    }
    plan = []
    for size in (int(s) for s in args.sizes.split(",")):
        repeats = 3 if size <= 1024 else 1
        for mode in ("engine", "naive"):
            plan.append({**base, "mode": mode, "size": size, "n": 1, "repeats": repeats})
    plan.append({**base, "mode": "engine fp32", "size": 2048, "n": 1, "repeats": 1})
    for mode in ("engine", "engine fp32", "naive"):
        plan.append({**base, "mode": mode, "size": 2048, "n": args.many, "repeats": 1})
    results = []
    for spec in plan:
        print(f"running {spec['mode']} {spec['size']}² × {spec['n']} ...", file=sys.stderr, flush=True)
        r = _run(spec)
        print(f"  {r['seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        results.append(r)
    text = markdown(results, args, time.perf_counter() - started)
    print(text)
    if args.write:
        write_section(text)
        print(f"updated {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
