"""Hooks: each owns one Airflow connection and hands back a core object.

Like the providers' hooks, they translate a connection into a client and nothing more. Each
falls back to the embedded default (SQLite / local files / local MLflow store under
AIRFLOW_HOME) when its connection is not defined, so `make demo` needs no setup; production
defines the connections (compose env, Astro `airflow_settings.yaml`, MWAA secrets backend).
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

log = logging.getLogger(__name__)


def connection_or_none(conn_id: str) -> Any | None:
    """The connection, or ``None`` when it is not defined anywhere (then defaults apply)."""
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowRuntimeError

    try:
        return BaseHook.get_connection(conn_id)
    except (AirflowNotFoundException, AirflowRuntimeError) as exc:
        if isinstance(exc, AirflowRuntimeError) and "NOT_FOUND" not in str(exc):
            raise
        log.info("connection %r not defined: using the embedded default", conn_id)
        return None


class CatalogHook(BaseHook):
    """The observation catalog, from connection ``astrid_catalog``.

    The connection's extra ``sqlalchemy_url`` (or ``url``) is used as is; a ``postgres``
    connection (host/login/password/schema/port) is turned into a psycopg2 URL. Undefined: the
    SQLite catalog under AIRFLOW_HOME.
    """

    conn_name_attr = "astrid_catalog_conn_id"
    default_conn_name = "astrid_catalog"
    conn_type = "generic"
    hook_name = "AstrID observation catalog"

    def __init__(self, astrid_catalog_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = astrid_catalog_conn_id

    @cached_property
    def url(self) -> str:
        from astrid.paths import default_catalog_url

        conn = connection_or_none(self.conn_id)
        if conn is None:
            return default_catalog_url()
        extra = conn.extra_dejson or {}
        if extra.get("sqlalchemy_url") or extra.get("url"):
            return extra.get("sqlalchemy_url") or extra["url"]
        if conn.conn_type in ("postgres", "postgresql"):
            from urllib.parse import quote

            # quoted: a password with '@', '/' or ':' must not change the host (or land in errors as one)
            auth = (
                f"{quote(conn.login, safe='')}:{quote(conn.password or '', safe='')}@" if conn.login else ""
            )
            return f"postgresql+psycopg2://{auth}{conn.host}:{conn.port or 5432}/{conn.schema or 'astrid'}"
        if conn.host and "://" in conn.host:
            return conn.host
        raise ValueError(
            f"connection {self.conn_id!r} has no SQLAlchemy URL: set extra {{'sqlalchemy_url': ...}} "
            "or use a postgres connection"
        )

    def get_conn(self) -> Any:
        return shared_catalog(self.url)


_CATALOGS: dict[str, Any] = {}


def shared_catalog(url: str) -> Any:
    """One migrated Catalog (engine + pool) per URL per process, shared by hooks and notifiers."""
    from astrid.catalog import Catalog

    if url not in _CATALOGS:
        catalog = Catalog(url)
        catalog.migrate()
        _CATALOGS[url] = catalog
    return _CATALOGS[url]


def dispose_catalogs() -> None:
    """Close every shared catalog's pool and forget them (the next use connects anew)."""
    for catalog in _CATALOGS.values():
        catalog.dispose()
    _CATALOGS.clear()


class ObservationStorageHook(BaseHook):
    """The storage root observations and artifacts live under, from connection ``astrid_storage``.

    The connection's extra ``root`` (or its host) is a ``file://`` or ``s3://`` URI; for s3 the
    extra ``aws_conn_id`` (default ``aws_default``) names the credentials, read by Airflow's
    ObjectStoragePath. Undefined: ``file://$AIRFLOW_HOME/astrid/storage``.
    """

    conn_name_attr = "astrid_storage_conn_id"
    default_conn_name = "astrid_storage"
    conn_type = "generic"
    hook_name = "AstrID observation storage"

    def __init__(self, astrid_storage_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = astrid_storage_conn_id

    def get_conn(self) -> Any:
        from airflow.sdk import ObjectStoragePath

        from astrid.paths import default_storage_uri
        from astrid.storage import StorageRoot

        conn = connection_or_none(self.conn_id)
        extra = (conn.extra_dejson or {}) if conn else {}
        root = extra.get("root") or (conn.host if conn and conn.host else None) or default_storage_uri()
        conn_id = extra.get("aws_conn_id", "aws_default") if root.startswith("s3://") else None
        return StorageRoot(ObjectStoragePath(root, conn_id=conn_id))


class ModelRegistryHook(BaseHook):
    """The MLflow tracking server + model registry, from connection ``mlflow_default``.

    The connection's host (or extra ``tracking_uri``) is the tracking URI; undefined: a SQLite
    store under AIRFLOW_HOME. See :mod:`astrid.registry` for what it does with it.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "generic"
    hook_name = "MLflow model registry"

    def __init__(self, mlflow_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = mlflow_conn_id

    @cached_property
    def tracking_uri(self) -> str:
        from astrid.paths import default_mlflow_uri

        conn = connection_or_none(self.conn_id)
        if conn is None:
            return default_mlflow_uri()
        extra = conn.extra_dejson or {}
        if extra.get("tracking_uri"):
            return extra["tracking_uri"]
        scheme = conn.schema or "http"
        port = f":{conn.port}" if conn.port else ""
        return f"{scheme}://{conn.host}{port}"

    def get_conn(self) -> Any:
        from astrid.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri)


class AirflowApiHook(BaseHook):
    """Airflow's own api-server, from connection ``astrid_airflow_api``: where the maintenance DAG
    asks the AstrID plugin to clean the metadata DB (``ASTRID_INFERENCE_DB_CLEAN=api``).

    ``host`` is the api-server's base URL, path included (``http://airflow-apiserver:8080``,
    ``https://<deployment>.astronomer.run/<id>``); a host without a scheme gets ``http://`` and the
    port. Without a host: the worker's ``[core] execution_api_server_url`` minus ``/execution/``,
    else ``[api] base_url``.
    ``login`` + ``password``: exchanged at ``POST /auth/token`` (simple auth manager, FAB);
    ``password`` alone: sent as the bearer token (an Astro Deployment API token).
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "astrid_airflow_api"
    conn_type = "http"
    hook_name = "Airflow API server (AstrID maintenance)"

    def __init__(self, airflow_api_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = airflow_api_conn_id

    @cached_property
    def connection(self) -> Any | None:
        return connection_or_none(self.conn_id)

    @property
    def base_url(self) -> str:
        conn = self.connection
        host = (conn.host or "").strip() if conn is not None else ""
        if not host:
            from airflow.sdk.configuration import conf

            execution = conf.get("core", "execution_api_server_url", fallback="") or ""
            if execution:
                return execution.rstrip("/").removesuffix("/execution") + "/"
            return (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/") + "/"
        if "://" not in host:
            host = f"http://{host}" + (f":{conn.port}" if conn.port else "")
        return host.rstrip("/") + "/"

    def token(self, timeout: float = 30) -> str | None:
        """A bearer token for the api-server, or ``None`` when the connection has no credentials."""
        import requests

        conn = self.connection
        if conn is None or not conn.password:
            return None
        if not conn.login:
            return conn.password
        answer = requests.post(
            self.base_url + "auth/token",
            json={"username": conn.login, "password": conn.password},
            timeout=timeout,
        )
        answer.raise_for_status()
        return answer.json()["access_token"]
