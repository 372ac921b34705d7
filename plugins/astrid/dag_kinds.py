"""The AstrID DAG kinds: one row per scheduled DAG, the one home of its id and its run policy.

Everything that differs between the AstrID DAGs is decided here and read from here: the
configuration's schedule/switch/deadline settings of each kind
(:meth:`astrid.config.InferenceSchedulingConfig.schedule`), the DAG defaults
(:mod:`astrid.airflow.dag_defaults`), the status API's DAG list (every kind), its run types
(:data:`RUN_TYPES`: the kinds that record inference runs) and the catalog's ``inference_runs.kind``
values (:data:`astrid.catalog.models.RUN_KINDS`). No Airflow imports: usable anywhere.

The model's life (training, the nightly drift check, the serving-model change) has kinds of its
own: they keep their run history in Airflow and MLflow, not in the catalog's ``inference_runs``
(``records_runs=False``), so they are not status-API run types and need no catalog migration.
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
    schedule_setting: str | None  # a cron setting; None: scheduled on Assets the DAG file names
    enabled_setting: str
    deadline_setting: str
    max_observations_setting: str | None  # bounds the ``max_observations`` param; None: not claimed
    execution_timeout_minutes: float  # per task
    retry_delay_seconds: float  # first retry; exponential back-off after it
    max_retry_delay_minutes: float
    records_runs: bool = True  # writes inference_runs rows (a status-API run type, a catalog kind)


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
        DagKind(
            name="training",
            dag_id="astrid_model_training",
            schedule_setting=None,  # manual, or the drift / degradation Assets
            enabled_setting="training_enabled",
            deadline_setting="training_deadline_minutes",
            max_observations_setting=None,
            execution_timeout_minutes=480,  # the train task: the bounded CPU recipe fits well inside
            retry_delay_seconds=120,
            max_retry_delay_minutes=30,
            records_runs=False,
        ),
        DagKind(
            name="drift",
            dag_id="astrid_drift_check",
            schedule_setting="drift_schedule",
            enabled_setting="drift_enabled",
            deadline_setting="drift_deadline_minutes",
            max_observations_setting=None,
            execution_timeout_minutes=30,
            retry_delay_seconds=60,
            max_retry_delay_minutes=10,
            records_runs=False,
        ),
        DagKind(
            name="serving",
            dag_id="astrid_serving_model",
            schedule_setting=None,  # the serving-model Asset a promotion or rollback emits
            enabled_setting="serving_enabled",
            deadline_setting="serving_deadline_minutes",
            max_observations_setting="reprocess_max_observations",
            execution_timeout_minutes=110,
            retry_delay_seconds=60,
            max_retry_delay_minutes=10,
            records_runs=False,
        ),
    )
}
# the kinds that record inference runs, display order: realtime, batch, validation
RUN_TYPES: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.records_runs)
# The manual reprocessing DAG (astrid_reprocess / `astrid reprocess`) is not a scheduled kind: it has
# no schedule, deadline or run-type in the status API, but its runs are recorded under this kind.
REPROCESS_KIND = "reprocess"
DAG_IDS: tuple[str, ...] = tuple(kind.dag_id for kind in KINDS.values())
_BY_DAG_ID = {kind.dag_id: kind for kind in KINDS.values()}


def dag_kind(name: str) -> DagKind:
    """The kind called ``name``; :class:`ConfigError` naming the known kinds otherwise."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown DAG kind {name!r}: expected {', '.join(KINDS)}") from None


def kind_of_dag(dag_id: str) -> DagKind | None:
    """The kind whose DAG is ``dag_id`` (``None`` for any other DAG)."""
    return _BY_DAG_ID.get(dag_id)
