"""Nightly batch transient detection: up to 100 observations, fanned out over mapped tasks."""

from airflow.sdk import DAG

from astrid.airflow.dag_defaults import dag_kwargs, inference_params
from astrid.airflow.operators import (
    ChunkClaimsOperator,
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
### AstrID nightly batch inference

First subtracts observations that arrived without a difference image (`subtract`), then
claims up to **{config.batch_max_observations}** observations left over from the night, splits
them into chunks of {config.batch_chunk_size} and fans out one quality-gate + U-Net task per chunk
(dynamic task mapping), so several workers share the work. U-Net tasks run in the
`{config.gpu_pool}` pool and `{config.gpu_queue}` queue. Schedule `{config.schedule("batch")}`
({config.timezone}); SLA: late after {config.batch_deadline_minutes} min. A failed chunk retries
alone; a bad observation fails alone. Runbook: `docs/runbook.md`.
"""

with DAG(
    **dag_kwargs(
        "batch", config, doc_md=DOC, tags=["batch", "inference"], params=inference_params("batch", config)
    ),
) as dag:
    preflight = PreflightOperator(task_id="preflight")
    subtract = SubtractObservationsOperator(
        task_id="subtract",
        max_observations="{{ params.max_observations }}",
        lease_minutes=config.lease_minutes * 4,
    )
    claim = ClaimObservationsOperator(
        task_id="claim",
        max_observations="{{ params.max_observations }}",
        lease_minutes=config.lease_minutes * 4,
    )
    chunks = ChunkClaimsOperator(task_id="chunk", claims=claim.output, size=config.batch_chunk_size)
    gate = DataQualityOperator.partial(task_id="quality_gate").expand(observations=chunks.output)
    infer = UNetInferenceOperator.partial(
        task_id="infer",
        model="{{ params.model_version }}",
        confidence_threshold="{{ params.confidence_threshold }}",
        batch_size=config.inference_batch_size,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    ).expand(observations=gate.output)
    report = InferenceReportOperator(
        task_id="report", summaries=infer.output, claimed=claim.output, kind="batch"
    )
    preflight >> subtract >> claim
    infer >> report
