"""The Airflow face's base: AstridBaseOperator, its helpers, and the connection ids reaching every
step (operators, the run report, the DAG's failure callback, alerts) from one place.

Connections are real Airflow connections (``AIRFLOW_CONN_*`` environment variables, read by
Airflow's own secrets backend); the report step runs under ``dag.test()`` on the test metadata DB.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from datetime import timedelta
from types import SimpleNamespace

import pendulum
import pytest

from astrid.airflow import dag_defaults
from astrid.airflow.base import (
    CONN_ID_FIELDS,
    AstridBaseOperator,
    catalog_run_id,
    flag,
    stats,
    xcom_list,
)
from astrid.airflow.callbacks import RecordFailedRun
from astrid.airflow.hooks import CatalogHook, ModelRegistryHook, ObservationStorageHook, dispose_catalogs
from astrid.airflow.model_validation import (
    MoveChampionOperator,
    ScoreModelsOperator,
    SelectValidationSetOperator,
    ValidationDecisionOperator,
)
from astrid.airflow.operators import (
    ClaimObservationsOperator,
    DataQualityOperator,
    InferenceReportOperator,
    LeasingOperator,
    PreflightOperator,
    SubtractObservationsOperator,
    UNetInferenceOperator,
)
from astrid.catalog import Catalog, NewObservation
from astrid.config import InferenceSchedulingConfig
from astrid.metrics import NullMetrics

ASTRID_OPERATORS = [
    SubtractObservationsOperator,
    ClaimObservationsOperator,
    DataQualityOperator,
    UNetInferenceOperator,
    InferenceReportOperator,
    SelectValidationSetOperator,
    ScoreModelsOperator,
    ValidationDecisionOperator,
    MoveChampionOperator,
]
NOT_TEMPLATED = {"self", "kwargs", "kind", "action", "decision_task_id", "announce_backlog"}  # structure
ALT = "astrid_catalog_alt"


def _params(cls: type) -> set[str]:
    """The inputs an operator takes, its own and those of the AstrID bases between it and
    :class:`AstridBaseOperator` (e.g. :class:`LeasingOperator`'s lease inputs)."""
    own = [
        c
        for c in cls.__mro__
        if "__init__" in vars(c)
        and (c is cls or (issubclass(c, AstridBaseOperator) and c is not AstridBaseOperator))
    ]
    return set().union(*(inspect.signature(c.__init__).parameters for c in own)) - NOT_TEMPLATED


@pytest.mark.parametrize("cls", [*ASTRID_OPERATORS, PreflightOperator], ids=lambda c: c.__name__)
def test_every_input_is_a_template_field(cls):
    assert _params(cls) <= set(cls.template_fields), _params(cls) - set(cls.template_fields)
    if issubclass(cls, AstridBaseOperator):
        assert set(CONN_ID_FIELDS) | {"monitoring_enabled"} <= set(cls.template_fields)


@pytest.mark.parametrize(
    "cls", [ClaimObservationsOperator, SubtractObservationsOperator], ids=lambda c: c.__name__
)
def test_leasing_operators_share_one_reading_of_their_lease_inputs(cls):
    """Both queues' claim steps take the lease inputs from :class:`LeasingOperator`: rendered
    strings (DAG params) become the count and the lease duration the catalog is given."""
    extra = {"max_image_side": 4096} if cls is SubtractObservationsOperator else {}
    op = cls(task_id="t", max_observations="7", max_attempts="3", lease_minutes="2.5", **extra)
    assert isinstance(op, LeasingOperator)
    assert set(LeasingOperator.LEASE_FIELDS) <= set(cls.template_fields)
    assert op.lease_limit == 7 and op.lease_time == timedelta(minutes=2.5)
    assert cls(task_id="u", max_observations=1, max_attempts=1, **extra).lease_time == timedelta(minutes=30)


def test_operator_settings_are_config_fields_taken_by_operators():
    config_fields = {f.name for f in fields(InferenceSchedulingConfig)}
    taken = set().union(*(_params(cls) for cls in [*ASTRID_OPERATORS, PreflightOperator]))
    taken |= set(inspect.signature(AstridBaseOperator.__init__).parameters)
    for name in dag_defaults.OPERATOR_SETTINGS:
        assert name in config_fields, name
        assert name in taken, f"{name} reaches no operator"


def test_hooks_follow_the_connection_ids():
    op = SelectValidationSetOperator(task_id="t", size=3)
    assert (op.catalog_hook.conn_id, op.storage_hook.conn_id, op.registry_hook.conn_id) == (
        CatalogHook.default_conn_name,
        ObservationStorageHook.default_conn_name,
        ModelRegistryHook.default_conn_name,
    )
    other = SelectValidationSetOperator(
        task_id="t", size=3, catalog_conn_id="c", storage_conn_id="s", mlflow_conn_id="m"
    )
    assert (other.catalog_hook.conn_id, other.storage_hook.conn_id, other.registry_hook.conn_id) == (
        "c",
        "s",
        "m",
    )


def test_metrics_accessor_respects_the_switch():
    from airflow.sdk.observability.stats import Stats

    assert isinstance(stats(False), NullMetrics) and isinstance(stats("false"), NullMetrics)
    assert stats(True) is Stats and stats("on") is Stats
    op = SelectValidationSetOperator(task_id="t", size=1, monitoring_enabled=False)
    assert isinstance(op.metrics, NullMetrics)
    with pytest.raises(ValueError, match="not a boolean"):
        flag("maybe")


def test_xcom_list_and_run_info():
    assert xcom_list(None) == [] and xcom_list({"a": 1}) == [{"a": 1}]
    assert xcom_list([{"a": 1}, None, {}, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    from airflow.sdk import DAG

    with DAG("astrid_batch_inference", schedule=None) as dag:
        op = InferenceReportOperator(
            task_id="report", summaries={}, kind="batch", min_success_rate=0.9, zero_detection_runs=4
        )
    context = {"dag": dag, "run_id": "manual__1", "ti": SimpleNamespace(map_index=2)}
    run = op.run_info(context, "batch")
    assert catalog_run_id(context) == run.run_id == "astrid_batch_inference:manual__1"
    assert (run.dag_id, run.kind, run.task_id, run.dag_run_id, run.map_index) == (
        "astrid_batch_inference",
        "batch",
        "report",
        "manual__1",
        2,
    )


def test_dag_kwargs_give_one_catalog_connection_to_tasks_callbacks_and_alerts():
    from airflow.sdk import DAG

    config = InferenceSchedulingConfig(monitoring_enabled=False, max_attempts=5)
    kwargs = dag_defaults.dag_kwargs(
        "realtime",
        config,
        doc_md="x",
        tags=[],
        params=dag_defaults.inference_params("realtime", config),
        catalog_conn_id=ALT,
    )
    with DAG(**kwargs) as dag:
        claim = ClaimObservationsOperator(task_id="claim", max_observations=2)
        report = InferenceReportOperator(task_id="report", summaries={}, kind="realtime")
        infer = UNetInferenceOperator.partial(task_id="infer").expand(observations=[[]])
    assert dag.dag_id == "astrid_realtime_inference"
    assert claim.catalog_conn_id == report.catalog_conn_id == ALT and report.catalog_hook.conn_id == ALT
    # configuration read at parse time reaches the operators as arguments
    assert claim.max_attempts == 5 and claim.monitoring_enabled is False
    assert report.min_success_rate == config.min_success_rate
    assert report.zero_detection_runs == config.zero_detection_runs
    assert (
        infer.partial_kwargs.get("max_image_side", dag.default_args["max_image_side"])
        == config.max_image_side
    )
    (callback,) = (
        dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [dag.on_failure_callback]
    )
    assert isinstance(callback, RecordFailedRun) and callback.catalog_conn_id == ALT
    assert dag.default_args["on_failure_callback"].catalog_conn_id == ALT
    deadline = dag.deadline[0] if isinstance(dag.deadline, list) else dag.deadline
    assert deadline.callback.kwargs["catalog_conn_id"] == ALT
    assert dag.default_args["execution_timeout"] == timedelta(minutes=12)


@pytest.fixture
def two_catalogs(tmp_path, monkeypatch):
    """The default catalog (ASTRID_CATALOG_URL) and another one behind connection ``ALT``."""
    default_url, alt_url = f"sqlite:///{tmp_path}/default.db", f"sqlite:///{tmp_path}/alt.db"
    monkeypatch.setenv("ASTRID_CATALOG_URL", default_url)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{ALT.upper()}",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": alt_url}}),
    )
    catalogs = Catalog(default_url), Catalog(alt_url)
    for catalog in catalogs:
        catalog.migrate()
    dispose_catalogs()
    yield catalogs
    for catalog in catalogs:
        catalog.dispose()
    dispose_catalogs()


