"""Metadata clean-up in every ASTRID_INFERENCE_DB_CLEAN mode (issue 17.4).

Real components: the session's SQLite Airflow metadata DB (migrated by ``airflow_db``), the real
``airflow`` CLI as a subprocess (cli mode), the AstrID plugin's real FastAPI app with Airflow's
simple auth manager and real JWTs (the api endpoint), and the amazon provider's ``MwaaHook``
boto3 client. What cannot run here is stood in for and said so: MWAA itself (no AWS account, and
moto 5.2 has no MWAA backend) is a local fake of its two endpoints — ``CreateCliToken`` (plain
HTTP, the boto3 client pointed at it) and the web server's ``/aws_mwaa/cli`` over real TLS with a
self-signed certificate — whose CLI endpoint runs the command it is sent with the real
``airflow`` CLI against the real SQLite DB, as MWAA runs it against its own. The api mode
against a real ``airflow api-server`` process is in tests/integration/test_api_server_base_path.py.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from astrid.maintenance import (
    db_clean_args,
    decode_mwaa_cli,
    instead,
    platform_of,
    resolve_db_clean_mode,
)

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------- mode resolution


@pytest.mark.parametrize(
    ("mode", "environ", "expected"),
    [
        ("auto", {}, "cli"),
        ("auto", {"MWAA_AIRFLOW_COMPONENT": "worker"}, "mwaa"),
        ("auto", {"MWAA_AIRFLOW_COMPONENT": "hybrid"}, "mwaa"),
        ("auto", {"ASTRONOMER_ENVIRONMENT": "cloud"}, "api"),
        ("auto", {"ASTRONOMER_ENVIRONMENT": "local"}, "cli"),  # astro dev / compose: the DB is there
        ("api", {"MWAA_AIRFLOW_COMPONENT": "worker"}, "api"),  # an explicit mode always wins
        ("off", {}, "off"),
        ("external", {"ASTRONOMER_ENVIRONMENT": "cloud"}, "external"),
    ],
)
def test_auto_picks_the_platforms_mechanism(mode: str, environ: dict, expected: str) -> None:
    assert resolve_db_clean_mode(mode, environ) == expected


def test_unknown_mode_and_setting_are_refused() -> None:
    from astrid.config import InferenceSchedulingConfig
    from astrid.errors import ConfigError

    with pytest.raises(ValueError, match="unknown db clean mode"):
        resolve_db_clean_mode("sometimes", {})
    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_DB_CLEAN='sometimes' is not one of auto"):
        InferenceSchedulingConfig.from_env({"ASTRID_INFERENCE_DB_CLEAN": "sometimes"})
    with pytest.raises(ConfigError, match="not an MWAA environment name"):
        InferenceSchedulingConfig.from_env({"ASTRID_INFERENCE_MWAA_ENVIRONMENT": "my env; rm"})
    assert InferenceSchedulingConfig.from_env({"ASTRID_INFERENCE_MWAA_ENVIRONMENT": "astrid-prod_1"})


def test_each_platform_is_told_what_to_run_instead() -> None:
    assert platform_of({"MWAA_AIRFLOW_COMPONENT": "scheduler"}) == "mwaa"
    assert platform_of({"ASTRONOMER_ENVIRONMENT": "cloud"}) == "astro"
    assert platform_of({}) == "other"
    assert "airflow:CreateCliToken" in instead("mwaa")
    assert "astrid_airflow_api" in instead("astro")
    assert "docker compose --profile cli run --rm airflow-cli" in instead("other")


def test_the_cli_command_and_mwaas_answer() -> None:
    before = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert db_clean_args(before) == [
        "db",
        "clean",
        "--clean-before-timestamp",
        "2026-01-02T03:04:05+00:00",
        "--skip-archive",
        "--yes",
    ]
    assert db_clean_args(before, dry_run=True)[-1] == "--dry-run"
    payload = {"stdout": base64.b64encode(b"done\n").decode(), "stderr": ""}
    assert decode_mwaa_cli(payload) == ("done\n", "")


# ------------------------------------------------------------------------------- helpers


def seed_log_rows(old: int, recent: int) -> str:
    """Rows in Airflow's ``log`` table (the audit log, one of the tables `db clean` covers):
    ``old`` of them 40 days old, ``recent`` 2 days old, tagged with a fresh event name."""
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    tag = f"astrid-test-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    with create_session() as session:
        for age_days, count in ((40, old), (2, recent)):
            for _ in range(count):
                row = Log(event=tag)
                row.dttm = now - timedelta(days=age_days)
                session.add(row)
    return tag


def log_rows(tag: str) -> dict[str, int]:
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import select

    cutoff = datetime.now(UTC) - timedelta(days=30)
    with create_session() as session:
        stamps = session.scalars(select(Log.dttm).where(Log.event == tag)).all()
    return {"old": sum(s < cutoff for s in stamps), "recent": sum(s >= cutoff for s in stamps)}


def operator(**kwargs: Any) -> Any:
    from astrid.airflow.maintenance import DbCleanOperator

    return DbCleanOperator(task_id="db_clean", retention_days=30, **kwargs)


CONTEXT = {"run_id": "manual__test"}
TOKEN = uuid.uuid4().hex  # the API token the fake server expects: generated per run


def skipped(op: Any) -> str:
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException) as caught:
        op.execute(CONTEXT)
    return str(caught.value)


# ------------------------------------------------------------------------------- off / external


@pytest.mark.parametrize("mode", ["off", "external"])
def test_off_and_external_skip_naming_what_to_run(mode: str, monkeypatch) -> None:
    monkeypatch.delenv("MWAA_AIRFLOW_COMPONENT", raising=False)
    monkeypatch.setenv("ASTRONOMER_ENVIRONMENT", "cloud")
    message = skipped(operator(mode=mode))
    assert f"ASTRID_INFERENCE_DB_CLEAN={mode}" in message and "astrid_airflow_api" in message


# ------------------------------------------------------------------------------- cli


def test_cli_mode_cleans_the_real_metadata_db(airflow_db, monkeypatch) -> None:
    monkeypatch.delenv("MWAA_AIRFLOW_COMPONENT", raising=False)
    monkeypatch.delenv("ASTRONOMER_ENVIRONMENT", raising=False)
    tag = seed_log_rows(old=4, recent=3)
    assert log_rows(tag) == {"old": 4, "recent": 3}
    result = operator(mode="auto").execute(CONTEXT)
    assert result["mode"] == "cli"
    assert log_rows(tag) == {"old": 0, "recent": 3}


def test_cli_mode_without_a_reachable_db_skips(airflow_db, monkeypatch) -> None:
    """A worker without the metadata DB (Airflow 3 on Astro/MWAA): `airflow db check` fails, the
    task is skipped and nothing is deleted. The unreachable DB is a Postgres URL on a closed port."""
    from tests.integration.standalone import free_port

    tag = seed_log_rows(old=2, recent=1)
    monkeypatch.setenv(
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/airflow",
    )
    message = skipped(operator(mode="cli"))
    assert "cannot reach Airflow's metadata DB" in message and "airflow-cli" in message
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    assert log_rows(tag) == {"old": 2, "recent": 1}


@pytest.mark.postgres
def test_cli_mode_on_a_postgres_metadata_db(tmp_path, monkeypatch) -> None:
    """The production shape (compose, Helm): a Postgres metadata DB that the worker can reach.
    A throw-away database on the local PostgreSQL, migrated by the real `airflow db migrate`."""
    import sqlalchemy as sa

    from tests.catalog_helpers import postgres_unavailable, temporary_postgres_database

    if reason := postgres_unavailable():
        pytest.skip(reason)
    with temporary_postgres_database("astrid_dbclean") as url:
        airflow_url = (
            sa.make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        )
        monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", airflow_url)
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], check=True, capture_output=True, timeout=600)
        engine = sa.create_engine(airflow_url)
        now = datetime.now(UTC)
        with engine.begin() as db:
            for age in (40, 40, 40, 2):
                db.execute(
                    sa.text("INSERT INTO log (dttm, event) VALUES (:dttm, 'astrid-pg')"),
                    {"dttm": now - timedelta(days=age)},
                )
        result = operator(mode="cli").execute(CONTEXT)
        with engine.connect() as db:
            ages = db.execute(sa.text("SELECT dttm FROM log WHERE event = 'astrid-pg'")).scalars().all()
        engine.dispose()
    assert result["mode"] == "cli"
    assert len(ages) == 1 and ages[0] > now - timedelta(days=3)


def test_compose_cli_command_cleans_with_the_configured_retention(airflow_db, monkeypatch) -> None:
    """`python -m astrid.maintenance db-clean`, what the compose airflow-cli service runs."""
    tag = seed_log_rows(old=2, recent=2)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ASTRID_INFERENCE_LOG_RETENTION_DAYS": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "astrid.maintenance", "db-clean", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("airflow db clean --clean-before-timestamp ") and "--dry-run" in done.stdout
    assert log_rows(tag) == {"old": 2, "recent": 2}  # a dry run
    done = subprocess.run(
        [sys.executable, "-m", "astrid.maintenance", "db-clean"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert log_rows(tag) == {"old": 0, "recent": 2}  # 3 days' retention: the 2-day-old rows stay


# ------------------------------------------------------------------------------- the api endpoint


@pytest.fixture(scope="module")
def tokens(airflow_db) -> dict[str, str]:
    """Real JWTs of Airflow's simple auth manager, initialised as the api-server does."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    return {
        role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))
        for role in ("admin", "op", "user", "viewer")
    }


