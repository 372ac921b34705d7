"""Weekly model validation: score champion (and challenger) on labelled data; promote or roll back."""

from airflow.sdk import DAG

from astrid.airflow.dag_defaults import dag_kwargs, validation_params
from astrid.airflow.model_validation import (
    SERVING_MODEL,
    MoveChampionOperator,
    ScoreModelsOperator,
    SelectValidationSetOperator,
    ValidationDecisionOperator,
)
from astrid.config import load_config

config = load_config()

DOC = f"""
### AstrID weekly model validation

Runs the registry's `champion` (and `challenger`, when one exists) over
**{config.validation_dataset_size}** labelled observations, computes recall per SNR bin,
precision, F1 and false detections per megapixel (matching within 3 px), logs both to MLflow, then
branches on the measured metrics:

* **promote** — challenger beats the champion and clears the F1 floor ({config.min_validation_f1}): alias moves;
* **keep** — the champion holds;
* **rollback** — the champion fell below the floor: `champion` goes back to the previous version.

A change of serving model emits the `astrid_serving_model` Asset event. Degradation emails go out
when the champion is below the floor. Schedule `{config.schedule("validation")}` ({config.timezone});
SLA: late after {config.validation_deadline_minutes} min.
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
    )
    decide = ValidationDecisionOperator(task_id="decide", scores=scores.output)
    decide >> [
        MoveChampionOperator(task_id="promote", action="promote", outlets=[SERVING_MODEL]),
        MoveChampionOperator(task_id="keep", action="keep"),
        MoveChampionOperator(task_id="rollback", action="rollback", outlets=[SERVING_MODEL]),
    ]