def test_failure_callback_uses_a_non_default_catalog_connection(two_catalogs):
    default, alt = two_catalogs
    # (with a difference: a claimed row without one goes back to the subtraction queue, 'ingested')
    alt.register([NewObservation(name="o1", science_uri="s", reference_uri="r", difference_uri="d")])
    dag = SimpleNamespace(dag_id="astrid_batch_inference")
    assert len(alt.claim(1, catalog_run_id({"dag": dag, "run_id": "r1"}), timedelta(minutes=30))) == 1
    RecordFailedRun("batch", catalog_conn_id=ALT)({"dag": dag, "run_id": "r1"})
    assert (alt.status_counts()["preprocessed"], alt.status_counts()["claimed"]) == (1, 0)  # released at once
    assert [(r["run_id"], r["status"]) for r in alt.runs()] == [("r1", "failed")]
    assert default.runs() == []


def test_report_step_records_into_a_non_default_catalog(two_catalogs):
    """execute() called directly with the context keys it reads (dag.test() only runs DAGs from
    the dags folder; the shipped DAGs' report step runs under dag.test() in tests/dags)."""
    from airflow.sdk import DAG

    default, alt = two_catalogs
    summary = {"processed_count": 2, "failed_count": 0, "detections_found": 3, "processing_time": 1.0}
    with DAG("astrid_batch_inference", schedule=None) as dag:
        report = InferenceReportOperator(
            task_id="report",
            summaries=summary,
            claimed=[{}, {}],
            kind="batch",
            min_success_rate=0.9,
            zero_detection_runs=4,
            catalog_conn_id=ALT,
            monitoring_enabled=False,
        )
    started = pendulum.datetime(2026, 1, 1, 3, 0)
    context = {"dag": dag, "run_id": "manual__r", "dag_run": SimpleNamespace(start_date=started)}
    out = report.execute(context)
    assert out["processed_count"] == 2 and out["rejected_count"] == 0
    (row,) = alt.runs()
    assert (row["run_id"], row["dag_id"], row["kind"], row["processed"], row["detections"]) == (
        "manual__r",
        dag.dag_id,
        "batch",
        2,
        3,
    )
    assert default.runs() == []
