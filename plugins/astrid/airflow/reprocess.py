"""``astrid_reprocess``: the operator and params of the reprocessing DAG (see :mod:`astrid.reprocess`).

One task: resolve the model version, then run :func:`astrid.reprocess.reprocess` over the time
range. It claims nothing, so it never competes with the realtime/batch queue; its results sit
beside the live ones under the model's registry version. A failed or timed-out try is retried
and goes on where it stopped (what is done is recorded per observation and version).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Param

from astrid.airflow.hooks import CatalogHook, ModelRegistryHook, ObservationStorageHook

DAG_ID = "astrid_reprocess"
# ISO date or date-time (naive = UTC), or empty for "unbounded"
WHEN_PATTERN = r"^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"


def reprocess_params(config: Any) -> dict[str, Param]:
    from astrid.airflow.dag_defaults import MODEL_PATTERN

    return {
        "model_version": Param(
            "challenger",
            type="string",
            pattern=MODEL_PATTERN,
            title="Model",
            description="champion, challenger, a registry version number, or models:/astrid-unet@alias",
        ),
        "observed_from": Param(
            "",
            type="string",
            pattern=WHEN_PATTERN,
            title="Observed from",
            description="ISO date or date-time, UTC (MJD-OBS at or after); empty: no lower bound",
        ),
        "observed_to": Param(
            "",
            type="string",
            pattern=WHEN_PATTERN,
            title="Observed before",
            description="ISO date or date-time, UTC (MJD-OBS before); empty: no upper bound",
        ),
        "max_observations": Param(
            1000,
            type="integer",
            minimum=1,
            maximum=100_000,
            title="Max observations",
            description="At most this many this run; trigger again to go on.",
        ),
        "confidence_threshold": Param(
            config.confidence_threshold,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Confidence threshold",
        ),
    }


class ReprocessOperator(BaseOperator):
    """Reprocess the observations of a time range with one model version (results side by side).

    :param model: ``champion``, ``challenger``, a registry version, ``models:/...`` or a path
    :param observed_from: / :param observed_to: ISO date(-time) bounds on MJD-OBS ('' = open)
    :param max_observations: at most this many in this run
    """

    template_fields: Sequence[str] = (
        "model",
        "observed_from",
        "observed_to",
        "max_observations",
        "confidence_threshold",
        "device",
    )
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        model: str,
        observed_from: str = "",
        observed_to: str = "",
        max_observations: int | str = 1000,
        confidence_threshold: float | str = 0.5,
        device: str = "auto",
        batch_size: int = 8,
        catalog_conn_id: str = CatalogHook.default_conn_name,
        storage_conn_id: str = ObservationStorageHook.default_conn_name,
        mlflow_conn_id: str = ModelRegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model, self.observed_from, self.observed_to = model, observed_from, observed_to
        self.max_observations, self.confidence_threshold = max_observations, confidence_threshold
        self.device, self.batch_size = device, batch_size
        self.catalog_conn_id, self.storage_conn_id, self.mlflow_conn_id = (
            catalog_conn_id,
            storage_conn_id,
            mlflow_conn_id,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        from datetime import UTC, datetime

        from astrid.airflow.operators import catalog_run_id, model_reference
        from astrid.config import load_config
        from astrid.ml.engine import get_engine
        from astrid.paths import shipped_model_path
        from astrid.pipeline import RunInfo, VersionedDetector
        from astrid.reprocess import REPROCESS_KIND, record, reprocess

        config = load_config()
        registry = ModelRegistryHook(self.mlflow_conn_id).get_conn()
        registry.ensure_champion(shipped_model_path())
        resolved = registry.resolve(model_reference(self.model))
        engine = get_engine(resolved.path, device=self.device, batch_size=int(self.batch_size))
        catalog = CatalogHook(self.catalog_conn_id).get_conn()
        started = datetime.now(UTC)
        run = RunInfo(
            run_id=catalog_run_id(context), dag_id=self.dag_id, kind=REPROCESS_KIND, task_id=self.task_id
        )
        summary = reprocess(
            catalog=catalog,
            storage=ObservationStorageHook(self.storage_conn_id).get_conn(),
            detector=VersionedDetector(engine, resolved.version),
            run=run,
            threshold=float(self.confidence_threshold),
            max_side=config.max_image_side,
            observed_from=self.observed_from or None,
            observed_to=self.observed_to or None,
            limit=int(self.max_observations),
            min_excess=config.vetting_level,
        )
        record(
            catalog,
            run,
            context["run_id"],
            summary,
            started,
            {"observed_from": self.observed_from, "observed_to": self.observed_to},
        )
        self.log.info(
            "model version %s: %d reprocessed, %d failed, %d detections%s",
            resolved.version,
            summary.processed,
            summary.failed,
            summary.detections,
            "; more remain: trigger again to go on" if summary.remaining else "",
        )
        return summary.to_xcom()
