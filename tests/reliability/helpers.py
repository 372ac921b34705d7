"""Shared plumbing for the reliability tests: child processes running real DAGs, in-process
environments, and small observation builders.

Nothing here fakes the system under test. Faults are caused for real (a process SIGKILLed, a
database refusing connections, a port nobody listens on, a corrupt file on disk); the few
simulations (CUDA out-of-memory) live in the tests that need them, which say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
SIZE = 256  # frames stay small: two shared CPU cores

# Prepended to every child script: our plugins on sys.path, quick retries, a RESULT= line.
CHILD_PRELUDE = r"""
import json, os, sys, time
sys.path[:0] = [os.path.join(os.environ["REPO"], "plugins"), os.environ["REPO"]]
from tests.dag_runner import run_dag, task_states
SPEC = json.loads(os.environ.get("SPEC", "{}"))


def result(**values):
    print("RESULT=" + json.dumps(values, default=str), flush=True)


def run(dag_id, conf=None, **options):
    dag_run = run_dag(dag_id, conf, **options)
    return dag_run, task_states(dag_run)
"""


def base_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a child Airflow process with its own AIRFLOW_HOME under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASTRID_", "MLFLOW_"))}
    env.update(
        {
            "REPO": str(REPO),
            "AIRFLOW_HOME": str(home / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "GX_ANALYTICS_ENABLED": "False",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "ASTRID_CATALOG_URL": f"sqlite:///{home}/catalog.db",
            "ASTRID_STORAGE_ROOT": (home / "storage").as_uri(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
            "ASTRID_INFERENCE_PERFORMANCE_TRACKING": "false",
        }
    )
    env.update(extra or {})
    return env


def prepare_home(home: Path, template: Path) -> None:
    """Give ``home`` a migrated Airflow metadata DB (a copy of the session's template)."""
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "airflow.db", home / "airflow" / "airflow.db")


def migrate_template(directory: Path) -> Path:
    """``airflow db migrate`` once into ``directory`` (copied into each child's AIRFLOW_HOME)."""
    env = base_env(directory)
    env["AIRFLOW_HOME"] = str(directory)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return directory


def run_child(
    script: str, env: dict[str, str], spec: dict[str, Any] | None = None, timeout: float = 420
) -> tuple[dict[str, Any], str]:
    """Run ``CHILD_PRELUDE + script`` in a fresh interpreter; returns (RESULT dict, all output).

    The child must print one ``RESULT=`` line; a non-zero exit fails the test with its output.
    """
    env = {**env, "SPEC": json.dumps(spec or {})}
    done = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + "\n" + done.stderr
    assert done.returncode == 0, output[-6000:]
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT=")]
    assert lines, output[-6000:]
    return json.loads(lines[-1].removeprefix("RESULT=")), output


def detection_set(rows: list[dict[str, Any]], places: int = 3) -> list[tuple]:
    """Detections as comparable tuples (observation, model, x, y, score), rounded."""
    return sorted(
        (
            r["observation_id"],
            r["model_version"],
            round(r["x"], places),
            round(r["y"], places),
            round(r["score"], places),
        )
        for r in rows
    )


def new_observation(name: str, science: str, reference: str, difference: str | None = None, **kw: Any) -> Any:
    from astrid.catalog import NewObservation

    fields = {
        "survey": "SYNTH",
        "instrument": "synthetic",
        "filter": "r",
        "mjd": 61000.0,
        "exptime": 30.0,
        "ra_center": 150.0,
        "dec_center": 2.0,
    }
    fields.update(kw)
    return NewObservation(
        name=name, science_uri=science, reference_uri=reference, difference_uri=difference, **fields
    )


class AstridLogCapture:
    """Collect the JSON events of the ``astrid`` logger (what lands in the task log) in this process."""

    def __init__(self) -> None:
        import logging

        self.events: list[dict[str, Any]] = []
        capture = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                with contextlib.suppress(ValueError, TypeError):
                    capture.events.append(json.loads(record.getMessage()))

        self._handler = _Handler(level=logging.DEBUG)
        self._logger = logging.getLogger("astrid")

    def __enter__(self) -> AstridLogCapture:
        import logging

        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]
