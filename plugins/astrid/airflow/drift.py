"""The nightly drift check's operator (:mod:`astrid.drift`); its DAG updates the drift Asset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astrid.airflow.base import AstridBaseOperator, astrid_template_fields
from astrid.airflow.notifiers import AstridNotifier


class DriftCheckOperator(AstridBaseOperator):
    """Compare the champion's current window with its reference window (:func:`astrid.drift.check_drift`).

    Returns the report (``reason`` non-empty when something drifted: the DAG's
    ``request_retraining`` task then updates the drift Asset). A drift also sends a ``drift``
    alert (email + Slack) with the statistics table, under the persisted cool-down.
    """

    template_fields: Sequence[str] = astrid_template_fields(
        "window_hours", "reference_hours", "min_samples", "threshold", "p_value"
    )
    ui_color = "#fff8e1"

    def __init__(
        self,
        *,
        window_hours: float | str,
        reference_hours: float | str,
        min_samples: int | str,
        threshold: float | str,
        p_value: float | str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.window_hours, self.reference_hours, self.min_samples = window_hours, reference_hours, min_samples
        self.threshold, self.p_value = threshold, p_value

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.drift import check_drift
        from astrid.registry import CHAMPION

        report = check_drift(
            self.catalog,
            self.registry.alias_version(CHAMPION),
            window_hours=float(self.window_hours),
            reference_hours=float(self.reference_hours),
            min_samples=int(self.min_samples),
            threshold=float(self.threshold),
            p_value=float(self.p_value),
            metrics=self.metrics,
            dag_id=self.dag_id,
        )
        self.log.info("drift check: %s\n%s", report.reason or report.note or "no drift", report.table())
        if report.reason:
            AstridNotifier(
                kind="drift",
                message=f"{report.reason}\n\n{report.table()}\nRetraining requested (astrid_model_drift).",
                catalog_conn_id=self.catalog_conn_id,
                monitoring_enabled=self.monitoring_enabled,
            ).notify(context)
        return report.to_xcom()
