"""Operators: thin ``execute()`` methods over :mod:`astrid.pipeline` and the catalog.

Observation lists travel between tasks as XCom lists of claim dicts (ids + URIs, never pixels).
Every operator takes its inputs through ``template_fields`` so DAG ``params`` (UI trigger form,
``airflow dags trigger --conf``, the REST API) reach them; DAGs set
``render_template_as_native_obj=True`` so rendered numbers stay numbers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from astrid.airflow.hooks import CatalogHook, ModelRegistryHook, ObservationStorageHook


def catalog_run_id(context: Any) -> str:
    """The claim owner recorded in the catalog: unique across DAGs (run ids alone are not)."""
    return f"{context['dag'].dag_id}:{context['run_id']}"


def _stats() -> Any:
    from astrid.config import load_config
    from astrid.metrics import NullMetrics

    if not load_config().monitoring_enabled:
        return NullMetrics()
    from airflow.sdk.observability.stats import Stats

    return Stats


class _XComLink(BaseOperatorLink):
    """A link whose full URL the task pushed to XCom under :attr:`xcom_key`."""

    name = "link"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


class MLflowRunLink(_XComLink):
    name = "MLflow run"


class DetectionCatalogLink(_XComLink):
    name = "Detection catalog"


class ClaimObservationsOperator(BaseOperator):
    """Atomically claim up to ``max_observations`` preprocessed observations (leased to this run).

    Returns the claims as a list of dicts for XCom. A retried task gets its own unexpired claims
    back, so nothing is lost between the claim and the push.
    """

    template_fields: Sequence[str] = ("max_observations", "lease_minutes")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        max_observations: int | str,
        lease_minutes: int | str = 30,
        catalog_conn_id: str = CatalogHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_observations = max_observations
        self.lease_minutes = lease_minutes
        self.catalog_conn_id = catalog_conn_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from astrid.config import load_config
        from astrid.logs import log_event
        from astrid.metrics import metric_name

        limit = int(self.max_observations)
        catalog = CatalogHook(self.catalog_conn_id).get_conn()
        run_id = catalog_run_id(context)
        claims = catalog.claim(
            limit, run_id, timedelta(minutes=int(self.lease_minutes)), max_attempts=load_config().max_attempts
        )
        _stats().incr(metric_name("astrid.observations.claimed", self.dag_id), len(claims))
        log_event(
            "claim",
            run_id=context["run_id"],
            dag_id=self.dag_id,
            requested=limit,
            observation_ids=[c.observation_id for c in claims],
        )
        return [c.to_xcom() for c in claims]


class ChunkClaimsOperator(BaseOperator):
    """Split claims into lists of ``size``: one mapped quality-gate + inference task per chunk."""

    template_fields: Sequence[str] = ("claims", "size")

    def __init__(self, *, claims: Any, size: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claims, self.size = claims, size

    def execute(self, context: Any) -> list[list[dict[str, Any]]]:
        claims, size = list(self.claims or []), max(1, int(self.size))
        return [claims[i : i + size] for i in range(0, len(claims), size)]


class DataQualityOperator(BaseOperator):
    """Great Expectations gate: rejected observations get status ``rejected`` with the reason.

    Returns the accepted claims; the run goes on with them.
    """

    template_fields: Sequence[str] = ("observations",)
    ui_color = "#fff4e5"

    def __init__(
        self,
        *,
        observations: Any,
        catalog_conn_id: str = CatalogHook.default_conn_name,
        storage_conn_id: str = ObservationStorageHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.observations = observations
        self.catalog_conn_id = catalog_conn_id
        self.storage_conn_id = storage_conn_id

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from astrid.catalog import Claim
        from astrid.config import load_config
        from astrid.pipeline import RunInfo, quality_gate

        claims = [Claim.from_xcom(c) for c in self.observations or []]
        if not claims:
            return []
        accepted, _ = quality_gate(
            claims,
            catalog=CatalogHook(self.catalog_conn_id).get_conn(),
            storage=ObservationStorageHook(self.storage_conn_id).get_conn(),
            run=RunInfo(run_id=catalog_run_id(context), dag_id=self.dag_id, task_id=self.task_id),
            max_side=load_config().max_image_side,
            metrics=_stats(),
        )
        return [c.to_xcom() for c in accepted]


class UNetInferenceOperator(BaseOperator):
    """Run the U-Net over the observations from XCom; write detections, statuses and artifacts.

    A bad observation fails only itself (status ``failed``, error kept, attempts + 1); a model
    that cannot be loaded fails the task so Airflow retries it. Returns the run summary
    (processed_count, detections_found, processing_time, success_rate, errors, model_version...).

    :param observations: claim dicts (usually an XComArg of the claim/quality task)
    :param model: ``champion``, ``challenger``, a registry version, ``models:/...`` or a path
    :param confidence_threshold: probability cut in [0, 1]
    :param batch_size: tiles per forward pass (halved automatically on out-of-memory)
    :param device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``
    """

    template_fields: Sequence[str] = ("observations", "model", "confidence_threshold", "batch_size", "device")
    operator_extra_links = (MLflowRunLink(), DetectionCatalogLink())
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        observations: Any,
        model: str | None = None,
        confidence_threshold: float | str = 0.5,
        batch_size: int | str = 8,
        device: str = "auto",
        catalog_conn_id: str = CatalogHook.default_conn_name,
        storage_conn_id: str = ObservationStorageHook.default_conn_name,
        mlflow_conn_id: str = ModelRegistryHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.observations = observations
        self.model = model
        self.confidence_threshold = confidence_threshold
        self.batch_size = batch_size
        self.device = device
        self.catalog_conn_id = catalog_conn_id
        self.storage_conn_id = storage_conn_id
        self.mlflow_conn_id = mlflow_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.catalog import Claim
        from astrid.config import check_threshold, load_config
        from astrid.ml.engine import get_engine
        from astrid.model_reference import requested_model
        from astrid.paths import shipped_model_path
        from astrid.pipeline import RunInfo, VersionedDetector, run_inference

        config = load_config()
        threshold = check_threshold("confidence_threshold", float(self.confidence_threshold))
        claims = [Claim.from_xcom(c) for c in self.observations or []]
        registry = ModelRegistryHook(self.mlflow_conn_id).get_conn()
        registry.ensure_champion(shipped_model_path())
        stats = _stats()
        started = time.perf_counter()
        resolved = registry.resolve(requested_model(self.model, config), config.model_root_paths)
        engine = get_engine(resolved.path, device=self.device, batch_size=int(self.batch_size))
        from astrid.metrics import metric_name

        stats.timing(
            metric_name("astrid.model.load_time", self.dag_id), (time.perf_counter() - started) * 1000
        )
        storage = ObservationStorageHook(self.storage_conn_id).get_conn()
        run = RunInfo(run_id=catalog_run_id(context), dag_id=self.dag_id, task_id=self.task_id)
        artifacts = (
            storage.path
            / "runs"
            / self.dag_id
            / _safe(context["run_id"])
            / _safe(f"{self.task_id}-{context['ti'].map_index}")
        )
        summary = run_inference(
            claims,
            catalog=CatalogHook(self.catalog_conn_id).get_conn(),
            storage=storage,
            detector=VersionedDetector(engine, resolved.version),
            run=run,
            threshold=threshold,
            max_side=config.max_image_side,
            metrics=stats,
            artifacts=artifacts,
            min_excess=config.vetting_level,
        ).to_xcom()
        summary["device"] = str(engine.device)
        level = engine.min_excess if config.vetting_level == "card" else config.vetting_level
        summary["star_residual_vetting"] = "off" if level is None else level
        if summary["catalog_uri"]:
            context["ti"].xcom_push(key=DetectionCatalogLink().xcom_key, value=summary["catalog_uri"])
        if config.performance_tracking and claims:
            summary["mlflow_run_id"] = self._log_mlflow(registry, context, summary, threshold, resolved)
        return summary

    def _log_mlflow(self, registry: Any, context: Any, summary: dict, threshold: float, resolved: Any) -> str:
        from astrid.registry import INFERENCE_EXPERIMENT

        tags = {
            "airflow.dag_id": self.dag_id,
            "airflow.run_id": context["run_id"],
            "airflow.task_id": self.task_id,
        }
        with registry.run(INFERENCE_EXPERIMENT, f"{self.dag_id}/{context['run_id']}", tags) as mlrun:
            run_id = mlrun.info.run_id
            registry.log(
                run_id,
                params={
                    "model": resolved.reference,
                    "model_version": resolved.version,
                    "confidence_threshold": threshold,
                    "batch_size": self.batch_size,
                    "device": summary["device"],
                    "star_residual_vetting": summary["star_residual_vetting"],
                    "observations": len(summary["observation_ids"]) + summary["failed_count"],
                },
                metrics={
                    k: summary[k]
                    for k in (
                        "processed_count",
                        "failed_count",
                        "detections_found",
                        "processing_time",
                        "success_rate",
                        "megapixels",
                    )
                },
            )
            if summary["catalog_uri"]:
                from pathlib import Path

                local = Path(summary["catalog_uri"].removeprefix("file://"))
                if local.exists():
                    registry.client.log_artifact(run_id, str(local))
        context["ti"].xcom_push(key=MLflowRunLink().xcom_key, value=registry.run_url(run_id))
        return run_id


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
