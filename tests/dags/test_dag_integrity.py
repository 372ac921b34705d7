"""DAG integrity: what the Astro scaffold checks, plus our schedules, params and policies.

Parses the real files in dags/ with Airflow's own DagBag (the dag-processor's code path) and,
for env overrides, re-imports the files with the variables set.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from astrid.airflow.demo import load_dag

REPO = Path(__file__).resolve().parents[2]
DAG_IDS = {
    "astrid_realtime_inference",
    "astrid_batch_inference",
    "astrid_model_validation",
    "astrid_model_training",
    "astrid_drift_check",
    "astrid_serving_model",
}
SCHEDULES = {
    "astrid_realtime_inference": "*/15 * * * *",
    "astrid_batch_inference": "0 2 * * *",
    "astrid_model_validation": "0 4 * * 0",
    "astrid_model_training": None,  # on Assets (below)
    "astrid_drift_check": "30 5 * * *",
    "astrid_serving_model": None,
}


def _cron_of(dag) -> str | None:
    timetable = getattr(dag.timetable, "timetable", dag.timetable)  # AssetOrTimeSchedule wraps a cron
    return getattr(timetable, "expression", None)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_dag_ids(dagbag):
    assert set(dagbag.dag_ids) >= DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_policies(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert dag.tags and "astrid" in dag.tags
    assert dag.default_args["retries"] >= 2, "the Astro scaffold's check: retries >= 2 in default_args"
    assert dag.default_args["retry_exponential_backoff"]
    assert dag.default_args["execution_timeout"] > timedelta(0)
    assert dag.default_args["owner"] == "astrid"
    assert dag.catchup is False
    assert dag.max_consecutive_failed_dag_runs >= 1
    assert dag.max_active_runs == 1
    assert dag.doc_md and "###" in dag.doc_md
    assert str(dag.timezone) in ("UTC", "Timezone('UTC')") or dag.timezone.name == "UTC"
    assert dag.deadline, "every DAG carries a Deadline Alert (Airflow 3's SLA)"
    for task in dag.tasks:
        assert task.retries >= 2 or task.task_id == "preflight"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_default_schedules(dagbag, dag_id):
    assert _cron_of(dagbag.dags[dag_id]) == SCHEDULES[dag_id]


def test_deadlines_match_config(dagbag):
    expected = {
        "astrid_realtime_inference": 10,
        "astrid_batch_inference": 120,
        "astrid_model_validation": 180,
        "astrid_model_training": 600,
        "astrid_drift_check": 60,
        "astrid_serving_model": 120,
    }
    for dag_id, minutes in expected.items():
        alerts = dagbag.dags[dag_id].deadline
        alert = alerts[0] if isinstance(alerts, list) else alerts
        assert alert.interval == timedelta(minutes=minutes)
        assert alert.callback.path.endswith("AstridNotifier")
        assert alert.callback.kwargs["kind"] == "deadline"


def test_inference_params(dagbag):
    params = dagbag.dags["astrid_realtime_inference"].params
    assert params["max_observations"] == 10
    assert params["model_version"] == "champion"
    assert params["confidence_threshold"] == 0.5
    batch = dagbag.dags["astrid_batch_inference"].params
    assert batch["max_observations"] == 100
    assert dagbag.dags["astrid_model_validation"].params["dataset_size"] == 50


@pytest.mark.parametrize(
    "conf,ok",
    [
        ({"max_observations": 5}, True),
        ({"max_observations": -1}, False),
        ({"max_observations": 10**9}, False),
        ({"confidence_threshold": 1.5}, False),
        ({"confidence_threshold": -0.1}, False),
        ({"model_version": "7"}, True),
        ({"model_version": "challenger"}, True),
        ({"model_version": "../../etc/passwd"}, False),
        ({"model_version": "latest; rm -rf"}, False),
        # paths: only model directories under ASTRID_INFERENCE_MODEL_ROOTS (default include/models)
        ({"model_version": "/etc"}, False),
        ({"model_version": "/../../etc/passwd"}, False),
        ({"model_version": str(REPO / "include" / "models" / "astrid-unet")}, True),
        ({"model_version": str(REPO / "include" / "models" / ".." / ".." / "etc")}, False),
        ({"model_version": str(REPO / "include" / "models")}, False),  # the root itself
        ({"model_version": str(REPO / "include" / "models" / "a\nb")}, False),
        ({"model_version": "models:/astrid-unet@champion"}, True),
        ({"model_version": "models:/astrid-unet/3"}, True),
        ({"model_version": "models:/other/3"}, False),
        ({"model_version": "0"}, False),
        ({"confidence_threshold": 0}, False),  # the whole frame would be one detection
        ({"confidence_threshold": 1}, False),
        ({"confidence_threshold": 0.3}, True),
    ],
)
def test_trigger_conf_is_validated(dagbag, conf, ok):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["astrid_realtime_inference"].params

    def resolve_all():
        for key, value in conf.items():
            params.get_param(key).resolve(value)

    if ok:
        resolve_all()
    else:
        with pytest.raises(ParamValidationError):
            resolve_all()


def test_env_overrides_schedules(monkeypatch):
    monkeypatch.setenv("ASTRID_INFERENCE_SCHEDULE_REALTIME", "*/5 * * * *")
    monkeypatch.setenv("ASTRID_INFERENCE_SCHEDULE_BATCH", "30 3 * * *")
    monkeypatch.setenv("ASTRID_INFERENCE_MAX_OBSERVATIONS", "7")
    monkeypatch.setenv("ASTRID_INFERENCE_VALIDATION_ENABLED", "false")
    monkeypatch.setenv("ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES", "3")
    realtime = load_dag("astrid_realtime_inference")
    assert _cron_of(realtime) == "*/5 * * * *"
    assert realtime.params["max_observations"] == 7
    assert (
        realtime.deadline[0].interval == timedelta(minutes=3)
        if isinstance(realtime.deadline, list)
        else (realtime.deadline.interval == timedelta(minutes=3))
    )
    assert _cron_of(load_dag("astrid_batch_inference")) == "30 3 * * *"
    validation = load_dag("astrid_model_validation")
    assert _cron_of(validation) is None


def test_invalid_cron_env_is_an_import_error_naming_the_variable(tmp_path):
    """A typo in a deployment's env shows up as a DAG import error that says what to fix."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "print(repr(bag.import_errors))\n"
    )
    import os

    env = {**os.environ, "ASTRID_INFERENCE_SCHEDULE_BATCH": "every night please"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ASTRID_INFERENCE_SCHEDULE_BATCH" in out.stdout
    assert "every night please" in out.stdout


def test_mapped_batch_inference_uses_gpu_pool_and_queue(dagbag):
    dag = dagbag.dags["astrid_batch_inference"]
    infer = dag.get_task("infer")
    assert infer.partial_kwargs.get("pool", getattr(infer, "pool", None)) == "gpu"
    assert infer.partial_kwargs.get("queue", getattr(infer, "queue", None)) == "gpu"
    assert (
        dag.get_task("quality_gate").is_mapped if hasattr(dag.get_task("quality_gate"), "is_mapped") else True
    )


def _asset_names(dag) -> set[str]:
    condition = dag.timetable.asset_condition
    return {a.name for a in getattr(condition, "objects", [condition])}


def test_the_model_loop_is_wired_by_assets(dagbag):
    """validation --promote/rollback--> serving; validation --degraded--> training <--drift-- drift check."""

    def outlets(dag_id: str, task_id: str) -> set[str]:
        return {a.name for a in dagbag.dags[dag_id].get_task(task_id).outlets}

    serving, training = dagbag.dags["astrid_serving_model"], dagbag.dags["astrid_model_training"]
    assert type(serving.timetable).__name__ == type(training.timetable).__name__ == "AssetTriggeredTimetable"
    assert _asset_names(serving) == {"astrid_serving_model"}
    assert (
        outlets("astrid_model_validation", "promote")
        == outlets("astrid_model_validation", "rollback")
        == {"astrid_serving_model"}
    )
    assert outlets("astrid_model_validation", "keep") == set()
    assert _asset_names(training) == {"astrid_model_drift", "astrid_model_degraded"}
    assert outlets("astrid_model_validation", "request_retraining") == {"astrid_model_degraded"}
    assert outlets("astrid_drift_check", "request_retraining") == {"astrid_model_drift"}
    # promotions and rollbacks are announced; the training and reprocessing steps use the GPU queue
    for task_id in ("promote", "rollback"):
        (callback,) = dagbag.dags["astrid_model_validation"].get_task(task_id).on_success_callback
        assert callback.kind == "promotion"
    for dag_id, task_id in (
        ("astrid_model_training", "train"),
        ("astrid_serving_model", "warm_model"),
        ("astrid_serving_model", "reprocess_recent"),
    ):
        task = dagbag.dags[dag_id].get_task(task_id)
        assert (task.pool, task.queue) == ("gpu", "gpu"), (dag_id, task_id)


def test_model_loop_switches_make_the_asset_dags_manual(monkeypatch):
    monkeypatch.setenv("ASTRID_INFERENCE_TRAINING_ENABLED", "false")
    monkeypatch.setenv("ASTRID_INFERENCE_SERVING_ENABLED", "false")
    assert type(load_dag("astrid_model_training").timetable).__name__ == "NullTimetable"
    assert type(load_dag("astrid_serving_model").timetable).__name__ == "NullTimetable"


def test_model_loop_dags_record_no_inference_runs_on_failure(dagbag):
    """Their run history is Airflow's and MLflow's: no RecordFailedRun (it writes inference_runs)."""
    for dag_id in ("astrid_model_training", "astrid_drift_check", "astrid_serving_model"):
        assert not dagbag.dags[dag_id].on_failure_callback, dag_id
    assert dagbag.dags["astrid_realtime_inference"].on_failure_callback
