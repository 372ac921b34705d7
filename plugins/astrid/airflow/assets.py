"""The Assets of the model's life, and the operator that updates one only when there is a reason.

* :data:`SERVING_MODEL` — the ``champion`` alias moved (a promotion or a rollback): the serving
  DAG (``astrid_serving_model``) warms the new model and reprocesses recent observations.
* :data:`MODEL_DRIFT` — the nightly drift check found the inputs or outputs of the serving model
  far from its reference window; :data:`MODEL_DEGRADED` — the weekly validation found the champion
  below the F1 floor. The training DAG (``astrid_model_training``) is scheduled on either.

Assets are events between DAGs only: what changed is read from the registry and the catalog, never
carried in the event, so a lost or repeated event cannot make a wrong model serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator

SERVING_MODEL = Asset(name="astrid_serving_model", uri="file:///astrid/models/astrid-unet/champion")
MODEL_DRIFT = Asset(name="astrid_model_drift", uri="file:///astrid/models/astrid-unet/drift")
MODEL_DEGRADED = Asset(name="astrid_model_degraded", uri="file:///astrid/models/astrid-unet/degraded")
RETRAINING_TRIGGERS = (MODEL_DRIFT, MODEL_DEGRADED)


class RequestRetrainingOperator(BaseOperator):
    """Emit this task's ``outlets`` (a retraining Asset) when ``reason`` is not empty; skip otherwise.

    A skipped task emits no Asset event, so the training DAG runs only when the drift check or the
    validation gave a reason, which is this task's return value (visible in the UI).
    """

    template_fields: Sequence[str] = ("reason",)
    ui_color = "#fff3e0"

    def __init__(self, *, reason: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def execute(self, context: Any) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        reason = str(self.reason or "").strip()
        if not reason or reason == "None":
            raise AirflowSkipException("nothing to retrain for")
        self.log.info("retraining requested: %s", reason)
        return reason
