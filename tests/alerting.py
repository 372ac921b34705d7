"""Test tooling for the Prometheus → Alertmanager path (used by tests/unit and tests/integration).

Real binaries (Debian's `prometheus` and `prometheus-alertmanager`, installed by
scripts/ensure-services.sh) run against test-only configuration derived from the production files:
every duration in the production alert rules is divided by TIME_SCALE (minutes become seconds),
and Alertmanager's route timings are shortened. Nothing else of the rules changes; a unit test
checks that.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "include" / "monitoring"
ALERT_RULES = MONITORING / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus" / "prometheus.yml"
ALERTMANAGER_SCRIPT = MONITORING / "alertmanager" / "run-alertmanager.sh"
SERVE_DOCS = REPO / "scripts" / "serve-docs.py"

TIME_SCALE = 60  # test-only: production minutes become seconds
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
# Durations inside PromQL: range selectors [30m] and offsets (offset 30m).
PROMQL_DURATION = re.compile(r"(\[|offset\s+)((?:\d+(?:ms|s|m|h|d|w|y))+)(\]?)")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def alertmanager_binary() -> str | None:
    return shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")


def seconds(duration: str) -> float:
    parts = DURATION.findall(duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def scaled(duration: str, scale: float = TIME_SCALE) -> str:
    value = seconds(duration) / scale
    assert value == int(value), f"{duration} / {scale} is not a whole number of seconds"
    return f"{int(value)}s"


def scale_expr(expr: str, scale: float = TIME_SCALE) -> str:
    return PROMQL_DURATION.sub(lambda m: f"{m.group(1)}{scaled(m.group(2), scale)}{m.group(3)}", expr)


def scaled_rules(scale: float = TIME_SCALE) -> dict[str, Any]:
    """The production rule file with every duration (range, offset, for) divided by ``scale``."""
    doc = copy.deepcopy(yaml.safe_load(ALERT_RULES.read_text()))
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], scale)
            if "for" in rule:
                rule["for"] = scaled(str(rule["for"]), scale)
    return doc


def render_alertmanager_config(out_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the production run-alertmanager.sh in --render-only mode (POSIX sh, like the image)."""
    return subprocess.run(
        ["sh", str(ALERTMANAGER_SCRIPT), "--render-only"],
        env={"PATH": "/usr/bin:/bin", "ALERTMANAGER_CONFIG_DIR": str(out_dir), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


class HttpStub:
    """A tiny HTTP server on 127.0.0.1: GET answers from ``body()``, POST bodies are recorded."""

    def __init__(self, body: Callable[[], str] = str) -> None:
        stub = self
        self.posts: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = body().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                stub.posts.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeStatsdExporter:
    """Serves /metrics with the series the alerts read, as statsd-exporter would after the mapping:
    the scheduler heartbeat counter (+1 a second while "alive") and realtime's successful-run
    count (+1 every 2 s while "alive"). Stopping either freezes its value, as the exporter keeps
    serving the last value when Airflow stops sending."""

    def __init__(self) -> None:
        self.heartbeat_alive = True
        self.realtime_alive = True
        self.heartbeats = 0
        self.realtime_successes = 0
        self._stop = threading.Event()
        self.http = HttpStub(self.metrics)
        self.port = self.http.port
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    def _tick(self) -> None:
        tick = 0
        while not self._stop.wait(1.0):
            tick += 1
            if self.heartbeat_alive:
                self.heartbeats += 1
            if self.realtime_alive and tick % 2 == 0:
                self.realtime_successes += 1

    def metrics(self) -> str:
        return (
            "# TYPE airflow_scheduler_heartbeat_total counter\n"
            f"airflow_scheduler_heartbeat_total {self.heartbeats}\n"
            "# TYPE airflow_dagrun_duration_seconds_count untyped\n"
            'airflow_dagrun_duration_seconds_count{dag_id="astrid_realtime_inference",state="success"} '
            f"{self.realtime_successes}\n"
        )

    def stop(self) -> None:
        self._stop.set()
        self.http.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
