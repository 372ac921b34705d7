"""Reprocessing: past observations through another model version, results side by side."""

from airflow.sdk import DAG

from astrid.airflow.reprocess import ReprocessOperator, reprocess_dag_kwargs
from astrid.config import load_config

config = load_config()

DOC = """
### AstrID reprocessing

Runs a model version (default: the `challenger`) over the observations of a time range (their
`MJD-OBS`), after a promotion or to compare two models. Its detections are stored **beside** the
live ones, under that version: nothing is claimed, no status changes, the live queue carries on.
Idempotent per (observation, model version) and resumable: trigger it again and it goes on where
it stopped (at most `max_observations` per run). CLI equivalent: `astrid reprocess --model 2
--from 2026-11-01 --to 2026-12-01`. Manual only; the batch DAG's retry and timeout policy.
Runbook: `docs/runbook.md`.
"""

with DAG(**reprocess_dag_kwargs(config, doc_md=DOC)) as dag:
    ReprocessOperator(
        task_id="reprocess",
        model="{{ params.model_version }}",
        observed_from="{{ params.observed_from }}",
        observed_to="{{ params.observed_to }}",
        max_observations="{{ params.max_observations }}",
        confidence_threshold="{{ params.confidence_threshold }}",
        batch_size=config.inference_batch_size,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    )
