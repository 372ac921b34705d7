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
DAG_IDS = {"astrid_realtime_inference", "astrid_batch_inference", "astrid_model_validation"}
SCHEDULES = {
    "astrid_realtime_inference": "*/15 * * * *",
    "astrid_batch_inference": "0 2 * * *",
    "astrid_model_validation": "0 4 * * 0",
}


def _cron_of(dag) -> str | None:
    return getattr(dag.timetable, "expression", None)


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
