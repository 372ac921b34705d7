"""A real `airflow standalone` (api-server, scheduler with LocalExecutor, dag-processor, triggerer)
for integration tests, plus a real SMTP sink (aiosmtpd) it sends alert emails to.

One instance per test session (starting it costs ~1 minute on 2 cores); tests share it and
create their own DAG runs. Everything binds to 127.0.0.1 on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpSink:
    """aiosmtpd on 127.0.0.1: every message received is kept in ``messages``."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        sink = self

        class Keep(Message):
            def handle_message(self, message: Any) -> None:
                sink.messages.append(message)

        self.messages: list[Any] = []
        self.port = free_port()
        self.controller = Controller(Keep(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait_for(self, predicate, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if predicate(message):
                    return message
            time.sleep(0.5)
        subjects = [m["Subject"] for m in self.messages]
        raise AssertionError(f"no matching email within {timeout}s; received subjects: {subjects}")

    def stop(self) -> None:
        self.controller.stop()

    def connection_env(self) -> dict[str, str]:
        conn = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": self.port,
            "login": "",
            "password": "",
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "astrid@localhost"},
        }
        return {"AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(conn)}


@dataclass
class Standalone:
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    password: str = ""
    _token: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def airflow(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def start(self, timeout: float = 240) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        self.airflow("pools", "set", "gpu", "4", "U-Net tasks")
        log = open(self.home / "standalone.log", "w")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(BIN / "airflow"), "standalone"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited: {self.log_tail()}")
            try:
                if (
                    requests.get(f"{self.url}/api/v2/monitor/health", timeout=3).ok
                    and self._password_file().exists()
                ):
                    break
            except requests.RequestException:
                pass
            time.sleep(2)
        else:
            raise RuntimeError(f"airflow standalone not healthy within {timeout}s: {self.log_tail()}")
        self.password = json.loads(self._password_file().read_text())["admin"]
        self.wait_for_dags({"astrid_realtime_inference", "astrid_batch_inference", "astrid_model_validation"})

    def _password_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"

    def log_tail(self, n: int = 60) -> str:
        path = self.home / "standalone.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def token(self) -> str:
        if self._token is None:
            r = requests.post(
                f"{self.url}/auth/token", json={"username": "admin", "password": self.password}, timeout=10
            )
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def wait_for_dags(self, dag_ids: set[str], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api("GET", "/api/v2/dags", params={"limit": 100})
            if r.ok and dag_ids <= {d["dag_id"] for d in r.json()["dags"]}:
                return
            time.sleep(2)
        raise RuntimeError(f"DAGs {dag_ids} not parsed within {timeout}s: {self.log_tail()}")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        r = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}}
        )
        r.raise_for_status()
        return r.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if r.ok and r.json()["state"] in ("success", "failed"):
                return r.json()
            time.sleep(2)
        raise AssertionError(f"{dag_id} {run_id} not finished in {timeout}s: {self.log_tail()}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        r.raise_for_status()
        return {ti["task_id"]: ti["state"] for ti in r.json()["task_instances"]}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def make_standalone(extra_env: dict[str, str] | None = None) -> Standalone:
    home = Path(tempfile.mkdtemp(prefix="astrid-standalone-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ASTRID_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "PYTHONPATH": str(REPO / "plugins"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # standalone spawns `airflow` from PATH
            "GX_ANALYTICS_ENABLED": "False",
            "ASTRID_CATALOG_URL": f"sqlite:///{home}/astrid-catalog.db",
            "ASTRID_STORAGE_ROOT": (home / "storage").as_uri(),
            "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        }
    )
    env.update(extra_env or {})
    return Standalone(home=home, port=port, env=env)


def cleanup(instance: Standalone) -> None:
    instance.stop()
    if os.environ.get("ASTRID_KEEP_STANDALONE") is None:
        shutil.rmtree(instance.home, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Production-shaped stacks: PostgreSQL metadata DB, separate processes, Celery workers on Redis.
# (Added for tests/integration/test_celery.py, test_load.py and bench/*.py; the `standalone`
# fixture above is unchanged.)


def worker_hostname() -> str:
    """``[core] hostname_callable`` for several workers on one machine: ``$ASTRID_WORKER_NAME``
    (else the FQDN), so each task instance records which worker ran it."""
    return os.environ.get("ASTRID_WORKER_NAME") or socket.getfqdn()


def postgres_metadata_env(url: str) -> dict[str, str]:
    """Env putting Airflow's metadata DB on PostgreSQL ``url`` (e.g. from
    ``tests.catalog_helpers.temporary_postgres_database()``)."""
    import sqlalchemy as sa

    conn = sa.make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn}


def log_server_env() -> dict[str, str]:
    """Free ports for the task-log servers, so two stacks (or a stack and a developer's) never collide
    on the defaults 8793/8794."""
    return {
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }


class RedisDb:
    """An empty Redis database (1-15) reserved for one test with a marker key; flushed on release."""

    MARKER = "astrid:test:reserved"

    def __init__(self, host: str = "127.0.0.1", port: int = 6379) -> None:
        import redis

        self.host, self.port = host, port
        for db in range(15, 0, -1):
            client = redis.Redis(host=host, port=port, db=db, socket_timeout=5)
            if client.dbsize() == 0 and client.set(self.MARKER, str(os.getpid()), nx=True, ex=3600):
                self.db, self.client = db, client
                return
            client.close()
        raise RuntimeError(f"no empty Redis database at {host}:{port} (1-15 all in use)")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def release(self) -> None:
        if self.client.get(self.MARKER) == str(os.getpid()).encode():
            self.client.flushdb()
        self.client.close()


def events_env(redis_url: str, channel: str, poll: float) -> dict[str, str]:
    """Arrival events on one Redis database and channel: the publishers' and the triggerer's side."""
    return {
        "ASTRID_INFERENCE_EVENTS_ENABLED": "true",
        "ASTRID_INFERENCE_EVENTS_URL": redis_url,
        "ASTRID_INFERENCE_EVENTS_CHANNEL": channel,
        "ASTRID_INFERENCE_EVENTS_POLL_SECONDS": str(poll),
        "AIRFLOW_CONN_ASTRID_EVENTS": redis_url,
    }


def wait_for_listener(client: Any, channel: str, timeout: float = 180) -> None:
    """Until the triggerer has subscribed to ``channel`` (a message before that is lost)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.pubsub_numsub(channel)[0][1] > 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no subscriber on {channel} within {timeout}s: is the triggerer running?")


def redis_unavailable(host: str = "127.0.0.1", port: int = 6379) -> str | None:
    """``None`` when Redis answers, else the reason (for ``pytest.skip``)."""
    try:
        import redis

        redis.Redis(host=host, port=port, socket_timeout=3).ping()
    except Exception as exc:
        return f"Redis at {host}:{port} is unreachable: {exc}"
    return None


@dataclass
class ProcessStack(Standalone):
    """Airflow as deployed: ``api-server``, ``scheduler``, ``dag-processor`` (and ``triggerer``) as
    separate processes, plus ``airflow celery worker`` processes when ``workers`` names some (the
    executor then must be CeleryExecutor, set in ``env``). Same REST helpers as :class:`Standalone`.
    """

    workers: tuple[str, ...] = ()
    worker_queues: str = "default,gpu"
    worker_concurrency: int = 1
    triggerer: bool = True
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def components(self) -> list[tuple[str, list[str], dict[str, str]]]:
        parts: list[tuple[str, list[str], dict[str, str]]] = [
            ("api-server", ["api-server"], {}),
            ("scheduler", ["scheduler"], {}),
            ("dag-processor", ["dag-processor"], {}),
        ]
        if self.triggerer:
            parts.append(("triggerer", ["triggerer"], {}))
        for name in self.workers:
            parts.append(
                (
                    f"worker-{name}",
                    [
                        "celery",
                        "worker",
                        "--celery-hostname",
                        f"{name}@%h",
                        "-q",
                        self.worker_queues,
                        "--concurrency",
                        str(self.worker_concurrency),
                        "--skip-serve-logs",
                    ],
                    {
                        "ASTRID_WORKER_NAME": name,
                        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.standalone.worker_hostname",
                        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
                    },
                )
            )
        return parts

    def start(self, timeout: float = 300) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate", timeout=600)
        self.airflow("pools", "set", "gpu", "4", "U-Net tasks")
        for name, args, extra in self.components():
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen(
                [str(BIN / "airflow"), *args],
                env={**self.env, **extra},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited: {self.log_tail()}")
            if (
                self._healthy()
                and self._password_file().exists()
                and all(self.worker_ready(w) for w in self.workers)
            ):
                break
            time.sleep(2)
        else:
            raise RuntimeError(f"stack not healthy within {timeout}s: {self.log_tail()}")
        self.password = json.loads(self._password_file().read_text())["admin"]
        self.wait_for_dags({"astrid_realtime_inference", "astrid_batch_inference", "astrid_model_validation"})

    def _healthy(self) -> bool:
        try:
            r = requests.get(f"{self.url}/api/v2/monitor/health", timeout=3)
        except requests.RequestException:
            return False
        if not r.ok:
            return False
        health = r.json()
        wanted = ["metadatabase", "scheduler", "dag_processor"] + (["triggerer"] if self.triggerer else [])
        return all((health.get(k) or {}).get("status") == "healthy" for k in wanted)

    def worker_log(self, name: str) -> str:
        path = self.home / f"worker-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker_ready(self, name: str) -> bool:
        """Celery prints ``<name>@<host> ready.`` once connected to the broker and consuming."""
        return any(f"{name}@" in line and "ready." in line for line in self.worker_log(name).splitlines())

    def log_tail(self, n: int = 40) -> str:
        out = []
        for name in self.procs or [c[0] for c in self.components()]:
            path = self.home / f"{name}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():  # workers last-in first-out would not matter: all at once
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def make_process_stack(extra_env: dict[str, str] | None = None, **options: Any) -> ProcessStack:
    """Like :func:`make_standalone` (same env, same REST helpers) but separate processes; pass
    ``workers=("w1", "w2")`` and CeleryExecutor settings in ``extra_env`` for a Celery stack."""
    base = make_standalone(
        {
            "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),  # every process signs/verifies alike
            **log_server_env(),
            **(extra_env or {}),
        }
    )
    return ProcessStack(home=base.home, port=base.port, env=base.env, **options)


def celery_env(broker_url: str, result_backend_url: str) -> dict[str, str]:
    """CeleryExecutor on ``broker_url`` (Redis) with a ``db+postgresql://`` result backend."""
    import sqlalchemy as sa

    backend = "db+" + sa.make_url(result_backend_url).set(drivername="postgresql").render_as_string(
        hide_password=False
    )
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": backend,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
    }


def task_instances(stack: Standalone, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of a run (mapped ones included, one row per map index) from the REST API."""
    r = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
    r.raise_for_status()
    return list(r.json()["task_instances"])
