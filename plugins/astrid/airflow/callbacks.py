"""DAG-level callbacks of the AstrID DAGs (alerts are notifiers: :mod:`astrid.airflow.notifiers`)."""

from __future__ import annotations

from typing import Any

from astrid.airflow.base import catalog_run_id
from astrid.airflow.hooks import CatalogHook


class RecordFailedRun:
    """DAG-level on_failure_callback: record the run as failed and release its unfinished claims
    (:func:`astrid.runs.record_failed_run`), in the catalog of connection ``catalog_conn_id``.

    Releasing returns the observations to the queue at once (instead of after the lease), so the
    next run — with the model or database fixed — picks them up.
    """

    def __init__(self, kind: str, catalog_conn_id: str = CatalogHook.default_conn_name) -> None:
        self.kind, self.catalog_conn_id = kind, catalog_conn_id

    def __call__(self, context: Any) -> None:
        from astrid.pipeline import RunInfo
        from astrid.runs import record_failed_run

        dag_id = context["dag"].dag_id
        run = RunInfo(
            run_id=catalog_run_id(context), dag_id=dag_id, kind=self.kind, dag_run_id=context["run_id"]
        )
        try:
            record_failed_run(CatalogHook(self.catalog_conn_id).get_conn(), run)
        except Exception as exc:  # a callback must never raise, but must say why it did nothing
            from astrid.logs import log_event

            log_event("record_failed_run.error", exc=exc, dag_id=dag_id)
