"""Realtime transient detection: on each arrival (or every 15 minutes), up to 10 fresh observations."""

from airflow.sdk import DAG

from astrid.airflow.dag_defaults import dag_kwargs, inference_params
from astrid.airflow.operators import (
    ClaimObservationsOperator,
    DataQualityOperator,
    InferenceReportOperator,
    PreflightOperator,
    SubtractObservationsOperator,
    UNetInferenceOperator,
)
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID realtime inference

Claims up to **{config.realtime_max_observations}** preprocessed observations from the catalog,
gates them with Great Expectations, runs the U-Net (GPU when present, CPU otherwise) and writes
detections back. Runs when an observation arrives (`astrid ingest`, `POST /astrid/observations`:
{"an arrival message on " + str(config.events_kind) if config.events_kind else "events are off"})
and on the cron `{config.schedule("realtime")}` ({config.timezone}), which sweeps up anything a lost
message missed. SLA: late after {config.realtime_deadline_minutes} min (email). One run at a time:
arrivals during a run coalesce into the next one, and a run whose claim is full while more wait
rings for another. Claims are leases, so a killed run's observations are picked up again when the
lease expires.

`preflight` skips the run when the worker is overloaded · `subtract` (observations that arrived
without a difference image) → `claim` → `quality_gate` → `infer` → `report`.
Trigger with conf `{{"max_observations": 5, "model_version": "champion", "confidence_threshold": 0.5}}`.
Runbook: `docs/runbook.md`.
"""

with DAG(
    **dag_kwargs(
        "realtime",
        config,
        doc_md=DOC,
        tags=["realtime", "inference"],
        params=inference_params("realtime", config),
    ),
) as dag:
    preflight = PreflightOperator(task_id="preflight")
    subtract = SubtractObservationsOperator(
        task_id="subtract",
        max_observations="{{ params.max_observations }}",
        lease_minutes=config.lease_minutes,
    )
    claim = ClaimObservationsOperator(
        task_id="claim",
        max_observations="{{ params.max_observations }}",
        lease_minutes=config.lease_minutes,
        announce_backlog=True,  # a full claim with more waiting asks for the next run at once
    )
    gate = DataQualityOperator(task_id="quality_gate", observations=claim.output)
    infer = UNetInferenceOperator(
        task_id="infer",
        observations=gate.output,
        model="{{ params.model_version }}",
        confidence_threshold="{{ params.confidence_threshold }}",
        batch_size=config.inference_batch_size,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    )
    report = InferenceReportOperator(
        task_id="report", summaries=infer.output, claimed=claim.output, kind="realtime"
    )
    preflight >> subtract >> claim >> gate >> infer >> report
