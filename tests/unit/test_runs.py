"""astrid.runs on a real SQLite catalog: the run report, degradation rules, a failed run's release."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from astrid.catalog import Catalog, NewObservation
from astrid.metrics import metric_name
from astrid.pipeline import RunInfo
from astrid.runs import degradations, record_failed_run, rejected_count, report_run
from tests.recording_metrics import RecordingMetrics

REALTIME = RunInfo(run_id="astrid_realtime_inference:r", dag_id="astrid_realtime_inference", kind="realtime")
BATCH = RunInfo(
    run_id="astrid_batch_inference:b", dag_id="astrid_batch_inference", kind="batch", dag_run_id="b"
)
RULES = {"min_success_rate": 0.9, "zero_detection_runs": 4}


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.migrate()
    yield catalog
    catalog.dispose()


def _summary(processed: int, failed: int, detections: int) -> dict:
    attempted = processed + failed
    return {
        "processed_count": processed,
        "failed_count": failed,
        "detections_found": detections,
        "success_rate": processed / attempted if attempted else 1.0,
    }


def test_low_success_rate_alerts_with_the_counts(catalog):
    assert degradations(catalog, BATCH, _summary(9, 1, 5), **RULES) == []
    (message,) = degradations(catalog, BATCH, _summary(8, 2, 5), **RULES)
    assert "success rate 0.80 < 0.9" in message and "2 of 10 observations failed" in message
    assert degradations(catalog, BATCH, _summary(8, 2, 5), min_success_rate=0.8, zero_detection_runs=4) == []


def test_zero_detections_needs_n_consecutive_realtime_runs_that_processed_something(catalog):
    rules = {**RULES, "zero_detection_runs": 3}

    def record(i: int, processed: int, detections: int) -> None:
        catalog.record_run(
            run_id=f"r{i}",
            dag_id=REALTIME.dag_id,
            kind="realtime",
            processed=processed,
            detections=detections,
            status="success",
        )

    record(1, 5, 0)
    record(2, 5, 0)
    assert degradations(catalog, REALTIME, _summary(5, 0, 0), **rules) == []  # only 2 so far
    record(3, 0, 0)  # an empty run (nothing to claim) is not evidence of a broken model
    assert degradations(catalog, REALTIME, _summary(0, 0, 0), **rules) == []
    record(4, 5, 0)
    record(5, 5, 0)
    record(6, 5, 0)
    (message,) = degradations(catalog, REALTIME, _summary(5, 0, 0), **rules)
    assert "zero detections in the last 3 realtime runs" in message
    batch_named_like_realtime = RunInfo(run_id="x", dag_id=REALTIME.dag_id, kind="batch")
    assert degradations(catalog, batch_named_like_realtime, _summary(5, 0, 0), **rules) == []  # realtime only


def test_rejected_count_is_what_the_gate_kept_from_inference():
    assert rejected_count(None, _summary(3, 1, 0)) == 0
    assert rejected_count([{}] * 6, _summary(3, 1, 0)) == 2
    assert rejected_count([{}] * 2, _summary(3, 1, 0)) == 0  # never negative


def test_report_run_merges_mapped_summaries_records_the_run_and_gauges_it(catalog):
    parts = [
        {**_summary(3, 1, 4), "processing_time": 2.0, "megapixels": 4.0, "model_version": "2"},
        {},  # a chunk with nothing to do
        {**_summary(2, 0, 1), "processing_time": 2.0, "megapixels": 4.0},
    ]
    metrics = RecordingMetrics()
    started = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    summary, messages = report_run(
        catalog, BATCH, parts, [{}] * 7, started_at=started, metrics=metrics, **RULES
    )
    assert (summary["processed_count"], summary["failed_count"], summary["rejected_count"]) == (5, 1, 1)
    assert summary["success_rate"] == round(5 / 6, 4) and summary["model_version"] == "2"
    assert messages and "success rate 0.83" in messages[0]
    (row,) = catalog.runs(dag_id=BATCH.dag_id)
    assert row["run_id"] == "b"  # the orchestrator's run id, not the claim owner
    assert (row["kind"], row["status"], row["claimed"], row["rejected"], row["detections"]) == (
        "batch",
        "success",
        7,
        1,
        5,
    )
    assert row["started_at"].replace(tzinfo=UTC) == started
    gauges = {stat: value for kind, stat, value in metrics.sent if kind == "gauge"}
    assert gauges[metric_name("astrid.run.success_rate", BATCH.dag_id)] == summary["success_rate"]
    assert gauges[metric_name("astrid.throughput_mpix", BATCH.dag_id)] == 2.0


def test_record_failed_run_releases_the_runs_claims(catalog):
    catalog.register(
        [NewObservation(name=f"o{i}", science_uri=f"s{i}", reference_uri=f"r{i}") for i in range(3)]
    )
    claims = catalog.claim(2, BATCH.run_id, timedelta(minutes=30))
    assert len(claims) == 2
    assert record_failed_run(catalog, BATCH) == 2
    assert catalog.status_counts().get("claimed", 0) == 0
    (row,) = catalog.runs(dag_id=BATCH.dag_id)
    assert (row["run_id"], row["kind"], row["status"]) == ("b", "batch", "failed")
