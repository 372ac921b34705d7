"""A real `airflow api-server` served under a base path (``AIRFLOW__API__BASE_URL=http://host/airflow``):
the AstrID plugin's links resolve and open there (issue 17.7), and the maintenance DAG's
``db_clean`` task in ``api`` mode cleans that server's metadata DB through the plugin (17.4).

One api-server process (no scheduler: nothing here runs a DAG), on a fresh SQLite metadata DB,
the simple auth manager with a known password; everything on 127.0.0.1. The UI's JavaScript is
not run (tests/integration/test_plugin_browser.py drives a browser): links are resolved the way
a browser resolves them, against the ``<base href>`` the UI's index.html really carries.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.integration.standalone import BIN, REPO, free_port

pytestmark = pytest.mark.slow

BASE_PATH = "/airflow/"
PASSWORD = secrets.token_urlsafe(16)  # generated per run: no password committed


@pytest.fixture(scope="module")
def server() -> Iterator[SimpleNamespace]:
    home = Path(tempfile.mkdtemp(prefix="astrid-basepath-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}{BASE_PATH}"
    (home / "passwords.json").write_text(json.dumps({"admin": PASSWORD}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASTRID_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__API__BASE_URL": base.rstrip("/"),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "ASTRID_CATALOG_URL": f"sqlite:///{home}/catalog.db",
            "ASTRID_STORAGE_ROOT": (home / "storage").as_uri(),
        }
    )
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)
    log = open(home / "api-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (home / "api-server.log").read_text()[-3000:]
            try:
                if requests.get(base + "api/v2/monitor/health", timeout=3).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            raise AssertionError("api-server not healthy: " + (home / "api-server.log").read_text()[-3000:])
        token = requests.post(
            base + "auth/token", json={"username": "admin", "password": PASSWORD}, timeout=30
        ).json()["access_token"]
        yield SimpleNamespace(base=base, home=home, token=token, port=port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _auth(server: SimpleNamespace) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def test_the_ui_declares_the_base_path(server) -> None:
    page = requests.get(server.base, timeout=30)
    assert page.status_code == 200
    base_href = re.search(r'<base href="([^"]*)"', page.text).group(1)
    assert base_href == BASE_PATH


def test_plugin_nav_entries_and_icons_open_under_the_base_path(server) -> None:
    plugins = requests.get(server.base + "api/v2/plugins", headers=_auth(server), timeout=30)
    assert plugins.status_code == 200, plugins.text
    astrid = next(p for p in plugins.json()["plugins"] if p["name"] == "astrid")
    page_view = next(v for v in astrid["external_views"] if v.get("url_route") == "astrid")
    for key in ("href", "icon", "icon_dark_mode"):
        url = urljoin(server.base, page_view[key])  # what the browser does under <base href>
        assert urlsplit(url).path.startswith(BASE_PATH + "astrid/"), url
        assert requests.get(url, timeout=30).status_code == 200, url
    # what the page itself loads (relative to its own URL)
    page_url = urljoin(server.base, page_view["href"])
    html = requests.get(page_url, timeout=30).text
    assets = re.findall(r'(?:src|href)="([^"#{]+)"', html)
    assert assets
    for asset in assets:
        url = urljoin(page_url, asset)
        if urlsplit(url).netloc == urlsplit(server.base).netloc:
            assert urlsplit(url).path.startswith(BASE_PATH), url
            assert requests.get(url, timeout=30).status_code == 200, url


def test_the_infer_tasks_links_open_under_the_base_path(server) -> None:
    from astrid.airflow.operators import DetectionCatalogLink, DetectionsLink

    ti_key = SimpleNamespace(
        dag_id="astrid_realtime_inference",
        run_id="manual__2026-12-02T10:00:00+00:00",
        task_id="infer",
        map_index=-1,
    )
    catalog = urljoin(server.base, DetectionCatalogLink().get_link(None, ti_key=ti_key))
    assert urlsplit(catalog).path == BASE_PATH + "astrid/detections"
    assert requests.get(catalog, timeout=30).status_code == 401  # the route is there, behind auth
    answer = requests.get(catalog, headers=_auth(server), timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    detections = urljoin(server.base, DetectionsLink().get_link(None, ti_key=ti_key))
    assert urlsplit(detections).path == BASE_PATH + "astrid/ui"
    assert requests.get(detections, timeout=30).status_code == 200


def _seed(server: SimpleNamespace, tag: str) -> None:
    from airflow.models.log import Log
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(f"sqlite:///{server.home}/airflow.db")
    now = datetime.now(UTC)
    with Session(engine) as session:
        for age in (40, 40, 40, 2, 2):
            row = Log(event=tag)
            row.dttm = now - timedelta(days=age)
            session.add(row)
        session.commit()
    engine.dispose()


def _count(server: SimpleNamespace, where: str) -> int:
    import sqlite3

    with sqlite3.connect(server.home / "airflow.db") as db:
        return db.execute(f"SELECT count(*) FROM log WHERE {where}").fetchone()[0]


def test_db_clean_task_in_api_mode_cleans_through_the_real_api_server(server, monkeypatch) -> None:
    from astrid.airflow.maintenance import DbCleanOperator

    tag = f"astrid-basepath-{int(time.time())}"
    _seed(server, tag)
    assert _count(server, f"event = '{tag}'") == 5
    conn = {"conn_type": "http", "host": server.base.rstrip("/"), "login": "admin", "password": PASSWORD}
    monkeypatch.setenv("AIRFLOW_CONN_ASTRID_AIRFLOW_API", json.dumps(conn))
    monkeypatch.setenv("ASTRONOMER_ENVIRONMENT", "cloud")  # auto → api, as on Astro
    monkeypatch.delenv("MWAA_AIRFLOW_COMPONENT", raising=False)
    result: dict[str, Any] = DbCleanOperator(task_id="db_clean", retention_days=30, mode="auto").execute(
        {"run_id": "manual__basepath"}
    )
    assert result["mode"] == "api"
    assert result["older_rows_before"]["log"] >= 3 and result["older_rows_after"]["log"] == 0
    assert _count(server, f"event = '{tag}'") == 2  # the two recent rows stay
    assert _count(server, "event = 'astrid_db_clean' AND owner = 'admin'") == 1  # audited
