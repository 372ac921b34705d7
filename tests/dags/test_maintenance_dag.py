"""The maintenance DAG runs for real: `airflow db clean` on the test metadata DB + log pruning."""

from __future__ import annotations

import os
import time

from astrid.airflow.demo import run_dag, task_output


def test_maintenance_dag_prunes_old_logs(airflow_db, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    old = logs / "dag_id=x" / "attempt=1.log"
    old.parent.mkdir(parents=True)
    old.write_text("old")
    t = time.time() - 40 * 86400
    os.utime(old, (t, t))
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    dag_run, _ = run_dag("astrid_maintenance")
    assert str(dag_run.state) == "success"
    assert task_output(dag_run, "prune_task_logs")["files_removed"] >= 1
    assert not old.exists()
    assert task_output(dag_run, "db_clean")  # the cut-off timestamp it cleaned before
