"""The serving DAG's warm-up operator (:mod:`astrid.serving`); its reprocessing step is
:class:`astrid.airflow.reprocess.ReprocessOperator` with the warmed version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Param

from astrid.airflow.base import AstridBaseOperator, astrid_template_fields


class WarmModelOperator(AstridBaseOperator):
    """Download, verify and load the champion once on this worker (:func:`astrid.serving.warm_champion`);
    returns its pinned ``version`` for the reprocessing step."""

    template_fields: Sequence[str] = astrid_template_fields("device", "batch_size")
    ui_color = "#e6f4ea"

    def __init__(self, *, device: str = "auto", batch_size: int | str = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.device, self.batch_size = device, batch_size

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.serving import warm_champion

        warmed = warm_champion(
            self.registry,
            device=str(self.device),
            batch_size=int(self.batch_size),
            metrics=self.metrics,
            dag_id=self.dag_id,
        )
        self.log.info(
            "champion v%s ready on %s in %.1f s (%s)",
            warmed["version"],
            warmed["device"],
            warmed["seconds"],
            warmed["path"],
        )
        return warmed


def serving_params(config: Any) -> dict[str, Param]:
    from astrid.airflow.dag_defaults import confidence_threshold_param, max_observations_param

    return {
        "hours": Param(
            config.reprocess_hours,
            type="number",
            exclusiveMinimum=0,
            maximum=24 * 90,
            title="Hours to reprocess",
            description="Observations taken (MJD-OBS) in this many hours before the run are reprocessed.",
        ),
        "max_observations": max_observations_param(
            config.reprocess_max_observations,
            "At most this many this run; the reprocessing DAG (astrid_reprocess) goes on from there.",
        ),
        "confidence_threshold": confidence_threshold_param(config),
    }
