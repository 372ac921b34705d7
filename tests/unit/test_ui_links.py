"""Links from Airflow to what AstrID found (issue 17.7): the infer task's extra links, the MLflow
run link, and every href/src/fetch of the AstrID page relative, so a base path works."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "plugins" / "astrid" / "airflow" / "static"
RUN_ID = "manual__2026-12-02T10:00:00+00:00"


@pytest.mark.parametrize("base", ["http://host:8080/", "https://example.org/airflow/"])
def test_extra_links_are_relative_to_airflows_base_url(base):
    from astrid.airflow.operators import DetectionCatalogLink, DetectionsLink, UNetInferenceOperator

    ti_key = SimpleNamespace(dag_id="astrid_realtime_inference", run_id=RUN_ID, task_id="infer", map_index=-1)
    page = DetectionsLink().get_link(None, ti_key=ti_key)
    catalog = DetectionCatalogLink().get_link(None, ti_key=ti_key)
    for link in (page, catalog):
        assert not link.startswith(("/", "http", "s3:", "file:")), link
    # what the browser opens from the Airflow UI, whose <base href> is Airflow's base path
    opened = urlsplit(urljoin(base, page))
    assert opened.path == urlsplit(base).path + "astrid/ui"
    assert parse_qs(opened.fragment) == {"run": [f"astrid_realtime_inference:{RUN_ID}"]}
    csv = urlsplit(urljoin(base, catalog))
    assert csv.path == urlsplit(base).path + "astrid/detections"
    assert parse_qs(csv.query) == {
        "run_id": [f"astrid_realtime_inference:{RUN_ID}"],
        "format": ["csv"],
        "limit": ["10000"],
    }
    assert {type(link).__name__ for link in UNetInferenceOperator.operator_extra_links} >= {
        "DetectionsLink",
        "DetectionCatalogLink",
        "MLflowRunLink",
    }


def test_mlflow_run_link_prefers_the_configured_ui_url(tmp_path, monkeypatch):
    from astrid.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db")
    with registry.run("links", "r") as run:
        run_id = run.info.run_id
    experiment = registry.client.get_run(run_id).info.experiment_id
    monkeypatch.delenv("ASTRID_MLFLOW_UI_URL", raising=False)
    assert registry.run_url(run_id) == f"http://localhost:5000/#/experiments/{experiment}/runs/{run_id}"
    # the compose stack's tracking URI is a container name a browser cannot reach; the URL is
    # chosen from the attribute (an HTTP tracking server is not started for this)
    registry.tracking_uri = "http://mlflow:5000"
    assert registry.run_url(run_id).startswith("http://mlflow:5000/#/experiments/")
    monkeypatch.setenv("ASTRID_MLFLOW_UI_URL", "https://mlflow.example.org/")
    assert registry.run_url(run_id) == f"https://mlflow.example.org/#/experiments/{experiment}/runs/{run_id}"
    monkeypatch.setenv("ASTRID_MLFLOW_UI_URL", "javascript:alert(1)")  # not a link the UI may show
    assert registry.run_url(run_id).startswith("http://mlflow:5000/")


def test_page_and_plugin_use_no_absolute_paths():
    """An absolute /astrid/... breaks when Airflow is served under a path: everything is relative."""
    from astrid.airflow.plugin import AstridPlugin

    html = (STATIC / "index.html").read_text()
    script = re.sub(r"^\s*//.*$", "", (STATIC / "app.js").read_text(), flags=re.M)  # code, not comments
    attributes = re.findall(r'(?:href|src)="([^"{]*)"', html)
    assert attributes and not [a for a in attributes if a.startswith("/")], attributes
    # URLs the script builds: string literals or templates starting with '/' or naming /astrid
    absolute = re.findall(r"""[`'"](/[A-Za-z][^`'"]*)[`'"]""", script)
    assert absolute == [], absolute
    assert "/astrid" not in script
    view = AstridPlugin.external_views[0]
    for key in ("href", "icon", "icon_dark_mode"):
        assert not view[key].startswith("/") and view[key].startswith("astrid/"), view


@pytest.mark.slow
def test_the_infer_tasks_mlflow_link_opens_the_configured_ui(airflow_db, tmp_path, monkeypatch):
    """A real realtime run (dag.test(), one synthetic observation, the shipped U-Net on CPU, a real
    MLflow store): the "MLflow run" link Airflow stores for the infer task — Airflow 3 keeps a
    task's extra links as XComs pushed when the task finishes, on the worker — is under
    ASTRID_MLFLOW_UI_URL, not under the tracking URI. Compose passes that variable to every
    Airflow service (tests/unit/test_deploy_files.py)."""
    from astrid.airflow.operators import MLflowRunLink
    from astrid.survey import seed_survey
    from tests.dag_runner import inprocess_env, run_dag

    with inprocess_env(
        tmp_path,
        ASTRID_INFERENCE_PERFORMANCE_TRACKING="true",
        ASTRID_MLFLOW_UI_URL="https://mlflow.example.org/ui",
    ) as env:
        seed_survey(
            1,
            size=128,
            seed=77100,
            catalog_url=env["ASTRID_CATALOG_URL"],
            storage_root=env["ASTRID_STORAGE_ROOT"],
        )
        dag_run = run_dag("astrid_realtime_inference", {"max_observations": 1})
        assert str(dag_run.state) == "success"
        infer = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "infer")
        link = infer.xcom_pull(task_ids="infer", key=MLflowRunLink().xcom_key)
        run_id = infer.xcom_pull(task_ids="infer")["mlflow_run_id"]
    assert link.startswith("https://mlflow.example.org/ui/#/experiments/"), link
    assert link.endswith(f"/runs/{run_id}")
    assert env["MLFLOW_TRACKING_URI"] not in link
