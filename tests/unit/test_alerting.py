"""Alert routing configuration: Prometheus → Alertmanager → email/Slack, and runbook links.

The end-to-end run with the real binaries is tests/integration/test_alert_routing.py; this file
checks the pieces it relies on, quickly: the rendered Alertmanager configuration (with Debian's
`amtool` when installed), the refusals of run-alertmanager.sh, that the test-only time scaling
changes nothing but durations, that every runbook_url is a link, and the docs server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.alerting import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    PROMQL_DURATION,
    SERVE_DOCS,
    render_alertmanager_config,
    scale_expr,
    scaled_rules,
)

REPO = Path(__file__).resolve().parents[2]
ALERTS_TEST = REPO / "include" / "monitoring" / "prometheus" / "alerts.test.yml"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
GOOD = {"ALERT_EMAIL_TO": "oncall@example.org, second@example.org"}


def render(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    proc = render_alertmanager_config(tmp_path / "am", {**GOOD, **env})
    config = yaml.safe_load(Path(proc.stdout.strip()).read_text()) if proc.returncode == 0 else None
    return proc, config


def amtool_check(path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package prometheus-alertmanager)")
    proc = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_config_routes_every_alert_to_email_and_slack(tmp_path: Path) -> None:
    proc, config = render(
        tmp_path,
        SLACK_WEBHOOK_URL="https://hooks.example.org/services/T000/B000/XXXX",
        SMTP_SMARTHOST="smtp.example.org:587",
        SMTP_REQUIRE_TLS="true",
        SMTP_AUTH_USERNAME="astrid",
        SMTP_AUTH_PASSWORD="it's a 'quoted' secret",
    )
    assert proc.returncode == 0, proc.stderr
    amtool_check(Path(proc.stdout.strip()))
    assert config["global"]["smtp_smarthost"] == "smtp.example.org:587"
    assert config["global"]["smtp_require_tls"] is True
    assert config["global"]["smtp_auth_password"] == "it's a 'quoted' secret", "quotes survive YAML"
    route = config["route"]
    assert route["receiver"] == "astrid-oncall" and not route.get("routes"), "one receiver gets everything"
    (receiver,) = config["receivers"]
    assert receiver["email_configs"] == [{"to": GOOD["ALERT_EMAIL_TO"], "send_resolved": True}]
    (slack,) = receiver["slack_configs"]
    webhook_file = Path(slack["api_url_file"])
    assert webhook_file.read_text() == "https://hooks.example.org/services/T000/B000/XXXX"
    assert webhook_file.stat().st_mode & 0o077 == 0, "the webhook URL is a secret: owner-only file"
    assert "runbook_url" in slack["text"]


def test_without_a_webhook_there_is_no_slack_receiver(tmp_path: Path) -> None:
    proc, config = render(tmp_path)
    assert proc.returncode == 0, proc.stderr
    amtool_check(Path(proc.stdout.strip()))
    assert "slack_configs" not in config["receivers"][0]
    assert (
        config["global"]["smtp_smarthost"] == "mailpit:1025" and config["global"]["smtp_require_tls"] is False
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ALERT_EMAIL_TO": ""}, "ALERT_EMAIL_TO='' must be one or more email addresses"),
        ({"ALERT_EMAIL_TO": "oncall"}, "ALERT_EMAIL_TO='oncall' must be one or more email addresses"),
        ({"ALERT_EMAIL_TO": "a@b.org'\nroute: x"}, "ALERT_EMAIL_TO must be one line"),
        ({"ALERT_EMAIL_FROM": "AstrID"}, "ALERT_EMAIL_FROM='AstrID' must be one email address"),
        ({"SMTP_SMARTHOST": "mailpit"}, "SMTP_SMARTHOST='mailpit' must be host:port"),
        ({"SMTP_REQUIRE_TLS": "yes"}, "SMTP_REQUIRE_TLS='yes' must be true or false"),
        ({"SMTP_AUTH_PASSWORD": "x"}, "SMTP_AUTH_PASSWORD is set without SMTP_AUTH_USERNAME"),
        ({"SLACK_WEBHOOK_URL": "T000/B000/XXXX"}, "SLACK_WEBHOOK_URL must be an http(s) URL"),
    ],
)
def test_bad_settings_stop_alertmanager_with_one_clear_line(tmp_path: Path, env: dict, message: str) -> None:
    proc, _ = render(tmp_path, **env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"run-alertmanager: {proc.stderr.split(': ', 1)[1].strip()}"]
    assert message in proc.stderr
    assert not (tmp_path / "am" / "alertmanager.yml").exists(), "nothing half-written"


def test_compose_wires_prometheus_alertmanager_and_runbooks_together() -> None:
    services = COMPOSE["services"]
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets == ["alertmanager:9093"] and "alertmanager" in services
    assert {"action": "labeldrop", "regex": "runbook_base_url"} in prometheus["alerting"][
        "alert_relabel_configs"
    ]
    assert prometheus["global"]["external_labels"]["runbook_base_url"] == "${RUNBOOK_BASE_URL}"

    am = services["alertmanager"]
    assert am["entrypoint"][-1] == "/etc/alertmanager/astrid/run-alertmanager.sh"
    assert "./include/monitoring/alertmanager:/etc/alertmanager/astrid:ro" in am["volumes"]
    assert am["environment"]["ALERT_EMAIL_TO"].startswith("${ASTRID_INFERENCE_ALERT_EMAIL:-")
    assert am["environment"]["SMTP_SMARTHOST"] == "${ALERTMANAGER_SMTP_SMARTHOST:-mailpit:1025}"
    assert "--cluster.listen-address=" in am["command"], "a single Alertmanager: no gossip port"
    assert services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"

    # The default runbook base URL is where the runbooks service is published.
    base = re.fullmatch(
        r"\$\{RUNBOOK_BASE_URL:-(.+)\}", services["prometheus"]["environment"]["RUNBOOK_BASE_URL"]
    )
    port = re.search(r"\$\{RUNBOOKS_PORT:-(\d+)\}:8000$", services["runbooks"]["ports"][0])
    assert base and port and urlsplit(base.group(1)).port == int(port.group(1))
    assert "./docs:/opt/astrid/docs:ro" in services["runbooks"]["volumes"]


def test_time_scaling_changes_only_durations() -> None:
    """The e2e test's rules are the production rules with every duration divided by 60."""
    assert scale_expr("increase(x[30m]) unless x offset 30m") == "increase(x[30s]) unless x offset 30s"
    assert scale_expr("rate(x[1h30m])") == "rate(x[90s])"
    production = yaml.safe_load(ALERT_RULES.read_text())
    scaled = scaled_rules()
    blank = lambda expr: PROMQL_DURATION.sub("D", expr)  # noqa: E731
    pairs = [
        (p, s)
        for pg, sg in zip(production["groups"], scaled["groups"], strict=True)
        for p, s in zip(pg["rules"], sg["rules"], strict=True)
    ]
    assert len(pairs) >= 7
    for prod, test in pairs:
        assert blank(prod["expr"]) == blank(test["expr"]), prod.get("alert")
        assert {k: v for k, v in prod.items() if k not in ("expr", "for")} == {
            k: v for k, v in test.items() if k not in ("expr", "for")
        }


