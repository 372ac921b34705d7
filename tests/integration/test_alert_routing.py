"""Alerts when Airflow itself is down reach people: rules → Prometheus → Alertmanager → email/Slack.

Everything is real except the metric source: Debian's `prometheus` and `prometheus-alertmanager`
binaries, our production alert rules and prometheus.yml (durations divided by 60 and the scrape
target, rule file path and Alertmanager address pointed at this test's ports: test-only
configuration, see tests/alerting.py), the Alertmanager configuration rendered by the production
run-alertmanager.sh (route timings shortened), a real SMTP server (aiosmtpd) for the alert email,
an HTTP endpoint standing in for the Slack webhook, and scripts/serve-docs.py serving docs/ as the
runbook base URL. The metric source is a small HTTP server that exposes exactly the series
statsd-exporter would serve for a heartbeating scheduler and a realtime DAG that succeeds: it
stands in for Airflow + StatsD + statsd-exporter, which tests/unit/test_monitoring_config.py
covers (mapping and names). Two failures are driven by freezing those series, as the exporter does
when Airflow stops sending: the scheduler's heartbeat stops, and realtime runs stop succeeding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
import yaml

from tests.alerting import (
    PROMETHEUS_CONFIG,
    SERVE_DOCS,
    FakeStatsdExporter,
    HttpStub,
    alertmanager_binary,
    prometheus_binary,
    render_alertmanager_config,
    scaled_rules,
    wait_until,
)
from tests.integration.standalone import SmtpSink, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (prometheus_binary() and alertmanager_binary()),
        reason="needs Debian's prometheus and prometheus-alertmanager (scripts/ensure-services.sh installs them)",
    ),
]

ONCALL = "oncall@example.org"
HEARTBEAT = "AstridSchedulerHeartbeatStopped"
REALTIME = "AstridRealtimeStalled"


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def text_of(message: Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "\n".join(
        p.get_payload(decode=True).decode("utf-8", "replace")
        for p in parts
        if p.get_content_maintype() == "text"
    )


class Stack:
    """Prometheus + Alertmanager + SMTP sink + Slack stub + docs server + fake exporter."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.smtp = SmtpSink()
        self.slack = HttpStub()
        self.exporter = FakeStatsdExporter()
        self.docs_port, self.am_port, self.prom_port = free_port(), free_port(), free_port()
        self.runbook_base = f"http://127.0.0.1:{self.docs_port}"

    def start(self) -> None:
        self._spawn(
            "docs",
            [sys.executable, str(SERVE_DOCS), "--bind", "127.0.0.1", "--port", str(self.docs_port),
             "--directory", str(SERVE_DOCS.parents[1] / "docs")],
        )  # fmt: skip
        self._start_alertmanager()
        self._start_prometheus()
        wait_until(lambda: self._ok(f"http://127.0.0.1:{self.am_port}/-/ready"), 30, "Alertmanager ready")
        wait_until(lambda: self._ok(f"http://127.0.0.1:{self.prom_port}/-/ready"), 30, "Prometheus ready")
        wait_until(lambda: self._ok(f"{self.runbook_base}/runbook.md"), 30, "docs server")

    def _start_alertmanager(self) -> None:
        rendered = render_alertmanager_config(
            self.tmp / "am-rendered",
            {
                "ALERT_EMAIL_TO": ONCALL,
                "SMTP_SMARTHOST": f"127.0.0.1:{self.smtp.port}",
                "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{self.slack.port}/services/T000/B000/XXXX",
            },
        )
        assert rendered.returncode == 0, rendered.stderr
        config = yaml.safe_load(Path(rendered.stdout.strip()).read_text())
        # test-only: notify within a second instead of the production 30 s / 5 min
        config["route"].update(group_wait="1s", group_interval="2s", repeat_interval="1h")
        path = self.tmp / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            "alertmanager",
            [alertmanager_binary(), f"--config.file={path}", f"--storage.path={self.tmp / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{self.am_port}", "--cluster.listen-address="],
        )  # fmt: skip

    def _start_prometheus(self) -> None:
        rules = self.tmp / "alerts.scaled.yml"
        rules.write_text(yaml.safe_dump(scaled_rules(), sort_keys=False))
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")  # test-only
        config["rule_files"] = [str(rules)]
        config["alerting"]["alertmanagers"] = [
            {"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}
        ]
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        exporter_job = jobs["statsd-exporter"]
        exporter_job["static_configs"][0]["targets"] = [f"127.0.0.1:{self.exporter.port}"]
        config["scrape_configs"] = [exporter_job]
        path = self.tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn(
            "prometheus",
            [prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={self.tmp / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}",
             # Prometheus 2 (Debian) needs this to read RUNBOOK_BASE_URL; Prometheus 3 always does
             "--enable-feature=expand-external-labels"],
            env={**os.environ, "RUNBOOK_BASE_URL": self.runbook_base},
        )  # fmt: skip

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))

    @staticmethod
    def _ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def prometheus_alerts(self) -> dict[str, str]:
        data = http_json(f"http://127.0.0.1:{self.prom_port}/api/v1/alerts")["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in data}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.exporter.stop()
        self.slack.stop()
        self.smtp.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    instance = Stack(tmp_path_factory.mktemp("alert-routing"))
    try:
        instance.start()
        yield instance
    except Exception:
        print(instance.logs())
        raise
    finally:
        instance.stop()


def emails(stack: Stack, status: str, alertname: str, after: int = 0) -> list[Message]:
    return [
        m
        for m in stack.smtp.messages[after:]
        if m["Subject"].startswith(f"[{status}") and alertname in m["Subject"]
    ]


def test_scheduler_down_and_realtime_stalled_reach_email_and_slack(stack: Stack) -> None:
    # Healthy for longer than both (scaled) windows: neither alert may be pending or firing.
    wait_until(lambda: stack.exporter.realtime_successes >= 18, 60, "36 s of healthy metrics")
    healthy = stack.prometheus_alerts()
    assert HEARTBEAT not in healthy and REALTIME not in healthy, (healthy, stack.logs())

    # The scheduler dies: it stops heartbeating, and realtime runs stop succeeding.
    seen = len(stack.smtp.messages)
    stack.exporter.heartbeat_alive = False
    stack.exporter.realtime_alive = False

    heartbeat = wait_until(lambda: emails(stack, "FIRING", HEARTBEAT, seen), 60, "heartbeat alert email")[0]
    assert heartbeat["To"] == ONCALL
    body = text_of(heartbeat)
    runbook = f"{stack.runbook_base}/runbook.md#scheduler-heartbeat-stopped"
    assert runbook in body, body[:2000]
    assert "The Airflow scheduler has stopped heartbeating" in body
    assert "runbook_base_url" not in body, "the link-building label must not reach people"
    # The link in the email opens, on the anchor the runbook has.
    with urllib.request.urlopen(runbook.split("#")[0], timeout=5) as response:
        assert 'id="scheduler-heartbeat-stopped"' in response.read().decode()

    # Realtime: no successful run within the (scaled) 30 minutes, sustained for the (scaled) 5.
    stalled = wait_until(lambda: emails(stack, "FIRING", REALTIME, seen), 90, "realtime stalled email")[0]
    assert stalled["To"] == ONCALL
    assert f"{stack.runbook_base}/runbook.md#no-realtime-run" in text_of(stalled)
    assert "astrid_realtime_inference" in text_of(stalled)

    # Slack got both, with the runbook links.
    posts = [json.loads(p) for p in stack.slack.posts]
    slack_text = json.dumps(posts)
    assert f"[FIRING] {HEARTBEAT}" in slack_text and f"[FIRING] {REALTIME}" in slack_text
    assert runbook in slack_text

    # The scheduler comes back: the heartbeat alert resolves, by email too.
    stack.exporter.heartbeat_alive = True
    wait_until(lambda: emails(stack, "RESOLVED", HEARTBEAT, seen), 60, "heartbeat resolved email")
    assert stack.prometheus_alerts().get(REALTIME) == "firing", "realtime stays stalled"
