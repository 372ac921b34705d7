"""Alerts and metrics, for real: emails arrive at an aiosmtpd server, StatsD packets at a UDP socket.

Each scenario runs the realtime DAG with ``dag.test()`` in a child process, so Airflow's Stats
client and connections are configured from a clean environment (the SMTP connection and the
StatsD host/port point at sockets this test owns).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.dag_runner import run_child
from tests.integration.standalone import SmtpSink

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys
sys.path[:0] = [os.path.join(os.environ["REPO"], "plugins"), os.environ["REPO"]]
from astrid.survey import seed_survey
from tests.dag_runner import run_dag
spec = json.loads(os.environ["SCENARIO"])
if spec.get("seed"):
    seed_survey(catalog_url=os.environ["ASTRID_CATALOG_URL"], storage_root=os.environ["ASTRID_STORAGE_ROOT"], **spec["seed"])
states = []
for conf in spec["runs"]:
    dag_run = run_dag(spec.get("dag", "astrid_realtime_inference"), conf)
    states.append(str(dag_run.state))
print("STATES=" + json.dumps(states))
"""


@pytest.fixture
def sink():
    s = SmtpSink()
    yield s
    s.stop()


class UdpSink:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65535))
            except TimeoutError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class WebhookSink:
    """A real HTTP server on 127.0.0.1 standing in for Slack's incoming-webhook endpoint."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connection_env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/XXXX"
        return {
            "AIRFLOW_CONN_SLACK_WEBHOOK_DEFAULT": json.dumps({"conn_type": "slackwebhook", "password": url})
        }

    def stop(self) -> None:
        self.server.shutdown()


def email_text(message) -> str:
    """Subject plus every decoded text part (the SMTP hook sends base64 multipart)."""
    parts = [message["Subject"] or ""]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_payload(decode=True).decode(errors="replace"))
    return "\n".join(parts)


def run_scenario(tmp_path: Path, scenario: dict, env: dict[str, str]) -> list[str]:
    return run_child(SCRIPT, tmp_path, {"SCENARIO": json.dumps(scenario), **env}, marker="STATES=")


def test_failed_task_emails_the_error_and_a_link_to_the_run(tmp_path, sink):
    webhook = WebhookSink()
    try:
        states = run_scenario(
            tmp_path,
            {
                "seed": {"count": 1, "size": 256, "seed": 61000},
                "runs": [{"max_observations": 1, "model_version": "999"}],  # no such registry version
            },
            {**sink.connection_env(), **webhook.connection_env()},
        )
    finally:
        webhook.stop()
    # the webhook (Slack incoming-webhook format) got the same alert
    assert len(webhook.bodies) == 1, webhook.bodies
    assert "Task failed: astrid_realtime_inference.infer" in webhook.bodies[0]["text"]
    assert states == ["failed"]
    email = sink.wait_for(
        lambda m: "Task failed: astrid_realtime_inference.infer" in (m["Subject"] or ""), timeout=30
    )
    body = email_text(email)
    assert "999" in body and "ModelError" in body
    assert "/dags/astrid_realtime_inference/runs/" in body
    assert "oncall@example.org" in email["To"]
    # exactly one failure email: the retries did not each send one, and the cool-down holds
    assert sum("Task failed" in (m["Subject"] or "") for m in sink.messages) == 1
    # the dead run's claims were released on failure: the observation is claimable again
    from astrid.catalog import Catalog

    assert Catalog(f"sqlite:///{tmp_path}/catalog.db").status_counts()["preprocessed"] == 1


def test_zero_detection_runs_raise_one_degradation_email(tmp_path, sink):
    states = run_scenario(
        tmp_path,
        {
            "seed": {"count": 3, "size": 256, "seed": 62000, "n_transients": 0},
            "runs": [{"max_observations": 1}] * 3,
        },
        {**sink.connection_env(), "ASTRID_INFERENCE_ZERO_DETECTION_RUNS": "2"},
    )
    assert states == ["success"] * 3
    email = sink.wait_for(
        lambda m: "Degradation: astrid_realtime_inference" in (m["Subject"] or ""), timeout=30
    )
    assert "zero detections in the last 2 realtime runs" in email_text(email)
    # runs 2 and 3 both qualify, but the cool-down suppresses the repeat
    assert sum("Degradation" in (m["Subject"] or "") for m in sink.messages) == 1


def test_statsd_metrics_arrive_and_map_to_prometheus_names(tmp_path):
    from astrid.metrics import METRICS
    from tests.monitoring_config import load_mapping, parse_statsd_packet

    udp = UdpSink()
    try:
        states = run_scenario(
            tmp_path,
            {
                "seed": {"count": 2, "size": 256, "seed": 63000},
                "runs": [{"max_observations": 2}],
            },
            {
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(udp.port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
            },
        )
    finally:
        udp.stop()
    assert states == ["success"]
    samples = [s for p in udp.packets for s in parse_statsd_packet(p)]
    names = {s.name for s in samples}
    dag = "astrid_realtime_inference"
    for base in (
        "astrid.observations.claimed",
        "astrid.observations.processed",
        "astrid.detections",
        "astrid.inference.latency",
        "astrid.model.load_time",
        "astrid.run.success_rate",
        "astrid.throughput_mpix",
        "astrid.memory.rss_mb",
    ):
        assert f"airflow.{base}.{dag}" in names, (base, sorted(n for n in names if "astrid" in n))
    processed = [s for s in samples if s.name == f"airflow.astrid.observations.processed.{dag}"]
    assert sum(float(s.value) for s in processed) == 2
    mapping = load_mapping()
    ours = [s for s in samples if s.name.startswith("airflow.astrid.")]
    for sample in ours:
        mapped = mapping.map(sample.name, sample.type) if hasattr(mapping, "map") else None
        from tests.monitoring_config import map_statsd_name

        mapped = map_statsd_name(sample.name, sample.type)
        assert mapped is not None, sample.name
        assert mapped[1].get("dag_id") == dag, (sample.name, mapped)
    assert {s.name.removeprefix("airflow.").removesuffix(f".{dag}") for s in ours} <= set(METRICS)
    # Airflow's own metrics for the run came too, and map to labelled series
    assert any(
        n.startswith(f"airflow.dagrun.duration.success.{dag}") or n.startswith("airflow.ti.finish")
        for n in names
    ) or any("ti" in n for n in names)


ALERT_COUNT_SCRIPT = r"""
import os, sys
sys.path[:0] = [os.path.join(os.environ["REPO"], "plugins"), os.environ["REPO"]]
from astrid.airflow.notifiers import AstridNotifier, build_alert
for dag_id, enabled in (("astrid_monitored", True), ("astrid_unmonitored", False)):
    alert = build_alert("deadline", {"dag_run": {"dag_id": dag_id, "dag_run_id": "r1"}})
    AstridNotifier(kind="deadline", monitoring_enabled=enabled)._due(alert, os.environ["ASTRID_CATALOG_URL"])
print("DONE")
"""


def test_alert_counters_respect_the_monitoring_switch(tmp_path):
    """The notifier counts alerts through the same switch as the operators: off sends nothing."""
    udp = UdpSink()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__METRICS", "ASTRID_"))}
    env.update(
        {
            "REPO": str(REPO),
            "ASTRID_CATALOG_URL": f"sqlite:///{tmp_path}/catalog.db",
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(udp.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", ALERT_COUNT_SCRIPT], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-4000:]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(udp.packets) < 2:
            time.sleep(0.05)
    finally:
        udp.stop()
    text = b"\n".join(udp.packets).decode()
    assert "airflow.astrid.alerts.sent.astrid_monitored:1|c" in text, text
    assert "airflow.astrid.deadline.missed.astrid_monitored:1|c" in text, text
    assert "astrid_unmonitored" not in text
