"""``astrid_reprocess``: the operator and params of the reprocessing DAG (see :mod:`astrid.reprocess`).

One task: resolve the model version, then run :func:`astrid.reprocess.reprocess` over the time
range. It claims nothing, so it never competes with the realtime/batch queue; its results sit
beside the live ones under the model's registry version. A failed or timed-out try is retried
and goes on where it stopped (what is done is recorded per observation and version).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Param

from astrid.airflow.base import AstridBaseOperator, astrid_template_fields, read_limits

DAG_ID = "astrid_reprocess"
# ISO date or date-time (naive = UTC), or empty for "unbounded"
WHEN_PATTERN = r"^$|^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"


def reprocess_dag_kwargs(config: Any, *, doc_md: str) -> dict[str, Any]:
    """``DAG(...)`` arguments of ``astrid_reprocess``: manual, one run at a time, the batch kind's
    retry/timeout policy (it does batch-sized work), the configured operator settings."""
    from datetime import timedelta

    import pendulum

    from astrid.airflow.callbacks import RecordFailedRun
    from astrid.airflow.dag_defaults import START_DATE_ISO, operator_settings, retry_policy
    from astrid.dag_kinds import REPROCESS_KIND, dag_kind

    batch = dag_kind("batch")
    return {
        "dag_id": DAG_ID,
        "schedule": None,  # manual: the UI, the REST API, `airflow dags trigger`
        "start_date": pendulum.parse(START_DATE_ISO, tz=config.timezone),
        "catchup": False,
        "max_active_runs": 1,
        "max_consecutive_failed_dag_runs": 3,
        "render_template_as_native_obj": True,
        "tags": ["astrid", "reprocess", "inference"],
        "default_args": {
            **retry_policy(
                config,
                execution_timeout=timedelta(minutes=batch.execution_timeout_minutes),
                retry_delay=timedelta(seconds=batch.retry_delay_seconds),
                max_retry_delay=timedelta(minutes=batch.max_retry_delay_minutes),
            ),
            **operator_settings(config),
        },
        "on_failure_callback": RecordFailedRun(REPROCESS_KIND),
        "params": reprocess_params(config),
        "doc_md": doc_md,
    }


def reprocess_params(config: Any) -> dict[str, Param]:
    from astrid.airflow.dag_defaults import confidence_threshold_param, max_observations_param, model_param

    return {
        "model_version": model_param("challenger", config),
        "observed_from": Param(
            "",
            type="string",
            pattern=WHEN_PATTERN,
            title="Observed from",
            description="ISO date or date-time, UTC (MJD-OBS at or after); empty: no lower bound",
        ),
        "observed_to": Param(
            "",
            type="string",
            pattern=WHEN_PATTERN,
            title="Observed before",
            description="ISO date or date-time, UTC (MJD-OBS before); empty: no upper bound",
        ),
        "max_observations": max_observations_param(
            1000, "At most this many this run; trigger again to go on."
        ),
        "confidence_threshold": confidence_threshold_param(config),
    }


class ReprocessOperator(AstridBaseOperator):
    """Reprocess the observations of a time range with one model version (results side by side):
    :func:`astrid.reprocess.run_reprocess`.

    :param model: ``champion``, ``challenger``, a registry version, ``models:/...`` or a path
    :param observed_from: ISO date(-time) lower bound on MJD-OBS ('' = open)
    :param observed_to: ISO date(-time) upper bound on MJD-OBS ('' = open)
    :param max_observations: at most this many in this run
    :param max_image_side: / :param device: / :param star_residual_vetting: / :param zeropoint_key:
        as for the U-Net task (the DAG's ``default_args`` carry the configured values)
    """

    template_fields: Sequence[str] = astrid_template_fields(
        "model",
        "observed_from",
        "observed_to",
        "max_observations",
        "confidence_threshold",
        "device",
        "max_image_side",
        "star_residual_vetting",
        "zeropoint_key",
        "fits_limits",
    )
    ui_color = "#ede7f6"

    def __init__(
        self,
        *,
        model: str,
        max_image_side: int | str,
        observed_from: str = "",
        observed_to: str = "",
        max_observations: int | str = 1000,
        confidence_threshold: float | str = 0.5,
        batch_size: int | str = 8,
        device: str = "auto",
        star_residual_vetting: str = "card",
        zeropoint_key: str = "",
        fits_limits: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.zeropoint_key, self.fits_limits = zeropoint_key, fits_limits
        self.model, self.observed_from, self.observed_to = model, observed_from, observed_to
        self.max_observations, self.confidence_threshold = max_observations, confidence_threshold
        self.batch_size, self.device, self.max_image_side = batch_size, device, max_image_side
        self.star_residual_vetting = star_residual_vetting

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.config import parse_vetting
        from astrid.dag_kinds import REPROCESS_KIND
        from astrid.reprocess import run_reprocess

        summary = run_reprocess(
            catalog=self.catalog,
            storage=self.storage,
            registry=self.registry,
            run=self.run_info(context, kind=REPROCESS_KIND),
            model=str(self.model),
            threshold=self.confidence_threshold,
            max_side=int(self.max_image_side),
            batch_size=int(self.batch_size),
            device=self.device,
            vetting=parse_vetting("star_residual_vetting", str(self.star_residual_vetting)),
            observed_from=self.observed_from or None,
            observed_to=self.observed_to or None,
            limit=int(self.max_observations),
            metrics=self.metrics,
            zeropoint_key=str(self.zeropoint_key or "") or None,
            limits=read_limits(self.max_image_side, self.fits_limits),
        )
        self.log.info(
            "model version %s: %d reprocessed, %d failed, %d detections%s",
            summary["model_version"],
            summary["processed"],
            summary["failed"],
            summary["detections"],
            "; more remain: trigger again to go on" if summary["remaining"] else "",
        )
        return summary
