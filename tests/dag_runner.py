"""The shipped DAGs run in this process for tests: the demo's one runner, with test-speed retries.

``run_dag`` parses ``dags/<dag_id>.py`` afresh (so environment set by the test applies), keeps the
production retry *counts* but waits seconds between retries (tests that exercise a retry should not
sleep through production back-off), and runs it with ``dag.test()`` through
:func:`astrid.airflow.demo.run_in_process`. Child-process tests import this module too.
"""

from __future__ import annotations

import contextlib
import os
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
