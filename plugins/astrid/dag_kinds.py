"""The AstrID DAG kinds: one row per scheduled DAG, the one home of its id and its run policy.

Everything that differs between the realtime, batch and validation DAGs is decided here and read
from here: the configuration's schedule/switch/deadline settings of each kind
(:meth:`astrid.config.InferenceSchedulingConfig.schedule`), the DAG defaults
(:mod:`astrid.airflow.dag_defaults`), the status API's run types and DAG list
(:mod:`astrid.status`, :mod:`astrid.airflow.api`) and the catalog's ``inference_runs.kind``
values (:data:`astrid.catalog.models.RUN_KINDS`). No Airflow imports: usable anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from astrid.errors import ConfigError


@dataclass(frozen=True)
class DagKind:
    """One scheduled AstrID DAG.

    ``name`` is the kind as the catalog records it and as the status API's ``run_type`` takes it.
    The ``*_setting`` fields name :class:`~astrid.config.InferenceSchedulingConfig` fields.
    """

    name: str
    dag_id: str
    schedule_setting: str
    enabled_setting: str
    deadline_setting: str
    max_observations_setting: str | None  # bounds the ``max_observations`` param; None: not claimed
    execution_timeout_minutes: float  # per task
    retry_delay_seconds: float  # first retry; exponential back-off after it
    max_retry_delay_minutes: float


KINDS: dict[str, DagKind] = {
    kind.name: kind
    for kind in (
        DagKind(
            name="realtime",
            dag_id="astrid_realtime_inference",
            schedule_setting="realtime_schedule",
            enabled_setting="realtime_enabled",
            deadline_setting="realtime_deadline_minutes",
            max_observations_setting="realtime_max_observations",
            execution_timeout_minutes=12,
            retry_delay_seconds=20,
            max_retry_delay_minutes=5,
        ),
        DagKind(
            name="batch",
            dag_id="astrid_batch_inference",
            schedule_setting="batch_schedule",
            enabled_setting="batch_enabled",
            deadline_setting="batch_deadline_minutes",
            max_observations_setting="batch_max_observations",
            execution_timeout_minutes=150,
            retry_delay_seconds=60,
            max_retry_delay_minutes=20,
        ),
        DagKind(
            name="validation",
            dag_id="astrid_model_validation",
            schedule_setting="validation_schedule",
            enabled_setting="validation_enabled",
            deadline_setting="validation_deadline_minutes",
            max_observations_setting=None,  # its dataset_size param carries its own bound
            execution_timeout_minutes=170,
            retry_delay_seconds=60,
            max_retry_delay_minutes=20,
        ),
    )
}
RUN_TYPES: tuple[str, ...] = tuple(KINDS)  # display order: realtime, batch, validation
DAG_IDS: tuple[str, ...] = tuple(kind.dag_id for kind in KINDS.values())
_BY_DAG_ID = {kind.dag_id: kind for kind in KINDS.values()}


def dag_kind(name: str) -> DagKind:
    """The kind called ``name``; :class:`ConfigError` naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown DAG kind {name!r}: expected {', '.join(RUN_TYPES)}") from None


def kind_of_dag(dag_id: str) -> DagKind | None:
    """The kind whose DAG is ``dag_id`` (``None`` for any other DAG)."""
    return _BY_DAG_ID.get(dag_id)