@pytest.fixture
def client(airflow_db) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    with TestClient(api.create_app()) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _days_ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def test_endpoint_needs_authentication_and_the_op_role(client, tokens) -> None:
    body = {"clean_before_timestamp": _days_ago(30)}
    assert client.post("/maintenance/db-clean", json=body).status_code == 401
    assert client.post("/maintenance/db-clean", json=body, headers=_bearer("not.a.jwt")).status_code in (
        401,
        403,
    )
    for role in ("viewer", "user"):  # may delete runs (user) but not change Airflow-wide state
        r = client.post("/maintenance/db-clean", json=body, headers=_bearer(tokens[role]))
        assert r.status_code == 403, (role, r.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"clean_before_timestamp": _days_ago(0.5)}, "clean_before_timestamp"),  # less than a day old
        ({"clean_before_timestamp": "2026-01-01T00:00:00"}, "clean_before_timestamp"),  # no timezone
        ({"clean_before_timestamp": _days_ago(30), "tables": ["dag_run", "users"]}, "tables"),
        ({"clean_before_timestamp": _days_ago(30), "archive": True}, "archive"),
    ],
)
def test_endpoint_refuses_unsafe_requests(client, tokens, body: dict, field: str) -> None:
    r = client.post("/maintenance/db-clean", json=body, headers=_bearer(tokens["admin"]))
    assert r.status_code == 422, r.text
    assert field in r.text


