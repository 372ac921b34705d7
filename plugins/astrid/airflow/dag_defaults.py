"""What every AstrID DAG shares: retries, alerts, deadlines, params — decided in one place.

DAG files stay a readable picture of the pipeline; the operational policy (retry with exponential
backoff, auto-pause after repeated failure, SLA deadlines, failure emails, typed trigger params)
lives here, per DAG kind from :mod:`astrid.dag_kinds`, so the DAGs cannot drift apart.

The configuration is read once, when the DAG file is parsed, and reaches the tasks as operator
arguments: :data:`OPERATOR_SETTINGS` go into ``default_args`` (Airflow hands a default arg to
every operator whose constructor takes that name), so each task shows the values it ran with as
rendered fields, and nothing reads the environment while a task runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, Param

from astrid.airflow.callbacks import RecordFailedRun
from astrid.airflow.hooks import CatalogHook
from astrid.airflow.notifiers import AstridNotifier
from astrid.config import MAX_COUNT, InferenceSchedulingConfig
from astrid.dag_kinds import dag_kind
from astrid.model_reference import model_pattern

OWNER = "astrid"
START_DATE_ISO = "2025-01-01"
# InferenceSchedulingConfig fields handed to the operators that take them (as default_args).
OPERATOR_SETTINGS = (
    "max_attempts",
    "max_image_side",
    "model_uri",
    "model_roots",
    "device",
    "star_residual_vetting",
    "performance_tracking",
    "monitoring_enabled",
    "min_success_rate",
    "zero_detection_runs",
    "min_validation_f1",
    "max_memory_percent",
    "max_load_per_cpu",
    "max_gpu_memory_percent",
    "zeropoint_key",
    "stamps_enabled",
    "stamps_max_per_observation",
)


def _alert_kwargs(kind: str, config: InferenceSchedulingConfig, catalog_conn_id: str) -> dict[str, Any]:
    """The notifier's alert-state catalog and monitoring switch follow the DAG's; recipients and
    cool-down stay the notifier's documented defaults (ASTRID_INFERENCE_ALERT_*)."""
    return {"kind": kind, "catalog_conn_id": catalog_conn_id, "monitoring_enabled": config.monitoring_enabled}


def retry_policy(
    config: InferenceSchedulingConfig,
    *,
    execution_timeout: timedelta,
    retry_delay: timedelta,
    max_retry_delay: timedelta | None = None,
    catalog_conn_id: str = CatalogHook.default_conn_name,
) -> dict[str, Any]:
    """The retry/timeout/failure-alert part of ``default_args``, for every AstrID DAG."""
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": retry_delay,
        "retry_exponential_backoff": 2.0,
        "execution_timeout": execution_timeout,
    }
    if max_retry_delay is not None:
        args["max_retry_delay"] = max_retry_delay
    if config.alert_on_failure:  # email (+ webhook) once a task has failed its last retry
        args["on_failure_callback"] = AstridNotifier(**_alert_kwargs("failure", config, catalog_conn_id))
    return args


def default_args(
    kind: str, config: InferenceSchedulingConfig, catalog_conn_id: str = CatalogHook.default_conn_name
) -> dict[str, Any]:
    """A DAG kind's ``default_args``: its retry policy, the catalog connection, the operator settings."""
    row = dag_kind(kind)
    return {
        **retry_policy(
            config,
            execution_timeout=timedelta(minutes=row.execution_timeout_minutes),
            retry_delay=timedelta(seconds=row.retry_delay_seconds),
            max_retry_delay=timedelta(minutes=row.max_retry_delay_minutes),
            catalog_conn_id=catalog_conn_id,
        ),
        "catalog_conn_id": catalog_conn_id,
        # the header-size and WCS limits of every FITS read, as one dict (ReadLimits' fields)
        "fits_limits": config.fits_limits,
        **operator_settings(config),
    }


def operator_settings(config: InferenceSchedulingConfig) -> dict[str, Any]:
    """:data:`OPERATOR_SETTINGS` with their configured values (for ``default_args``)."""
    return {name: getattr(config, name) for name in OPERATOR_SETTINGS}


