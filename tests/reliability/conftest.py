"""Fixtures for the reliability tests (see docs/reliability.md for what each test shows)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.helpers import migrate_template


@pytest.fixture(scope="session")
def airflow_template(tmp_path_factory) -> Path:
    """A migrated Airflow metadata DB, copied into each child process's private AIRFLOW_HOME."""
    return migrate_template(tmp_path_factory.mktemp("reliability-airflow-template"))


@pytest.fixture(scope="module")
def pg_available() -> None:
    from tests.catalog_helpers import postgres_unavailable

    reason = postgres_unavailable()
    if reason:
        pytest.skip(f"needs the local PostgreSQL at 127.0.0.1:5432: {reason}")


# ---------------------------------------------------------------------------------------------
# One private `airflow standalone` for the package (faults: SIGKILL + clear; security: log scan)


def pytest_collection_modifyitems(config, items):
    """Never two `airflow standalone` at once. Ours is package-scoped (stopped when our last
    standalone test is done); the shared one in tests/integration lives until the session ends.
    So our standalone tests run just before the first test that uses any other standalone."""
    ours = [i for i in items if i.get_closest_marker("standalone") and "tests/reliability/" in i.nodeid]
    others = [
        i
        for i in items
        if i not in ours
        and (i.get_closest_marker("standalone") or "standalone" in getattr(i, "fixturenames", ()))
    ]
    if not ours or not others:
        return
    rest = [i for i in items if i not in ours]
    at = rest.index(others[0])
    if items.index(ours[0]) < items.index(others[0]):
        return
    items[:] = rest[:at] + ours + rest[at:]


class AuthSmtpSink:
    """aiosmtpd on 127.0.0.1 that *requires* AUTH with one login/password (no TLS, loopback only)."""

    def __init__(self, login: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message
        from aiosmtpd.smtp import AuthResult, LoginPassword

        from tests.integration.standalone import free_port

        sink = self
        self.messages: list = []
        self.auth: list[bool] = []

        class Keep(Message):
            def handle_message(self, message) -> None:
                sink.messages.append(message)

        def authenticator(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                login.encode(),
                password.encode(),
            )
            sink.auth.append(ok)
            return AuthResult(success=ok)

        self.login, self.password, self.port = login, password, free_port()
        # AUTH without TLS (aiosmtpd warns it "can lead to security vulnerabilities"): loopback only
        self.controller = Controller(
            Keep(),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
        self.controller.start()

    def connection_env(self) -> dict[str, str]:
        import json

        conn = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "login": self.login,
            "password": self.password,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "astrid@localhost"},
        }
        return {"AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(conn)}

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture(scope="package")
def secret_standalone(tmp_path_factory):
    """`airflow standalone` whose secrets all come from connections in the environment: the
    catalog is a PostgreSQL connection with a password (with '/', '@' and ':' in it), SMTP needs
    AUTH with a password, an AWS connection carries a secret key. The SIGKILL injector
    (tests/reliability/inject/sitecustomize.py) is on its PYTHONPATH, armed for one kill."""
    import json
    import secrets

    from astrid.catalog import Catalog
    from tests.catalog_helpers import postgres_unavailable, temporary_postgres_database
    from tests.integration.standalone import cleanup, make_standalone
    from tests.reliability.helpers import PLUGINS

    reason = postgres_unavailable()
    if reason:
        pytest.skip(f"needs the local PostgreSQL at 127.0.0.1:5432: {reason}")
    token = secrets.token_hex(6)
    passwords = {
        "postgres": f"s3cr3t-pg-{token}",
        "smtp": f"s3cr3t-smtp-{token}",
        "aws": f"s3cr3t-aws-{token}",
    }
    with temporary_postgres_database(prefix="astrid_secrets") as admin_url:
        import sqlalchemy as sa

        Catalog(admin_url).migrate()
        sink = AuthSmtpSink("astrid-alerts", passwords["smtp"])
        marker = tmp_path_factory.mktemp("sigkill") / "killed"
        catalog_conn = {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": "postgres",
            "password": passwords["postgres"] + "/@:x",
            "schema": sa.make_url(admin_url).database,
        }
        aws_conn = {"conn_type": "aws", "login": "AKIAIOSFODNN7EXAMPLE", "password": passwords["aws"]}
        instance = make_standalone(
            {
                **sink.connection_env(),
                "AIRFLOW_CONN_ASTRID_CATALOG": json.dumps(catalog_conn),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws_conn),
                "ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES": "0.1",  # the SLA email goes through SMTP AUTH
                "ASTRID_INFERENCE_REALTIME_ENABLED": "false",
                "ASTRID_INFERENCE_BATCH_ENABLED": "false",
                "ASTRID_INFERENCE_VALIDATION_ENABLED": "false",
                "ASTRID_INFERENCE_ALERT_EMAIL": "oncall@example.org",
                "ASTRID_INFERENCE_PERFORMANCE_TRACKING": "false",
                "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(Path(__file__).with_name("inject"))]),
                "RELIABILITY_SIGKILL_MARKER": str(marker),
            }
        )
        try:
            instance.start()
        except Exception:
            print(instance.log_tail(200))
            cleanup(instance)
            sink.stop()
            raise
        try:
            yield {
                "instance": instance,
                "catalog_url": admin_url,
                "passwords": passwords,
                "sink": sink,
                "marker": marker,
            }
        finally:
            cleanup(instance)  # stops it; keeps its home when ASTRID_KEEP_STANDALONE is set
            sink.stop()


