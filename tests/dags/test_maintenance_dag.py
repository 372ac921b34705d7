"""The maintenance DAG runs for real: `airflow db clean` on the test metadata DB + log pruning."""

from __future__ import annotations

import os
import time

from astrid.airflow.demo import task_output
from tests.dag_runner import run_dag


def _old_task_log(tmp_path, monkeypatch, dag_id: str):
    """A 40-day-old task log in the log folder the DAG prunes (Airflow's, pointed at tmp_path)."""
    logs = tmp_path / "logs"
    old = logs / f"dag_id={dag_id}" / "attempt=1.log"
    old.parent.mkdir(parents=True)
    old.write_text("old")
    t = time.time() - 40 * 86400
    os.utime(old, (t, t))
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    return old


def test_maintenance_dag_prunes_old_logs(airflow_db, tmp_path, monkeypatch):
    old = _old_task_log(tmp_path, monkeypatch, "x")
    dag_run = run_dag("astrid_maintenance")
    assert str(dag_run.state) == "success"
    assert task_output(dag_run, "prune_task_logs")["files_removed"] >= 1
    assert not old.exists()
    assert task_output(dag_run, "db_clean")  # the cut-off timestamp it cleaned before


def test_maintenance_dag_succeeds_and_prunes_logs_where_it_cannot_clean_the_db(
    airflow_db, tmp_path, monkeypatch
):
    """As on Astro without the api connection: db_clean is skipped (the run does not fail, so the
    DAG never pauses itself), and prune_task_logs still runs."""
    old = _old_task_log(tmp_path, monkeypatch, "y")
    monkeypatch.setenv("ASTRID_INFERENCE_DB_CLEAN", "api")
    monkeypatch.delenv("AIRFLOW_CONN_ASTRID_AIRFLOW_API", raising=False)
    dag_run = run_dag("astrid_maintenance")
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states == {"db_clean": "skipped", "prune_task_logs": "success"}
    assert str(dag_run.state) == "success"
    assert not old.exists()


def test_preflight_over_limit_skips_the_whole_run_and_claims_nothing(airflow_db, tmp_path, monkeypatch):
    """A 1 % memory limit is always exceeded: the run is skipped, nothing is claimed."""
    from astrid.catalog import Catalog
    from astrid.survey import seed_survey

    url = f"sqlite:///{tmp_path}/catalog.db"
    monkeypatch.setenv("ASTRID_CATALOG_URL", url)
    monkeypatch.setenv("ASTRID_STORAGE_ROOT", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("ASTRID_INFERENCE_MAX_MEMORY_PERCENT", "1")
    from astrid.airflow.hooks import dispose_catalogs

    dispose_catalogs()
    seed_survey(1, size=128, seed=77000, catalog_url=url, storage_root=(tmp_path / "storage").as_uri())
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 1})
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states["preflight"] == "skipped"
    assert states["claim"] == "skipped" and states["infer"] == "skipped"
    assert Catalog(url).status_counts()["preprocessed"] == 1
    dispose_catalogs()
