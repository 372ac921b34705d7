"""The weekly model validation's operators: select labelled data, score, decide, move the alias.

Each ``execute()`` is a few lines over :mod:`astrid.validation` through the hooks
:class:`~astrid.airflow.base.AstridBaseOperator` owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseBranchOperator

from astrid.airflow.assets import SERVING_MODEL
from astrid.airflow.base import AstridBaseOperator, astrid_template_fields, read_limits
from astrid.airflow.notifiers import AstridNotifier

__all__ = ["SERVING_MODEL"]  # re-exported: the validation DAG emits it
ACTIONS = ("promote", "keep", "rollback")  # astrid.validation's PROMOTE, KEEP, ROLLBACK
RETRAIN_BRANCH = "request_retraining"  # also chosen when the champion is below the floor
NO_LABELLED_DATA = (
    "no labelled observations in the catalog: seed some with "
    "`astrid seed --count N --labelled N` or register labelled data"
)


class SelectValidationSetOperator(AstridBaseOperator):
    """Labelled observations (truth kept with them); read, not claimed: validation changes no state."""

    template_fields: Sequence[str] = astrid_template_fields("size")

    def __init__(self, *, size: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from airflow.sdk.exceptions import AirflowFailException

        observations = [c.to_xcom() for c in self.catalog.labelled(int(self.size))]
        if not observations:
            raise AirflowFailException(NO_LABELLED_DATA)  # retrying cannot create labelled data
        return observations


class ScoreModelsOperator(AstridBaseOperator):
    """Score the champion and every candidate (the challenger and the latest
    ``validation_candidates`` versions) on the same observations; log the scores and the
    comparison table to MLflow (:func:`astrid.validation.score_models`)."""

    template_fields: Sequence[str] = astrid_template_fields(
        "observations",
        "confidence_threshold",
        "device",
        "max_image_side",
        "star_residual_vetting",
        "validation_candidates",
        "fits_limits",
    )

    def __init__(
        self,
        *,
        observations: Any,
        confidence_threshold: float | str,
        max_image_side: int | str,
        device: str = "auto",
        star_residual_vetting: str = "card",
        validation_candidates: int | str = 3,
        fits_limits: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.validation_candidates = validation_candidates
        self.observations, self.confidence_threshold = observations, confidence_threshold
        self.device, self.max_image_side, self.star_residual_vetting = (
            device,
            max_image_side,
            star_residual_vetting,
        )
        self.fits_limits = fits_limits

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.catalog import Claim
        from astrid.config import parse_vetting
        from astrid.pipeline import confidence_threshold
        from astrid.validation import score_models

        return score_models(
            self.registry,
            [Claim.from_xcom(c) for c in self.observations],
            self.storage,
            threshold=confidence_threshold(self.confidence_threshold),
            device=self.device,
            max_side=int(self.max_image_side),
            vetting=parse_vetting("star_residual_vetting", str(self.star_residual_vetting)),
            dag_run_id=context["run_id"],
            dag_id=self.dag_id,
            metrics=self.metrics,
            latest=int(self.validation_candidates),
            limits=read_limits(self.max_image_side, self.fits_limits),
        )


class ValidationDecisionOperator(BaseBranchOperator, AstridBaseOperator):
    """Promote, keep or roll back — on the measured metrics (see :func:`astrid.validation.decide`).

    Pushes the decision (XCom key ``decision``) for the branch it picks. When the champion is
    below ``min_validation_f1`` it sends a degradation alert and also picks the
    ``request_retraining`` branch (XCom key ``degraded``: the reason), which updates the
    degradation Asset the training DAG is scheduled on.
    """

    template_fields: Sequence[str] = astrid_template_fields("scores", "min_validation_f1")

    def __init__(self, *, scores: Any, min_validation_f1: float | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores, self.min_validation_f1 = scores, min_validation_f1

    def choose_branch(self, context: Any) -> str:
        from astrid.logs import log_event
        from astrid.validation import decide_from_scores

        min_f1 = float(self.min_validation_f1)
        decision = decide_from_scores(self.scores, min_f1=min_f1)
        log_event(
            "validation.decision", run_id=context["run_id"], action=decision.action, reason=decision.reason
        )
        context["ti"].xcom_push(key="decision", value=decision.to_xcom())
        if self.scores["champion"]["f1"] >= min_f1:
            return decision.action
        reason = f"model validation: {decision.reason}"
        context["ti"].xcom_push(key="degraded", value=reason)
        AstridNotifier(
            kind="degradation",
            message=reason,
            catalog_conn_id=self.catalog_conn_id,
            monitoring_enabled=self.monitoring_enabled,
        ).notify(context)
        return [decision.action, RETRAIN_BRANCH]


class MoveChampionOperator(AstridBaseOperator):
    """Carry out the decision: move the ``champion`` alias (promote/rollback) or keep it
    (:func:`astrid.validation.apply_decision`).

    Promote and rollback emit the ``astrid_serving_model`` Asset event (give them
    ``outlets=[SERVING_MODEL]``); a broken model never becomes champion because
    :meth:`ModelRegistry.register` refuses models that do not load.

    Returns what happened in words, then (given ``scores``) the comparison table: the text a
    ``promotion`` notifier in ``on_success_callback`` announces.
    """

    template_fields: Sequence[str] = astrid_template_fields("scores")

    def __init__(
        self, *, action: str, decision_task_id: str = "decide", scores: Any = None, **kwargs: Any
    ) -> None:
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: expected {', '.join(ACTIONS)}")
        super().__init__(**kwargs)
        self.action, self.decision_task_id, self.scores = action, decision_task_id, scores

    def execute(self, context: Any) -> str:
        from astrid.validation import apply_decision, scores_table

        decision = context["ti"].xcom_pull(task_ids=self.decision_task_id, key="decision")
        registry = self.registry if self.action != "keep" else None
        said = f"{self.action}: " + apply_decision(registry, self.action, decision, run_id=context["run_id"])
        return f"{said}\n\n{scores_table(self.scores)}" if self.scores else said