@pytest.fixture(scope="package")
def killed_and_cleared_run(secret_standalone):
    """A realtime run whose ``infer`` task process is SIGKILLed after its first observation and
    retried by the scheduler; then ``infer`` + ``report`` of the finished run are cleared through
    the REST API and run again. Returns what the tests check."""
    import time

    from astrid.catalog import Catalog
    from astrid.survey import seed_survey

    sa_ = secret_standalone["instance"]
    url = secret_standalone["catalog_url"]
    dag = "astrid_realtime_inference"
    seeded = seed_survey(
        3,
        size=256,
        seed=9700,
        catalog_url=url,
        storage_root=sa_.env["ASTRID_STORAGE_ROOT"],
        prefix="standalone",
    )
    catalog = Catalog(url)
    run_id = sa_.trigger(dag, {"max_observations": 3})
    run = sa_.wait_for_run(dag, run_id, timeout=420)
    tries = sa_.api("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/infer/tries").json()
    first = {
        "run": run,
        "states": sa_.task_states(dag, run_id),
        "tries": tries.get("task_instances", []),
        "counts": catalog.status_counts(),
        "observations": catalog.observations(),
        "detections": catalog.detections(),
        "runs": [r for r in catalog.runs(dag_id=dag) if r["run_id"] == run_id],
    }
    cleared = sa_.api(
        "POST",
        f"/api/v2/dags/{dag}/clearTaskInstances",
        json={
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": ["infer", "report"],
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    deadline = time.monotonic() + 300
    after_tries: list = []
    while time.monotonic() < deadline:
        r = sa_.api("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}")
        states = sa_.task_states(dag, run_id)
        if r.ok and r.json()["state"] == "success" and states.get("report") == "success":
            after_tries = sa_.api(
                "GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}/taskInstances/infer/tries"
            ).json()
            after_tries = after_tries.get("task_instances", [])
            if len(after_tries) > len(first["tries"]):
                break
        time.sleep(2)
    second = {
        "cleared": cleared.status_code,
        "states": sa_.task_states(dag, run_id),
        "tries": after_tries,
        "counts": catalog.status_counts(),
        "observations": catalog.observations(),
        "detections": catalog.detections(),
        "runs": [r for r in catalog.runs(dag_id=dag) if r["run_id"] == run_id],
    }
    catalog.dispose()
    return {
        "run_id": run_id,
        "seeded": seeded.observation_ids,
        "first": first,
        "second": second,
        "marker": secret_standalone["marker"],
    }
