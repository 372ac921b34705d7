"""The training DAG's operators: build the dataset, train, evaluate against the champion, register.

Each ``execute()`` is a few lines over :mod:`astrid.training` through the hooks
:class:`~astrid.airflow.base.AstridBaseOperator` owns. What travels between the tasks is small:
claim dicts, the MLflow run the model was logged to, the scores — so the train task can run on a
GPU worker (``queue``/``pool`` from the configuration) and the others anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from astrid.airflow.base import AstridBaseOperator, astrid_template_fields


def _fail_on_bad_input(exc: Exception) -> Exception:
    """A bad recipe or an empty validation set does not get better on retry: fail for good."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(exc))


class BuildTrainingSetOperator(AstridBaseOperator):
    """The validation set and the labelled observations to train on (:func:`astrid.training.build_dataset`)."""

    template_fields: Sequence[str] = astrid_template_fields("validation_size", "labelled_limit")
    ui_color = "#e8f0fe"

    def __init__(self, *, validation_size: int | str, labelled_limit: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validation_size, self.labelled_limit = validation_size, labelled_limit

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.errors import AstridError
        from astrid.training import build_dataset

        try:
            return build_dataset(
                self.catalog,
                validation_size=int(self.validation_size),
                labelled_limit=int(self.labelled_limit),
            )
        except AstridError as exc:
            raise _fail_on_bad_input(exc) from exc


class TrainCandidateOperator(AstridBaseOperator):
    """Train a candidate: the shipped recipe with CUDA, the bounded CPU recipe without it, plus the
    ``recipe`` overrides; each epoch's loss goes to MLflow as it ends (:func:`astrid.training.train_candidate`)."""

    template_fields: Sequence[str] = astrid_template_fields(
        "dataset", "recipe", "device", "cpu_epochs", "cpu_observations", "max_image_side"
    )
    ui_color = "#fde2e4"

    def __init__(
        self,
        *,
        dataset: Any,
        recipe: Any = None,
        device: str = "auto",
        cpu_epochs: int | str,
        cpu_observations: int | str,
        max_image_side: int | str = 8192,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset, self.recipe, self.device = dataset, recipe, device
        self.cpu_epochs, self.cpu_observations, self.max_image_side = (
            cpu_epochs,
            cpu_observations,
            max_image_side,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.errors import ConfigError
        from astrid.training import load_labelled, train_candidate, training_device, training_recipe

        device = training_device(str(self.device))
        try:
            config = training_recipe(
                device,
                self.recipe or {},
                cpu_epochs=int(self.cpu_epochs),
                cpu_observations=int(self.cpu_observations),
            )
        except ConfigError as exc:
            raise _fail_on_bad_input(exc) from exc
        self.log.info("training on %s with %s", device, config)
        labelled = load_labelled(self.dataset["training"], self.storage, int(self.max_image_side))
        return train_candidate(
            self.registry,
            config=config,
            device=device,
            labelled=labelled,
            run=self.run_info(context, "training"),
        )


class EvaluateCandidateOperator(AstridBaseOperator):
    """Score candidate and champion on the validation set (:func:`astrid.training.evaluate_candidate`)."""

    template_fields: Sequence[str] = astrid_template_fields(
        "candidate", "dataset", "confidence_threshold", "device", "max_image_side", "star_residual_vetting"
    )

    def __init__(
        self,
        *,
        candidate: Any,
        dataset: Any,
        confidence_threshold: float | str,
        device: str = "auto",
        max_image_side: int | str = 8192,
        star_residual_vetting: str = "card",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.candidate, self.dataset, self.confidence_threshold = candidate, dataset, confidence_threshold
        self.device, self.max_image_side, self.star_residual_vetting = (
            device,
            max_image_side,
            star_residual_vetting,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.config import parse_vetting
        from astrid.pipeline import confidence_threshold
        from astrid.training import evaluate_candidate

        evaluation = evaluate_candidate(
            self.registry,
            candidate_run_id=self.candidate["mlflow_run_id"],
            validation=self.dataset["validation"],
            storage=self.storage,
            threshold=confidence_threshold(self.confidence_threshold),
            max_side=int(self.max_image_side),
            device=str(self.device),
            vetting=parse_vetting("star_residual_vetting", str(self.star_residual_vetting)),
        )
        self.log.info("candidate vs champion on the validation set:\n%s", evaluation["table"])
        return evaluation


class RegisterChallengerOperator(AstridBaseOperator):
    """Register the candidate, its card carrying the measured metrics, as ``challenger``
    (:func:`astrid.training.register_candidate`); the weekly validation decides if it serves."""

    template_fields: Sequence[str] = astrid_template_fields("candidate", "evaluation")
    ui_color = "#e6f4ea"

    def __init__(self, *, candidate: Any, evaluation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.candidate, self.evaluation = candidate, evaluation

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.training import register_candidate

        return register_candidate(
            self.registry,
            candidate_run_id=self.candidate["mlflow_run_id"],
            evaluation=self.evaluation,
            run=self.run_info(context, "training"),
        )
