"""Pre-flight safety check: skip a run (logging why) when the host is already overloaded.

Starting a GPU/CPU-heavy inference on a worker that is out of memory or thrashing makes every
task on it slower and risks the OOM killer taking the scheduler's neighbours with it; skipping
one 15-minute slot is cheaper (the observations stay claimable for the next run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import psutil


class Limits(Protocol):
    """The limits a run must stay under (an :class:`~astrid.config.InferenceSchedulingConfig` is one)."""

    max_memory_percent: float
    max_load_per_cpu: float
    max_gpu_memory_percent: float


@dataclass(frozen=True)
class PreflightLimits:
    max_memory_percent: float
    max_load_per_cpu: float
    max_gpu_memory_percent: float


@dataclass(frozen=True)
class PreflightReport:
    ok: bool
    memory_percent: float
    load_per_cpu: float
    gpu_memory_percent: float | None
    reasons: list[str] = field(default_factory=list)


def gpu_memory_percent() -> float | None:
    """Used share of GPU 0's memory, or None without CUDA (torch imported only if already loaded)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return 100.0 * (1 - free / total)


def check(
    config: Limits,
    *,
    memory_percent: float | None = None,
    load_per_cpu: float | None = None,
    gpu_percent: float | None = None,
) -> PreflightReport:
    """Measure (or take the given readings, for tests) and compare against the configured limits."""
    memory_percent = psutil.virtual_memory().percent if memory_percent is None else memory_percent
    load_per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1) if load_per_cpu is None else load_per_cpu
    gpu_percent = gpu_memory_percent() if gpu_percent is None else gpu_percent
    reasons = []
    if memory_percent > config.max_memory_percent:
        reasons.append(
            f"host memory {memory_percent:.0f}% > ASTRID_INFERENCE_MAX_MEMORY_PERCENT={config.max_memory_percent:.0f}%"
        )
    if load_per_cpu > config.max_load_per_cpu:
        reasons.append(
            f"load per CPU {load_per_cpu:.2f} > ASTRID_INFERENCE_MAX_LOAD_PER_CPU={config.max_load_per_cpu:.2f}"
        )
    if gpu_percent is not None and gpu_percent > config.max_gpu_memory_percent:
        reasons.append(
            f"GPU memory {gpu_percent:.0f}% > ASTRID_INFERENCE_MAX_GPU_MEMORY_PERCENT={config.max_gpu_memory_percent:.0f}%"
        )
    return PreflightReport(not reasons, memory_percent, load_per_cpu, gpu_percent, reasons)
