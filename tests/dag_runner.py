"""The shipped DAGs run in this process for tests: the demo's one runner, with test-speed retries.

``run_dag`` parses ``dags/<dag_id>.py`` afresh (so environment set by the test applies), keeps the
production retry *counts* but waits seconds between retries (tests that exercise a retry should not
sleep through production back-off), and runs it with ``dag.test()`` through
:func:`astrid.airflow.demo.run_in_process`. Child-process tests import this module too.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from astrid.airflow.demo import load_dag, run_in_process


def run_dag(
    dag_id: str,
    conf: dict[str, Any] | None = None,
    *,
    retries: int | None = None,
    retry_seconds: float = 1,
    logical_date: Any = None,
) -> Any:
    """dag.test() of the shipped DAG with second-scale retry back-off; returns the DAG run."""
    dag = load_dag(dag_id)
    for task in dag.tasks:
        task.retry_delay = timedelta(seconds=retry_seconds)
        task.max_retry_delay = timedelta(seconds=2 * retry_seconds)
        if retries is not None:
            task.retries = retries
    dag_run, _ = run_in_process(dag, conf, logical_date=logical_date)
    return dag_run


def task_states(dag_run: Any) -> dict[str, tuple[str, int]]:
    """``task_id`` (``task_id[i]`` for mapped ones) → (state, try number)."""
    return {
        (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): (str(ti.state), ti.try_number)
        for ti in dag_run.get_task_instances()
    }


@contextlib.contextmanager
def inprocess_env(root: Path, **extra: str) -> Iterator[dict[str, str]]:
    """Point this process's hooks at a private catalog/storage/MLflow under ``root`` (restored after)."""
    from astrid.airflow.hooks import dispose_catalogs

    values = {
        "ASTRID_CATALOG_URL": f"sqlite:///{root}/catalog.db",
        "ASTRID_STORAGE_ROOT": (root / "storage").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "ASTRID_INFERENCE_PERFORMANCE_TRACKING": "false",
        # no triggerer listens to an in-process run: publish nothing on the shared Redis
        "ASTRID_INFERENCE_EVENTS_ENABLED": "false",
        **extra,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    dispose_catalogs()
    try:
        yield values
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        dispose_catalogs()


def run_child(script: str, root: Path, env: dict[str, str], *, marker: str, timeout: float = 900) -> Any:
    """Run ``script`` in a fresh Python process against a private Airflow home, catalog, storage
    root and MLflow store under ``root`` (``env`` adds to or overrides them; no ASTRID_/AIRFLOW
    variable of this process leaks in), after ``airflow db migrate``. Returns the JSON the script
    printed on its line starting with ``marker``.

    A child process, because Airflow's Stats client and connections are configured from the
    environment when first used: the SMTP/webhook connections and StatsD host of a test must be
    in place before that."""
    repo = Path(__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASTRID_"))}
    base.update(
        {
            "REPO": str(repo),
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
            "ASTRID_CATALOG_URL": f"sqlite:///{root}/catalog.db",
            "ASTRID_STORAGE_ROOT": (root / "storage").as_uri(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "ASTRID_INFERENCE_ALERT_EMAIL": "oncall@example.org",
            **env,
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=base, check=True, capture_output=True
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=base, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith(marker))
    return json.loads(line.removeprefix(marker))
