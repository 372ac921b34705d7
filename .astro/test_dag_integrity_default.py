"""DAG import check run by `astro dev parse` and by the parse step of `astro deploy`.

The Astro CLI looks for this file by name. Without it the CLI prints "run astro dev init" and skips
the check silently. The scaffold the CLI writes targets Airflow 2 (``DagBag(include_examples=False)``),
which Airflow 3.3 refuses (example DAGs are a separate bundle now), so this is our own version
for Airflow 3.3. Our DAG files need no connections, variables or secrets at parse time, so nothing
is mocked here. The CLI runs it with pytest inside the project image (cwd /usr/local/airflow).
Locally, from the repository root:

    AIRFLOW_HOME=$(mktemp -d) PYTHONPATH=plugins .venv/bin/python -m pytest .astro/test_dag_integrity_default.py

tests/unit/test_deploy_files.py runs this file the same way, once on dags/ as they are (it must
pass) and once on a copy with a broken DAG file added (it must fail).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The project's dags/ folder sits next to .astro/ (in the image: /usr/local/airflow/dags).
# AIRFLOW__CORE__DAGS_FOLDER points the check somewhere else.
DAGS_FOLDER = Path(
    os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or Path(__file__).resolve().parents[1] / "dags"
)


def dag_files() -> list[str]:
    return sorted(p.name for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag  # Airflow 3: no include_examples argument

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_dags_folder_has_dag_files() -> None:
    assert dag_files(), f"no DAG files in {DAGS_FOLDER}"


@pytest.mark.parametrize("file_name", dag_files())
def test_file_imports(dagbag, file_name: str) -> None:
    """Each DAG file imports without error and defines at least one DAG."""
    errors = {Path(path).name: message for path, message in dagbag.import_errors.items()}
    assert file_name not in errors, f"{file_name} failed to import:\n{errors[file_name]}"
    defined = [dag_id for dag_id, dag in dagbag.dags.items() if Path(dag.fileloc).name == file_name]
    assert defined, f"{file_name} imports but defines no DAG"
