"""Where things live by default: the embedded, no-servers setup under ``AIRFLOW_HOME``.

Production overrides every one of these through Airflow connections or env variables; these
defaults are what `make demo`, the tests and a laptop use.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def airflow_home() -> Path:
    """``$AIRFLOW_HOME`` (default ``~/airflow``), absolute: SQLite URLs and file URIs need that."""
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser().resolve()


def astrid_home() -> Path:
    """Our corner of AIRFLOW_HOME: catalog DB, storage root, MLflow store."""
    path = airflow_home() / "astrid"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_catalog_url() -> str:
    """``$ASTRID_CATALOG_URL``, else the SQLite catalog ``$AIRFLOW_HOME/astrid/catalog.db``."""
    return os.environ.get("ASTRID_CATALOG_URL", "").strip() or f"sqlite:///{astrid_home() / 'catalog.db'}"


def default_storage_uri() -> str:
    return os.environ.get("ASTRID_STORAGE_ROOT") or (astrid_home() / "storage").as_uri()


def default_mlflow_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{astrid_home() / 'mlflow.db'}"


def default_mlflow_artifacts() -> str:
    return (astrid_home() / "mlartifacts").as_uri()


def shipped_model_path() -> Path:
    """The model trained by `astrid train` and committed in include/models/."""
    return Path(os.environ.get("ASTRID_MODEL_PATH") or REPO_ROOT / "include" / "models" / "astrid-unet")