def test_endpoint_runs_airflows_run_cleanup_on_the_metadata_db(client, tokens) -> None:
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    tag = seed_log_rows(old=5, recent=2)
    body = {"clean_before_timestamp": _days_ago(30), "tables": ["log"], "dry_run": True}
    dry = client.post("/maintenance/db-clean", json=body, headers=_bearer(tokens["op"]))
    assert dry.status_code == 200, dry.text
    assert dry.json()["older_rows_before"]["log"] >= 5
    assert dry.json()["older_rows_after"] == dry.json()["older_rows_before"]  # nothing deleted
    assert log_rows(tag) == {"old": 5, "recent": 2}

    body["dry_run"] = False
    r = client.post("/maintenance/db-clean", json=body, headers=_bearer(tokens["op"]))
    assert r.status_code == 200, r.text
    assert r.json()["older_rows_after"] == {"log": 0}
    assert log_rows(tag) == {"old": 0, "recent": 2}
    with create_session() as session:  # Airflow's audit log records who cleaned
        audit = session.scalar(select(func.count()).select_from(Log).where(Log.event == "astrid_db_clean"))
    assert audit >= 1


def test_endpoint_is_in_the_openapi_schema(client) -> None:
    assert "/maintenance/db-clean" in client.get("/openapi.json").json()["paths"]


