"""Degradation rules on a real SQLite catalog: low success rate, N zero-detection realtime runs."""

from __future__ import annotations

from astrid.airflow.tasks import degradations
from astrid.catalog import Catalog
from astrid.config import InferenceSchedulingConfig


def _summary(processed: int, failed: int, detections: int) -> dict:
    attempted = processed + failed
    return {
        "processed_count": processed,
        "failed_count": failed,
        "detections_found": detections,
        "success_rate": processed / attempted if attempted else 1.0,
    }


def test_low_success_rate_alerts_with_the_counts(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.migrate()
    config = InferenceSchedulingConfig()
    assert degradations(catalog, "astrid_batch_inference", "batch", _summary(9, 1, 5), config) == []
    (message,) = degradations(catalog, "astrid_batch_inference", "batch", _summary(8, 2, 5), config)
    assert "success rate 0.80 < 0.9" in message and "2 of 10 observations failed" in message


def test_zero_detections_needs_n_consecutive_realtime_runs_that_processed_something(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.migrate()
    config = InferenceSchedulingConfig(zero_detection_runs=3)
    dag = "astrid_realtime_inference"

    def record(i: int, processed: int, detections: int) -> None:
        catalog.record_run(
            run_id=f"r{i}",
            dag_id=dag,
            kind="realtime",
            processed=processed,
            detections=detections,
            status="success",
        )

    record(1, 5, 0)
    record(2, 5, 0)
    assert degradations(catalog, dag, "realtime", _summary(5, 0, 0), config) == []  # only 2 so far
    record(3, 0, 0)  # an empty run (nothing to claim) is not evidence of a broken model
    assert degradations(catalog, dag, "realtime", _summary(0, 0, 0), config) == []
    record(4, 5, 0)
    record(5, 5, 0)
    record(6, 5, 0)
    (message,) = degradations(catalog, dag, "realtime", _summary(5, 0, 0), config)
    assert "zero detections in the last 3 realtime runs" in message
    assert degradations(catalog, dag, "batch", _summary(5, 0, 0), config) == []  # realtime only
