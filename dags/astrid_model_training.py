"""Model training: dataset → train (gpu queue) → evaluate against the champion → register as challenger."""

from airflow.sdk import DAG

from astrid.airflow.assets import MODEL_DEGRADED, MODEL_DRIFT
from astrid.airflow.dag_defaults import dag_kwargs, training_params
from astrid.airflow.training import (
    BuildTrainingSetOperator,
    EvaluateCandidateOperator,
    RegisterChallengerOperator,
    TrainCandidateOperator,
)
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID model training

Runs when triggered, and — while `ASTRID_INFERENCE_TRAINING_ENABLED` is true (now
{config.training_enabled}) — when the nightly drift check updates `astrid_model_drift` or the
weekly validation updates `astrid_model_degraded`.

1. `build_dataset` — the catalog's labelled observations: the first `validation_size` (the weekly
   validation's set) are held out; up to `labelled` after them are trained on, beside the
   synthetic survey with injected transients the recipe generates from its seed.
2. `train` — in the `{config.gpu_pool}` pool on the `{config.gpu_queue}` queue. With CUDA: the
   shipped model's recipe; without it, the bounded CPU recipe ({config.training_cpu_epochs} epochs,
   {config.training_cpu_observations} synthetic frames; `ASTRID_INFERENCE_TRAINING_CPU_*`). The
   `recipe` param overrides any `TrainConfig` field. Each epoch's loss is logged to MLflow
   (experiment `astrid-training`) as it ends; the model is logged as that run's artifacts.
3. `evaluate` — candidate and champion on the validation set, with the figures of `astrid evaluate`
   (recall per SNR bin, false detections per Mpix, precision, F1), logged to the training run.
4. `register` — the card gets the measured metrics and the model enters the registry as
   `challenger` (weights already registered: the alias moves to that version). The weekly
   validation decides whether it ever serves.

Trigger with conf `{{"recipe": {{"epochs": 12, "seed": 2}}}}`. SLA: late after
{config.training_deadline_minutes} min. Runbook: `docs/runbook.md`.
"""

with DAG(
    **dag_kwargs(
        "training",
        config,
        doc_md=DOC,
        tags=["training", "mlops"],
        params=training_params(config),
        assets=MODEL_DRIFT | MODEL_DEGRADED,
    ),
) as dag:
    dataset = BuildTrainingSetOperator(
        task_id="build_dataset",
        validation_size="{{ params.validation_size }}",
        labelled_limit="{{ params.labelled }}",
    )
    candidate = TrainCandidateOperator(
        task_id="train",
        dataset=dataset.output,
        recipe="{{ params.recipe }}",
        cpu_epochs=config.training_cpu_epochs,
        cpu_observations=config.training_cpu_observations,
        pool=config.gpu_pool,
        queue=config.gpu_queue,
    )
    evaluation = EvaluateCandidateOperator(
        task_id="evaluate",
        candidate=candidate.output,
        dataset=dataset.output,
        confidence_threshold="{{ params.confidence_threshold }}",
    )
    RegisterChallengerOperator(task_id="register", candidate=candidate.output, evaluation=evaluation.output)