def test_api_mode_without_a_connection_skips(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ASTRID_AIRFLOW_API", raising=False)
    message = skipped(operator(mode="api"))
    assert "'astrid_airflow_api'" in message and "docs/deploy.md" in message


def test_api_mode_against_an_api_server_without_the_plugin_skips(monkeypatch) -> None:
    """A server answering 404 (an api-server without the AstrID plugin) is a skip, not a failure."""
    with FakeHttp(lambda handler: handler.reply(404, b'{"detail": "Not Found"}')) as server:
        conn = {"conn_type": "http", "host": server.url, "password": TOKEN}
        monkeypatch.setenv("AIRFLOW_CONN_ASTRID_AIRFLOW_API", json.dumps(conn))
        message = skipped(operator(mode="api"))
    assert "has no AstrID maintenance endpoint" in message
    assert server.requests[0]["path"] == "/astrid/maintenance/db-clean"
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"


# ------------------------------------------------------------------------------- mwaa


class FakeHttp:
    """A local HTTP(S) server whose handler is ``respond(handler)``; requests are recorded."""

    def __init__(self, respond: Any, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length)
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": self.body})
                respond(self)

            def reply(self, code: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{scheme}://{self.host}"

    def __enter__(self) -> FakeHttp:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), trusted by requests via REQUESTS_CA_BUNDLE."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def fake_mwaa(airflow_db, certificate, monkeypatch) -> Iterator[SimpleNamespace]:
    """MWAA's two endpoints, faked (MWAA cannot run here): CreateCliToken on the control plane,
    and the web server's CLI endpoint, which runs the posted command with the real `airflow` CLI
    on the real SQLite metadata DB and answers as MWAA documents (base64 stdout/stderr)."""
    token = f"cli-token-{uuid.uuid4().hex}"
    state = SimpleNamespace(environments={"astrid-test"}, token=token)

    def cli(handler: Any) -> None:
        if handler.headers.get("Authorization") != f"Bearer {token}":
            return handler.reply(403, b'{"message": "Forbidden"}')
        argv = shlex.split(handler.body.decode())
        done = subprocess.run([str(BIN / "airflow"), *argv], capture_output=True, timeout=300)
        payload = {
            "stdout": base64.b64encode(done.stdout).decode(),
            "stderr": base64.b64encode(done.stderr).decode(),
        }
        handler.reply(200, json.dumps(payload).encode())

    with FakeHttp(cli, tls=certificate) as web:

        def control(handler: Any) -> None:
            name = handler.path.rsplit("/", 1)[-1]
            if not handler.path.startswith("/clitoken/") or name not in state.environments:
                body = {"message": f"Environment {name} not found"}
                handler.send_response(404)
                handler.send_header("x-amzn-ErrorType", "ResourceNotFoundException")
                handler.send_header("Content-Type", "application/json")
                data = json.dumps(body).encode()
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
                return
            handler.reply(200, json.dumps({"CliToken": token, "WebServerHostname": web.host}).encode())

        with FakeHttp(control) as api:
            aws = {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {
                    "endpoint_url": api.url,
                    "region_name": "us-east-1",
                    # MWAA's CreateCliToken goes to env.<endpoint>: not a host a local fake has
                    "config_kwargs": {"inject_host_prefix": False},
                },
            }
            monkeypatch.setenv("AIRFLOW_CONN_AWS_MWAA_FAKE", json.dumps(aws))
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
            state.api, state.web = api, web
            yield state


def test_mwaa_mode_cleans_through_the_cli_endpoint(fake_mwaa, monkeypatch) -> None:
    monkeypatch.setenv("MWAA_AIRFLOW_COMPONENT", "worker")  # auto → mwaa, as on an MWAA worker
    tag = seed_log_rows(old=3, recent=2)
    result = operator(mode="auto", mwaa_environment="astrid-test", aws_conn_id="aws_mwaa_fake").execute(
        CONTEXT
    )
    assert result["mode"] == "mwaa"
    assert log_rows(tag) == {"old": 0, "recent": 2}
    token_call, cli_call = fake_mwaa.api.requests[-1], fake_mwaa.web.requests[-1]
    assert token_call["path"] == "/clitoken/astrid-test"
    assert token_call["headers"]["Authorization"].startswith("AWS4-HMAC-SHA256")  # a signed AWS call
    assert cli_call["headers"]["Content-Type"] == "text/plain"
    assert cli_call["body"].decode().startswith("db clean --clean-before-timestamp ")


def test_mwaa_mode_skips_without_an_environment_or_a_token(fake_mwaa) -> None:
    assert "ASTRID_INFERENCE_MWAA_ENVIRONMENT is empty" in skipped(
        operator(mode="mwaa", aws_conn_id="aws_mwaa_fake")
    )
    message = skipped(operator(mode="mwaa", mwaa_environment="elsewhere", aws_conn_id="aws_mwaa_fake"))
    assert "no MWAA CLI token for environment 'elsewhere'" in message and "airflow:CreateCliToken" in message


def test_mwaa_mode_fails_when_the_command_fails(fake_mwaa, monkeypatch) -> None:
    """A clean-up that ran and broke is a failure (the endpoint answers 200 either way)."""
    import astrid.maintenance as core

    monkeypatch.setattr(
        core, "db_clean_args", lambda before, dry_run=False: ["db", "clean", "--no-such-flag"]
    )
    with pytest.raises(RuntimeError, match="airflow db clean failed on MWAA"):
        operator(mode="mwaa", mwaa_environment="astrid-test", aws_conn_id="aws_mwaa_fake").execute(CONTEXT)