def test_every_runbook_url_renders_to_a_link() -> None:
    """promtool's unit tests (alerts.test.yml) compare the rendered annotations: each expected
    runbook_url there must be an absolute http(s) URL, and every alert has one."""
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    urls = {
        alert_test["alertname"]: exp["exp_annotations"]["runbook_url"]
        for test in doc["tests"]
        for alert_test in test.get("alert_rule_test", [])
        for exp in alert_test.get("exp_alerts", [])
    }
    rules = [
        r["alert"]
        for g in yaml.safe_load(ALERT_RULES.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    assert set(urls) == set(rules)
    for alert, url in urls.items():
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.netloc and parts.fragment, f"{alert}: {url}"


@pytest.fixture
def docs_server(tmp_path: Path):
    from tests.integration.standalone import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SERVE_DOCS),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--directory",
            str(REPO / "docs"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    ready = threading.Event()
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/runbook.md", timeout=1).close()
            ready.set()
            break
        except OSError:
            ready.wait(0.1)
    assert ready.is_set(), "serve-docs.py did not start"
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_docs_server_serves_runbooks_as_text_and_nothing_else(docs_server: str) -> None:
    with urllib.request.urlopen(f"{docs_server}/runbook.md", timeout=5) as response:
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert 'id="scheduler-heartbeat-stopped"' in response.read().decode()
    for path in ("/", "/../README.md", "/%2e%2e/README.md", "/../../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{docs_server}{path}", timeout=5)
        assert refused.value.code == 404, path


def test_docs_server_refuses_a_folder_without_runbooks(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SERVE_DOCS), "--directory", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "no runbook.md there" in proc.stderr
