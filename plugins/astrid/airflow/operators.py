"""The inference run's operators: pre-flight, subtract, claim, chunk, quality gate, U-Net, report.

Each ``execute()`` is a few lines over one core function (:mod:`astrid.pipeline`,
:mod:`astrid.preprocess`, :mod:`astrid.runs`, :mod:`astrid.preflight`) through the hooks :class:`AstridBaseOperator` owns.
Observation lists travel between tasks as XCom lists of claim dicts (ids + URIs, never pixels).
Every input is a ``template_fields`` entry so DAG ``params`` (UI trigger form, ``airflow dags
trigger --conf``, the REST API) and the configuration the DAG file read at parse time reach it;
DAGs set ``render_template_as_native_obj=True`` so rendered numbers stay numbers.

Plain operator classes rather than TaskFlow functions: importing the TaskFlow decorators costs
~30 ms of DAG parse time, and every DAG file must parse in under 50 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from astrid.airflow.base import AstridBaseOperator, astrid_template_fields, flag, read_limits, xcom_list
from astrid.airflow.notifiers import AstridNotifier


class _XComLink(BaseOperatorLink):
    """A link whose full URL the task pushed to XCom under :attr:`xcom_key`."""

    name = "link"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=self.xcom_key, ti_key=ti_key) or ""


class MLflowRunLink(_XComLink):
    name = "MLflow run"


class _RunPageLink(BaseOperatorLink):
    """A page of the status API about the task's DAG run, found by the run's catalog key.

    The URL is relative (no leading ``/``): the Airflow UI resolves it against its own base URL,
    so it works wherever Airflow is served (``[api] base_url`` with a path, a proxy prefix)."""

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        from astrid.airflow.base import catalog_run_key

        return self.url(catalog_run_key(ti_key.dag_id, ti_key.run_id))

    def url(self, run_key: str) -> str:
        raise NotImplementedError


class DetectionsLink(_RunPageLink):
    """The AstrID page's view of the run: its observations and a gallery of its detections."""

    name = "Detections"

    def url(self, run_key: str) -> str:
        from urllib.parse import quote

        return f"astrid/ui#run={quote(run_key, safe='')}"


class DetectionCatalogLink(_RunPageLink):
    """The run's detection catalog as CSV, served by the status API from the catalog (a browser
    cannot open the run's s3:// or file:// artifacts)."""

    name = "Detection catalog"

    def url(self, run_key: str) -> str:
        from urllib.parse import urlencode

        from astrid.detections import MAX_LIMIT

        return "astrid/detections?" + urlencode({"run_id": run_key, "format": "csv", "limit": MAX_LIMIT})


