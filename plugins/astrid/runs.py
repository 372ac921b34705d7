"""A DAG run's record in the catalog: the run report, the degradations it shows, a failed run.

The last step of an inference run merges the summaries of its (possibly mapped) inference steps,
records the run in ``inference_runs`` (what the status API and the zero-detection rule read),
sends the run-level gauges and says which degradations deserve an alert. A run that fails is
recorded as failed and its unfinished claims go back to the queue at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from astrid.catalog import Catalog
from astrid.metrics import Metrics, NullMetrics
from astrid.pipeline import RunInfo, RunSummary, emit_run_gauges


def rejected_count(claimed: Sequence[Any] | None, summary: dict[str, Any]) -> int:
    """Claimed observations that reached neither ``inferred`` nor ``failed``: the gate rejected them."""
    if not claimed:
        return 0
    return max(0, len(claimed) - summary["processed_count"] - summary["failed_count"])


def degradations(
    catalog: Catalog,
    run: RunInfo,
    summary: dict[str, Any],
    *,
    min_success_rate: float,
    zero_detection_runs: int,
) -> list[str]:
    """Messages for every degradation this run shows (empty when healthy).

    * a success rate below ``min_success_rate`` (when anything was attempted);
    * for realtime runs: the last ``zero_detection_runs`` recorded runs all processed observations
      and found nothing (an empty run is not evidence of a broken model).
    """
    messages = []
    attempted = summary["processed_count"] + summary["failed_count"]
    if attempted and summary["success_rate"] < min_success_rate:
        messages.append(
            f"success rate {summary['success_rate']:.2f} < {min_success_rate} "
            f"({summary['failed_count']} of {attempted} observations failed)"
        )
    if run.kind == "realtime":
        recent = catalog.runs(dag_id=run.dag_id)[:zero_detection_runs]
        if len(recent) >= zero_detection_runs and all(
            r["processed"] > 0 and r["detections"] == 0 for r in recent
        ):
            messages.append(
                f"zero detections in the last {zero_detection_runs} realtime runs that processed observations"
            )
    return messages


def report_run(
    catalog: Catalog,
    run: RunInfo,
    summaries: Sequence[dict[str, Any]],
    claimed: Sequence[Any] | None,
    *,
    started_at: datetime | None,
    min_success_rate: float,
    zero_detection_runs: int,
    metrics: Metrics | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Merge the inference summaries, record the run as successful, send the run gauges.

    Returns (the run summary with ``rejected_count``, the degradation messages to alert on).
    """
    summary = RunSummary.merge([s for s in summaries if s]).to_xcom()
    summary["rejected_count"] = rejected_count(claimed, summary)
    catalog.record_run(
        run_id=run.orchestrator_run_id,
        dag_id=run.dag_id,
        kind=run.kind,
        model_version=summary["model_version"],
        started_at=started_at,
        claimed=len(claimed or []),
        processed=summary["processed_count"],
        failed=summary["failed_count"],
        rejected=summary["rejected_count"],
        detections=summary["detections_found"],
        processing_seconds=summary["processing_time"],
        success_rate=summary["success_rate"],
        status="success",
    )
    emit_run_gauges(metrics or NullMetrics(), run.dag_id, summary)
    messages = degradations(
        catalog, run, summary, min_success_rate=min_success_rate, zero_detection_runs=zero_detection_runs
    )
    return summary, messages


def record_failed_run(catalog: Catalog, run: RunInfo) -> int:
    """Record the run as failed and release its unfinished claims (returned to the queue now, not
    when the lease expires). Returns how many observations were released."""
    catalog.record_run(run_id=run.orchestrator_run_id, dag_id=run.dag_id, kind=run.kind, status="failed")
    return catalog.release(run.run_id)
