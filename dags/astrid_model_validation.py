"""Weekly model validation: score the champion against every candidate; promote or roll back."""

from airflow.sdk import DAG

from astrid.airflow.assets import MODEL_DEGRADED, SERVING_MODEL, RequestRetrainingOperator
from astrid.airflow.dag_defaults import announcer, dag_kwargs, validation_params
from astrid.airflow.model_validation import (
    RETRAIN_BRANCH,
    MoveChampionOperator,
    ScoreModelsOperator,
    SelectValidationSetOperator,
    ValidationDecisionOperator,
)
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID weekly model validation

Runs the registry's `champion` and **every candidate** — the `challenger` and the latest
{config.validation_candidates} other registry versions (`ASTRID_INFERENCE_VALIDATION_CANDIDATES`) —
over **{config.validation_dataset_size}** labelled observations, computes recall per SNR bin,
precision, F1 and false detections per megapixel (matching within 3 px; the figures of
`astrid evaluate`), logs each score and the comparison table to MLflow, then branches on the
measured metrics:

* **promote** — the best candidate beats the champion and clears the F1 floor ({config.min_validation_f1}): alias moves;
* **keep** — the champion holds;
* **rollback** — the champion fell below the floor: `champion` goes back to the previous version.

A change of serving model emits the `astrid_serving_model` Asset (the serving DAG warms the new
model and reprocesses recent observations) and is announced by email (+ Slack) with the comparison
table. A champion below the floor also sends a degradation email and updates the
`astrid_model_degraded` Asset (`request_retraining`), which starts `astrid_model_training`.
Schedule `{config.schedule("validation")}` ({config.timezone}); SLA: late after
{config.validation_deadline_minutes} min. Runbook: `docs/runbook.md`.
"""

with DAG(
    **dag_kwargs(
        "validation", config, doc_md=DOC, tags=["validation", "mlops"], params=validation_params(config)
    ),
) as dag:
    observations = SelectValidationSetOperator(
        task_id="select_validation_set", size="{{ params.dataset_size }}"
    )
    scores = ScoreModelsOperator(
        task_id="score_models",
        observations=observations.output,
        confidence_threshold="{{ params.confidence_threshold }}",
        validation_candidates=config.validation_candidates,
    )
    decide = ValidationDecisionOperator(task_id="decide", scores=scores.output)
    promote, rollback = (
        MoveChampionOperator(
            task_id=action,
            action=action,
            scores=scores.output,
            outlets=[SERVING_MODEL],  # the serving DAG warms the new champion
            on_success_callback=announcer(config),
        )
        for action in ("promote", "rollback")
    )
    decide >> [
        promote,
        MoveChampionOperator(task_id="keep", action="keep"),
        rollback,
        RequestRetrainingOperator(
            task_id=RETRAIN_BRANCH,
            reason="{{ ti.xcom_pull(task_ids='decide', key='degraded') }}",
            outlets=[MODEL_DEGRADED],
        ),
    ]
