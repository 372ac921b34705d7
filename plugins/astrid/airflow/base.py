"""The base every AstrID operator stands on, like the amazon provider's ``AwsBaseOperator``.

:class:`AstridBaseOperator` owns the connection ids of the three systems a task may touch (the
observation catalog, the storage root, the MLflow registry) and hands out their hooks and clients,
so an operator's ``execute()`` is a few lines: translate the Airflow context into a
:class:`~astrid.pipeline.RunInfo`, call one core function, return what goes to XCom.

Values an operator needs from configuration arrive as constructor arguments (``template_fields``,
visible as rendered fields in the UI). The DAG files read the configuration once, at parse time;
:mod:`astrid.airflow.dag_defaults` passes the DAG-wide ones through ``default_args``. Nothing
here reads the environment while a task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from astrid.airflow.hooks import CatalogHook, ModelRegistryHook, ObservationStorageHook

CONN_ID_FIELDS = ("catalog_conn_id", "storage_conn_id", "mlflow_conn_id")


def astrid_template_fields(*fields: str) -> tuple[str, ...]:
    """An AstrID operator's ``template_fields``: its own fields, then the connection ids and the
    monitoring switch every AstrID operator has (cf. the amazon provider's ``aws_template_fields``)."""
    return tuple(dict.fromkeys((*fields, *CONN_ID_FIELDS, "monitoring_enabled")))


def catalog_run_id(context: Any) -> str:
    """The claim owner recorded in the catalog: unique across DAGs (run ids alone are not)."""
    return catalog_run_key(context["dag"].dag_id, context["run_id"])


def catalog_run_key(dag_id: str, run_id: str) -> str:
    """``<dag id>:<dag run id>``: how the catalog names a DAG run's claims and detections."""
    return f"{dag_id}:{run_id}"


def stats(enabled: Any = True) -> Any:
    """The StatsD client AstrID metrics go through: Airflow's ``Stats`` (``[metrics]`` settings,
    prefix included), or a no-op when the monitoring switch is off. The one metrics accessor of
    the Airflow layer: operators and notifiers alike."""
    from astrid.metrics import NullMetrics

    if not flag(enabled):
        return NullMetrics()
    from airflow.sdk.observability.stats import Stats

    return Stats


def read_limits(max_image_side: Any, fits_limits: Any) -> Any:
    """:class:`astrid.imaging.fits.ReadLimits` from an operator's ``max_image_side`` and its
    ``fits_limits`` (the configuration's header-size and WCS limits, a dict from ``default_args``)."""
    from astrid.imaging.fits import ReadLimits

    return ReadLimits(max_side=int(max_image_side), **dict(fits_limits or {}))


def flag(value: Any) -> bool:
    """A switch given as a bool or as rendered template text (``"false"``, ``"0"``, ``"off"``...)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{value!r} is not a boolean: use true or false")
    return bool(value)


def xcom_list(value: Any) -> list[Any]:
    """An upstream XCom as a list: a single value (one task) or the values of mapped tasks.

    A mapped task's output is a lazy sequence; it is read by index up to its length (iterating it
    probes one past the end), and empty entries (a chunk with nothing to do) are dropped.
    """
    if value is None:
        return []
    if isinstance(value, (dict, str)):
        return [value]
    return [item for item in (value[i] for i in range(len(value))) if item]


class AstridBaseOperator(BaseOperator):
    """Owns the AstrID connection ids and their hooks; subclasses add their own template fields
    with :func:`astrid_template_fields`.

    :param catalog_conn_id: observation catalog connection (default ``astrid_catalog``)
    :param storage_conn_id: observation storage connection (default ``astrid_storage``)
    :param mlflow_conn_id: MLflow tracking/registry connection (default ``mlflow_default``)
    :param monitoring_enabled: send ``astrid.*`` StatsD metrics (``ASTRID_INFERENCE_MONITORING_ENABLED``)

    A DAG that uses other connections sets them once in ``default_args`` (as with ``aws_conn_id``);
    :func:`astrid.airflow.dag_defaults.dag_kwargs` does that, and gives the same catalog to the
    DAG's failure callback.
    """

    template_fields: Sequence[str] = astrid_template_fields()

    def __init__(
        self,
        *,
        catalog_conn_id: str = CatalogHook.default_conn_name,
        storage_conn_id: str = ObservationStorageHook.default_conn_name,
        mlflow_conn_id: str = ModelRegistryHook.default_conn_name,
        monitoring_enabled: bool | str = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.catalog_conn_id = catalog_conn_id
        self.storage_conn_id = storage_conn_id
        self.mlflow_conn_id = mlflow_conn_id
        self.monitoring_enabled = monitoring_enabled

    # hooks: created on first use, after the connection ids are rendered
    @cached_property
    def catalog_hook(self) -> CatalogHook:
        return CatalogHook(self.catalog_conn_id)

    @cached_property
    def storage_hook(self) -> ObservationStorageHook:
        return ObservationStorageHook(self.storage_conn_id)

    @cached_property
    def registry_hook(self) -> ModelRegistryHook:
        return ModelRegistryHook(self.mlflow_conn_id)

    # the core objects the hooks hand out
    @property
    def catalog(self) -> Any:
        """:class:`astrid.catalog.Catalog` (shared per URL in the process)."""
        return self.catalog_hook.get_conn()

    @property
    def storage(self) -> Any:
        """:class:`astrid.storage.StorageRoot`."""
        return self.storage_hook.get_conn()

    @property
    def registry(self) -> Any:
        """:class:`astrid.registry.ModelRegistry`."""
        return self.registry_hook.get_conn()

    @property
    def metrics(self) -> Any:
        return stats(self.monitoring_enabled)

    def run_info(self, context: Any, kind: str = "cli") -> Any:
        """Who is running, for the core: :class:`astrid.pipeline.RunInfo` from the task context."""
        from astrid.pipeline import RunInfo

        ti = context.get("ti")
        return RunInfo(
            run_id=catalog_run_id(context),
            dag_id=self.dag_id,
            kind=kind,
            task_id=self.task_id,
            dag_run_id=context["run_id"],
            map_index=getattr(ti, "map_index", -1) if ti is not None else -1,
        )