def deadline(kind: str, config: InferenceSchedulingConfig, catalog_conn_id: str) -> DeadlineAlert:
    """SLA: email (+ webhook) when a run is still not done ``<kind>_deadline_minutes`` after queueing."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=config.deadline_minutes(kind)),
        callback=AsyncCallback(AstridNotifier, kwargs=_alert_kwargs("deadline", config, catalog_conn_id)),
    )


def announcer(config: InferenceSchedulingConfig, catalog_conn_id: str = CatalogHook.default_conn_name) -> Any:
    """``on_success_callback`` of a task that moved the champion: email (+ Slack) its return value
    (what happened, then the comparison table) as a ``promotion`` announcement."""
    return AstridNotifier(
        message="{{ ti.xcom_pull(task_ids=ti.task_id) }}",
        **_alert_kwargs("promotion", config, catalog_conn_id),
    )


def model_param(default: str, config: InferenceSchedulingConfig) -> Param:
    """Which model a run uses: the registry references and model directories
    :func:`astrid.model_reference.model_pattern` admits (the UI form checks them before a run)."""
    return Param(
        default,
        type="string",
        maxLength=1024,
        pattern=model_pattern(config.model_root_paths),
        title="Model",
        description="champion, challenger, a registry version number, models:/astrid-unet@alias, or "
        "the absolute path of a model directory under ASTRID_INFERENCE_MODEL_ROOTS",
    )


def max_observations_param(default: int, description: str, *, maximum: int = MAX_COUNT) -> Param:
    """How many observations one run takes at most (the bound of every per-run count)."""
    return Param(
        default, type="integer", minimum=1, maximum=maximum, title="Max observations", description=description
    )


def confidence_threshold_param(config: InferenceSchedulingConfig) -> Param:
    return Param(
        config.confidence_threshold,
        type="number",
        exclusiveMinimum=0,
        exclusiveMaximum=1,
        title="Confidence threshold",
        description="Probability cut for a detection, strictly between 0 and 1.",
    )


def inference_params(kind: str, config: InferenceSchedulingConfig) -> dict[str, Param]:
    """Typed trigger params: the UI form, `dags trigger --conf` and the REST API are validated alike."""
    max_observations = getattr(config, dag_kind(kind).max_observations_setting)
    return {
        "max_observations": max_observations_param(
            max_observations, "Observations to claim (1 to the configured maximum).", maximum=max_observations
        ),
        "model_version": model_param("champion", config),
        "confidence_threshold": confidence_threshold_param(config),
    }


def validation_params(config: InferenceSchedulingConfig) -> dict[str, Param]:
    return {
        "dataset_size": Param(
            config.validation_dataset_size,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Labelled observations",
        ),
        "confidence_threshold": confidence_threshold_param(config),
    }


def training_params(config: InferenceSchedulingConfig) -> dict[str, Param]:
    return {
        "validation_size": Param(
            config.validation_dataset_size,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Validation set",
            description="The first N labelled observations (the weekly validation's): compared on, never trained on.",
        ),
        "labelled": Param(
            config.training_labelled,
            type="integer",
            minimum=0,
            maximum=100_000,
            title="Labelled observations to train on",
            description="Taken after the validation set; trained on beside the synthetic survey.",
        ),
        "recipe": Param(
            {},
            type="object",
            title="Recipe overrides",
            description='astrid.ml.train.TrainConfig fields, e.g. {"epochs": 12, "seed": 2}; empty: the '
            "shipped recipe with CUDA, the bounded CPU recipe without it.",
        ),
        "confidence_threshold": confidence_threshold_param(config),
    }


def dag_kwargs(
    kind: str,
    config: InferenceSchedulingConfig,
    *,
    doc_md: str,
    tags: list[str],
    params: dict[str, Param],
    catalog_conn_id: str = CatalogHook.default_conn_name,
    assets: Any = None,
) -> dict[str, Any]:
    """Everything a DAG kind's ``DAG(...)`` takes but its tasks: id, schedule, policy, deadline.

    ``catalog_conn_id`` reaches every task, the failure alerts, the deadline alert and the DAG's
    failure callback (:class:`~astrid.airflow.callbacks.RecordFailedRun`, for the kinds that
    record inference runs) alike. A kind scheduled on Assets rather than a cron gets ``assets``
    as its schedule while its switch is on (manual only when off).
    """
    row = dag_kind(kind)
    if row.schedule_setting is None:
        schedule = assets if config.enabled(kind) else None
    elif kind == "realtime":  # on each arrival message or on its cron (astrid.airflow.arrival)
        # imported here: Airflow's trigger base (pydantic models) costs the other DAG files ~14 ms
        from astrid.airflow.arrival import realtime_schedule

        schedule = realtime_schedule(config)
    else:
        schedule = config.schedule(kind)
    failure_callback = RecordFailedRun(kind, catalog_conn_id=catalog_conn_id) if row.records_runs else None
    return {
        "dag_id": row.dag_id,
        "schedule": schedule,
        "start_date": pendulum.parse(START_DATE_ISO, tz=config.timezone),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["astrid", *tags],
        "default_args": default_args(kind, config, catalog_conn_id),
        "max_consecutive_failed_dag_runs": 3,
        "render_template_as_native_obj": True,
        "deadline": deadline(kind, config, catalog_conn_id),
        "on_failure_callback": failure_callback,
        "params": params,
        "doc_md": doc_md,
    }
