"""What every AstrID DAG shares: retries, alerts, deadlines, params — decided in one place.

DAG files stay a readable picture of the pipeline; the operational policy (retry with exponential
backoff, auto-pause after repeated failure, SLA deadlines, failure emails, typed trigger params)
lives here so the three DAGs cannot drift apart.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference, Param

from astrid.airflow.notifiers import AstridNotifier
from astrid.config import InferenceSchedulingConfig
from astrid.model_reference import model_pattern

OWNER = "astrid"
START_DATE_ISO = "2025-01-01"
EXECUTION_TIMEOUT = {"realtime": 12, "batch": 150, "validation": 170}  # minutes per task


def default_args(kind: str, config: InferenceSchedulingConfig) -> dict[str, Any]:
    args: dict[str, Any] = {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": timedelta(seconds=20 if kind == "realtime" else 60),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5 if kind == "realtime" else 20),
        "execution_timeout": timedelta(minutes=EXECUTION_TIMEOUT[kind]),
    }
    if config.alert_on_failure:
        args["on_failure_callback"] = AstridNotifier(kind="failure")
    return args


def deadline(kind: str, config: InferenceSchedulingConfig) -> DeadlineAlert:
    """SLA: email (+ webhook) when a run is still not done ``<kind>_deadline_minutes`` after queueing."""
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=config.deadline_minutes(kind)),
        callback=AsyncCallback(AstridNotifier, kwargs={"kind": "deadline"}),
    )


def inference_params(max_observations: int, config: InferenceSchedulingConfig) -> dict[str, Param]:
    """Typed trigger params: the UI form, `dags trigger --conf` and the REST API are validated alike."""
    return {
        "max_observations": Param(
            max_observations,
            type="integer",
            minimum=1,
            maximum=max_observations,
            title="Max observations",
            description="Observations to claim (1 to the configured maximum).",
        ),
        "model_version": Param(
            "champion",
            type="string",
            maxLength=1024,
            pattern=model_pattern(config.model_root_paths),
            title="Model",
            description="champion, challenger, a registry version number, models:/astrid-unet@alias, or "
            "the absolute path of a model directory under ASTRID_INFERENCE_MODEL_ROOTS",
        ),
        "confidence_threshold": Param(
            config.confidence_threshold,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Confidence threshold",
            description="Probability cut for a detection, strictly between 0 and 1.",
        ),
    }


def dag_kwargs(
    kind: str, config: InferenceSchedulingConfig, *, doc_md: str, tags: list[str], params: dict[str, Param]
) -> dict[str, Any]:
    return {
        "schedule": config.schedule(kind),
        "start_date": pendulum.parse(START_DATE_ISO, tz=config.timezone),
        "catchup": False,
        "tags": ["astrid", *tags],
        "default_args": default_args(kind, config),
        "max_consecutive_failed_dag_runs": 3,
        "render_template_as_native_obj": True,
        "deadline": deadline(kind, config),
        "params": params,
        "doc_md": doc_md,
    }