class LeasingOperator(AstridBaseOperator):
    """An operator that leases up to ``max_observations`` observations to its run: the lease
    inputs its subclasses share (and template), one home for how they are read."""

    LEASE_FIELDS: tuple[str, ...] = ("max_observations", "lease_minutes", "max_attempts")

    def __init__(
        self,
        *,
        max_observations: int | str,
        max_attempts: int | str,
        lease_minutes: int | str = 30,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.max_observations, self.lease_minutes, self.max_attempts = (
            max_observations,
            lease_minutes,
            max_attempts,
        )

    @property
    def lease_limit(self) -> int:
        """How many observations one run leases at most (rendered)."""
        return int(self.max_observations)

    @property
    def lease_time(self) -> timedelta:
        """How long a lease holds before another run may take the observation back."""
        return timedelta(minutes=float(self.lease_minutes))


class ClaimObservationsOperator(LeasingOperator):
    """Atomically claim up to ``max_observations`` preprocessed observations (leased to this run).

    Returns the claims as a list of dicts for XCom. A retried task gets its own unexpired claims
    back, so nothing is lost between the claim and the push. ``announce_backlog`` (the realtime
    DAG): when the claim took its full limit and observations still wait, ring the doorbell so
    another run follows this one (:func:`astrid.events.ring_if_more_wait`).
    """

    template_fields: Sequence[str] = astrid_template_fields(*LeasingOperator.LEASE_FIELDS)
    ui_color = "#e8f0fe"

    def __init__(self, *, announce_backlog: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.announce_backlog = announce_backlog

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from astrid.pipeline import claim_observations

        claims = claim_observations(
            self.catalog,
            self.run_info(context),
            self.lease_limit,
            lease_minutes=float(self.lease_minutes),
            max_attempts=int(self.max_attempts),
            metrics=self.metrics,
        )
        if self.announce_backlog:
            from astrid.events import ring_if_more_wait

            ring_if_more_wait(
                self.catalog,
                len(claims),
                self.lease_limit,
                self.run_info(context).orchestrator_run_id,
            )
        return [c.to_xcom() for c in claims]


class SubtractObservationsOperator(LeasingOperator):
    """Make the difference image of observations that arrived ``ingested`` (science + reference
    only, e.g. ``astrid ingest --no-subtract``): claim up to ``max_observations`` of them (leased
    to this run, :meth:`~astrid.catalog.Catalog.claim_for_subtraction`), align, PSF-match and
    subtract each (:func:`astrid.preprocess.subtract_claims`), store difference + noise map +
    aligned reference, and mark them ``preprocessed`` (with the method and its quality figures in
    their ``meta``), so the ``claim`` task after it can take them in the same run. A pair that
    gives no honest difference is ``rejected`` with the reason, never passed on with a garbage
    difference. CPU work (about 1.3 CPU-seconds per 2048² pair): the default queue.

    Returns ``{"subtracted": [ids], "rejected": [{observation_id, observation, reason}], "seconds"}``.
    """

    template_fields: Sequence[str] = astrid_template_fields(
        *LeasingOperator.LEASE_FIELDS, "max_image_side", "fits_limits"
    )
    ui_color = "#f3e8fd"

    def __init__(self, *, max_image_side: int | str, fits_limits: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_image_side, self.fits_limits = max_image_side, fits_limits

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.preprocess import subtract_claims

        run = self.run_info(context)
        claims = self.catalog.claim_for_subtraction(
            self.lease_limit, run.run_id, self.lease_time, max_attempts=int(self.max_attempts)
        )
        return subtract_claims(
            claims,
            catalog=self.catalog,
            storage=self.storage,
            run=run,
            limits=read_limits(self.max_image_side, self.fits_limits),
            metrics=self.metrics,
        )


class ChunkClaimsOperator(BaseOperator):
    """Split claims into lists of ``size``: one mapped quality-gate + inference task per chunk."""

    template_fields: Sequence[str] = ("claims", "size")

    def __init__(self, *, claims: Any, size: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.claims, self.size = claims, size

    def execute(self, context: Any) -> list[list[dict[str, Any]]]:
        from astrid.pipeline import chunks

        return chunks(self.claims or [], int(self.size))


class DataQualityOperator(AstridBaseOperator):
    """Great Expectations gate: rejected observations get status ``rejected`` with the reason.

    Returns the accepted claims; the run goes on with them.
    """

    template_fields: Sequence[str] = astrid_template_fields("observations", "max_image_side", "fits_limits")
    ui_color = "#fff4e5"

    def __init__(
        self, *, observations: Any, max_image_side: int | str, fits_limits: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.observations, self.max_image_side, self.fits_limits = observations, max_image_side, fits_limits

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from astrid.catalog import Claim
        from astrid.pipeline import quality_gate

        claims = [Claim.from_xcom(c) for c in self.observations or []]
        if not claims:
            return []
        accepted, _ = quality_gate(
            claims,
            catalog=self.catalog,
            storage=self.storage,
            run=self.run_info(context),
            max_side=int(self.max_image_side),
            metrics=self.metrics,
            limits=read_limits(self.max_image_side, self.fits_limits),
        )
        return [c.to_xcom() for c in accepted]


class UNetInferenceOperator(AstridBaseOperator):
    """Run the U-Net over the observations from XCom; write detections, statuses and artifacts.

    A bad observation fails only itself (status ``failed``, error kept, attempts + 1); a model
    that cannot be loaded fails the task so Airflow retries it. Returns the run summary
    (processed_count, detections_found, processing_time, success_rate, errors, model_version...)
    from :func:`astrid.pipeline.infer_observations`.

    :param observations: claim dicts (usually an XComArg of the claim/quality task)
    :param model: ``champion``, ``challenger``, a registry version, ``models:/...`` or a model
        directory under ``model_roots`` (:mod:`astrid.model_reference`); empty: ``model_uri``
    :param model_uri: the model when ``model`` is empty (``ASTRID_INFERENCE_MODEL_URI``)
    :param model_roots: directories a model path must lie under (``ASTRID_INFERENCE_MODEL_ROOTS``;
        empty: no path is accepted)
    :param fits_limits: header size and plausible-WCS limits of the reads (``ReadLimits`` fields)
    :param confidence_threshold: probability cut strictly between 0 and 1
    :param batch_size: tiles per forward pass (halved automatically on out-of-memory)
    :param device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``
    :param max_image_side: largest accepted frame side in pixels
    :param star_residual_vetting: ``card``, ``off`` or a level in σ
    :param performance_tracking: log the step (params, metrics, catalog) to MLflow
    :param zeropoint_key: header keyword of the AB zero point tried before MAGZP, PHOTZP, MAGZPT
    :param stamps_enabled: write each observation's detection stamps beside the run's catalog
    :param stamps_max_per_observation: stamps for at most this many detections of an observation
    """

    template_fields: Sequence[str] = astrid_template_fields(
        "observations",
        "model",
        "confidence_threshold",
        "batch_size",
        "device",
        "max_image_side",
        "star_residual_vetting",
        "performance_tracking",
        "zeropoint_key",
        "stamps_enabled",
        "stamps_max_per_observation",
        "model_uri",
        "model_roots",
        "fits_limits",
    )
    operator_extra_links = (DetectionsLink(), DetectionCatalogLink(), MLflowRunLink())
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        observations: Any,
        max_image_side: int | str,
        model: str | None = None,
        confidence_threshold: float | str = 0.5,
        batch_size: int | str = 8,
        device: str = "auto",
        star_residual_vetting: str = "card",
        performance_tracking: bool | str = True,
        zeropoint_key: str = "",
        stamps_enabled: bool | str = True,
        stamps_max_per_observation: int | str = 200,
        model_uri: str = "models:/astrid-unet@champion",
        model_roots: str = "",
        fits_limits: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.observations, self.model, self.confidence_threshold = observations, model, confidence_threshold
        self.batch_size, self.device, self.max_image_side = batch_size, device, max_image_side
        self.star_residual_vetting, self.performance_tracking = star_residual_vetting, performance_tracking
        self.zeropoint_key, self.stamps_enabled = zeropoint_key, stamps_enabled
        self.stamps_max_per_observation = stamps_max_per_observation
        self.model_uri, self.model_roots, self.fits_limits = model_uri, model_roots, fits_limits

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.catalog import Claim
        from astrid.config import model_root_paths, parse_vetting
        from astrid.model_reference import requested_model
        from astrid.pipeline import infer_observations

        registry = self.registry
        roots = model_root_paths(str(self.model_roots))
        summary = infer_observations(
            [Claim.from_xcom(c) for c in self.observations or []],
            catalog=self.catalog,
            storage=self.storage,
            registry=registry,
            run=self.run_info(context),
            model=requested_model(self.model, str(self.model_uri), roots),
            model_roots=roots,
            threshold=self.confidence_threshold,
            batch_size=int(self.batch_size),
            device=self.device,
            max_side=int(self.max_image_side),
            vetting=parse_vetting("star_residual_vetting", str(self.star_residual_vetting)),
            track=flag(self.performance_tracking),
            metrics=self.metrics,
            zeropoint_key=str(self.zeropoint_key or "") or None,
            max_stamps=int(self.stamps_max_per_observation) if flag(self.stamps_enabled) else None,
            limits=read_limits(self.max_image_side, self.fits_limits),
        )
        if summary.get("mlflow_run_id"):
            context["ti"].xcom_push(
                key=MLflowRunLink().xcom_key, value=registry.run_url(summary["mlflow_run_id"])
            )
        return summary


class PreflightOperator(BaseOperator):
    """Skip the run (downstream skipped, nothing claimed) when the host is over its limits
    (:func:`astrid.preflight.check`)."""

    template_fields: Sequence[str] = ("max_memory_percent", "max_load_per_cpu", "max_gpu_memory_percent")
    ui_color = "#f1f3f4"

    def __init__(
        self,
        *,
        max_memory_percent: float | str,
        max_load_per_cpu: float | str,
        max_gpu_memory_percent: float | str,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.max_memory_percent, self.max_load_per_cpu = max_memory_percent, max_load_per_cpu
        self.max_gpu_memory_percent = max_gpu_memory_percent

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from astrid.logs import log_event
        from astrid.preflight import PreflightLimits, check

        limits = PreflightLimits(
            float(self.max_memory_percent), float(self.max_load_per_cpu), float(self.max_gpu_memory_percent)
        )
        report = check(limits)
        log_event(
            "preflight",
            run_id=context["run_id"],
            dag_id=self.dag_id,
            ok=report.ok,
            memory_percent=report.memory_percent,
            load_per_cpu=round(report.load_per_cpu, 2),
            gpu_memory_percent=report.gpu_memory_percent,
            reasons=report.reasons or None,
        )
        if not report.ok:
            raise AirflowSkipException("pre-flight: " + "; ".join(report.reasons))
        return {"memory_percent": report.memory_percent, "load_per_cpu": report.load_per_cpu}


class InferenceReportOperator(AstridBaseOperator):
    """Record the run in ``inference_runs``, raise degradation alerts, return the run summary
    (:func:`astrid.runs.report_run`).

    :param summaries: one inference summary, or the list from mapped inference tasks
    :param claimed: the claim task's output (to count rejected observations)
    :param kind: ``realtime`` or ``batch``
    :param min_success_rate: alert below this run success rate
    :param zero_detection_runs: alert after this many realtime runs that found nothing
    """

    template_fields: Sequence[str] = astrid_template_fields(
        "summaries", "claimed", "min_success_rate", "zero_detection_runs"
    )

    def __init__(
        self,
        *,
        summaries: Any,
        kind: str,
        min_success_rate: float | str,
        zero_detection_runs: int | str,
        claimed: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "none_failed_min_one_success")
        super().__init__(**kwargs)
        self.summaries, self.claimed, self.kind = summaries, claimed, kind
        self.min_success_rate, self.zero_detection_runs = min_success_rate, zero_detection_runs

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.runs import report_run

        summary, degradations = report_run(
            self.catalog,
            self.run_info(context, self.kind),
            xcom_list(self.summaries),
            self.claimed,
            started_at=context["dag_run"].start_date,
            min_success_rate=float(self.min_success_rate),
            zero_detection_runs=int(self.zero_detection_runs),
            metrics=self.metrics,
        )
        for message in degradations:
            AstridNotifier(
                kind="degradation",
                message=message,
                catalog_conn_id=self.catalog_conn_id,
                monitoring_enabled=self.monitoring_enabled,
            ).notify(context)
        return summary
