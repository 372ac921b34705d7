"""The ``astrid.*`` metrics: one list of names, and the small interface the core emits through.

The core never imports Airflow, so it emits through any object with ``incr/gauge/timing``
(:class:`Metrics`). Inside a task the Airflow face passes Airflow's own ``Stats`` client, which
adds the ``[metrics] statsd_prefix`` (``airflow.`` by default) and sends StatsD over UDP. Per-DAG
metrics end in ``.<dag_id>`` like Airflow's legacy names, so one statsd-exporter mapping rule turns
the suffix into a ``dag_id`` label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# name -> (StatsD type, description). docs/metrics.md and include/monitoring are checked against this.
METRICS: dict[str, tuple[str, str]] = {
    "astrid.observations.claimed": ("counter", "observations claimed by a run"),
    "astrid.observations.processed": ("counter", "observations inferred successfully"),
    "astrid.observations.failed": ("counter", "observations that failed inference (error kept)"),
    "astrid.observations.rejected": ("counter", "observations rejected by the data-quality gate"),
    "astrid.detections": ("counter", "detections written to the catalog"),
    "astrid.inference.latency": ("timer", "per-observation inference time (ms)"),
    "astrid.model.load_time": ("timer", "time to load the U-Net weights (ms)"),
    "astrid.throughput_mpix": ("gauge", "inference throughput of the last run (megapixels/s)"),
    "astrid.run.success_rate": ("gauge", "processed / (processed + failed) in the last run"),
    "astrid.run.detections": ("gauge", "detections found by the last run"),
    "astrid.memory.rss_mb": ("gauge", "host resident memory of the inference process (MB)"),
    "astrid.memory.gpu_mb": ("gauge", "peak GPU memory allocated during the run (MB)"),
    "astrid.alerts.sent": ("counter", "alerts delivered (after cool-down suppression)"),
    "astrid.alerts.suppressed": ("counter", "alerts suppressed by the cool-down"),
    "astrid.validation.f1": ("gauge", "F1 of the champion on the weekly validation set"),
    "astrid.deadline.missed": ("counter", "deadline alerts fired for a DAG run (from our deadline callback)"),
    # the nightly drift check (astrid.drift): KS distance D of each statistic, current vs reference
    "astrid.drift.score": ("gauge", "drift check: KS distance of the detection score distribution"),
    "astrid.drift.detections_per_mpix": ("gauge", "drift check: KS distance of detections per megapixel"),
    "astrid.drift.sky": ("gauge", "drift check: KS distance of the input sky level"),
    "astrid.drift.seeing": ("gauge", "drift check: KS distance of the input seeing (FWHM)"),
    "astrid.drift.noise": ("gauge", "drift check: KS distance of the difference-image noise"),
    "astrid.drift.rejection_rate": ("gauge", "drift check: KS distance of the rejected/accepted indicator"),
    "astrid.drift.drifted": ("gauge", "drift check: statistics past the drift threshold (0 = none)"),
}


def metric_name(base: str, dag_id: str | None = None) -> str:
    """``base`` (a key of :data:`METRICS`) with the DAG id appended when the metric is per-DAG."""
    if base not in METRICS:
        raise KeyError(f"unknown metric {base!r}: add it to astrid.metrics.METRICS first")
    return f"{base}.{dag_id}" if dag_id else base


class Metrics(Protocol):
    """What the core needs from a StatsD client (Airflow's ``Stats`` satisfies it)."""

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None: ...

    def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False) -> None: ...

    def timing(self, stat: str, dt: float) -> None: ...


@dataclass
class NullMetrics:
    """Used when monitoring is disabled or outside Airflow (CLI, notebooks)."""

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        return None

    def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False) -> None:
        return None

    def timing(self, stat: str, dt: float) -> None:
        return None
