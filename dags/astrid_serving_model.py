"""A new serving model (promotion or rollback): warm it on a worker, reprocess recent observations."""

from airflow.sdk import DAG

from astrid.airflow.assets import SERVING_MODEL
from astrid.airflow.dag_defaults import dag_kwargs
from astrid.airflow.reprocess import ReprocessOperator
from astrid.airflow.serving import WarmModelOperator, serving_params
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID serving-model change

Scheduled on the `astrid_serving_model` Asset, which the weekly validation's `promote` and
`rollback` tasks emit when they move the `champion` alias (while `ASTRID_INFERENCE_SERVING_ENABLED`
is true, now {config.serving_enabled}; manual trigger otherwise).

1. `warm_model` — downloads the champion's version into this worker's model cache, verifies it
   (sha256, safetensors, architecture) and loads it once, in the `{config.gpu_pool}` pool on the
   `{config.gpu_queue}` queue: a broken model fails here, not in a live run. The version is pinned
   for the next step. (One worker warms; another host fills its cache on its first run.)
2. `reprocess_recent` — the observations taken in the last **{config.reprocess_hours} h**
   (`hours` param, `ASTRID_INFERENCE_REPROCESS_HOURS`; at most {config.reprocess_max_observations})
   go through that version with `astrid.reprocess`: results stored beside the live ones, idempotent
   per (observation, model version), nothing claimed from the live queue. Triggering it again
   redoes nothing already done.

The promotion/rollback itself is announced by the validation DAG (email + Slack, with the
comparison table). SLA: late after {config.serving_deadline_minutes} min. Runbook: `docs/runbook.md`.
"""

with DAG(
    **dag_kwargs(
        "serving",
        config,
        doc_md=DOC,
        tags=["serving", "mlops"],
        params=serving_params(config),
        assets=[SERVING_MODEL],
    ),
) as dag:
    warm = WarmModelOperator(
        task_id="warm_model",
        batch_size=config.inference_batch_size,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    )
    warm >> ReprocessOperator(
        task_id="reprocess_recent",
        model="{{ ti.xcom_pull(task_ids='warm_model')['version'] }}",
        observed_from="{{ (dag_run.run_after - macros.timedelta(hours=params.hours)).isoformat() }}",
        max_observations="{{ params.max_observations }}",
        confidence_threshold="{{ params.confidence_threshold }}",
        batch_size=config.inference_batch_size,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    )
