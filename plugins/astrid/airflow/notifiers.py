"""Alert notifiers: email through ``smtp_default`` and, when configured, a Slack/webhook message.

Notifier classes (like the providers' ``SmtpNotifier``), usable as task/DAG callbacks and as
Deadline Alert callbacks (``AsyncCallback(AstridNotifier, kwargs=...)`` runs in the triggerer).
Every alert has a key (kind + DAG); a repeat within the cool-down is suppressed, with the state
kept in the catalog's ``alert_state`` table — persisted, so restarts and many workers agree.

Besides alerts, ``kind="promotion"`` announces a change of serving model (a promotion or a
rollback, with the validation's comparison table): keyed by DAG *run*, so each change is
announced once (a retried task does not repeat it) and no cool-down ever hides one. Markdown
tables in a message become HTML tables in the email and a code block on Slack.
"""

from __future__ import annotations

import asyncio
import html
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseNotifier

from astrid.airflow.base import stats
from astrid.airflow.hooks import CatalogHook, connection_or_none, shared_catalog

KINDS = ("deadline", "failure", "degradation", "drift", "promotion")
ANNOUNCEMENTS = ("promotion",)  # one per DAG run, never suppressed by the cool-down


@dataclass(frozen=True)
class Alert:
    kind: str
    dag_id: str
    run_id: str
    subject: str
    body: str
    url: str

    @property
    def key(self) -> str:
        if self.kind in ANNOUNCEMENTS:
            return f"{self.kind}:{self.dag_id}:{self.run_id}"
        return f"{self.kind}:{self.dag_id}"


def _base_url() -> str:
    from airflow.sdk.configuration import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080").rstrip("/")


def run_url(dag_id: str, run_id: str) -> str:
    from urllib.parse import quote

    return f"{_base_url()}/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def build_alert(kind: str, context: dict[str, Any], message: str = "") -> Alert:
    """Subject and body from a task context or a deadline callback's simple context."""
    dag_run = context.get("dag_run")
    if isinstance(dag_run, dict):  # deadline callback: serialised DAGRunResponse
        dag_id, run_id = dag_run.get("dag_id", "?"), dag_run.get("dag_run_id") or dag_run.get("run_id", "?")
    else:
        dag_id = context["dag"].dag_id if context.get("dag") else getattr(dag_run, "dag_id", "?")
        run_id = context.get("run_id") or getattr(dag_run, "run_id", "?")
    url = run_url(dag_id, run_id)
    if kind == "deadline":
        deadline = (context.get("deadline") or {}).get("deadline_time", "")
        subject = f"[AstrID] SLA missed: {dag_id} run {run_id} is late"
        detail = f"The run passed its deadline ({deadline}) and is still not finished."
    elif kind == "failure":
        ti = context.get("ti") or context.get("task_instance")
        task = getattr(ti, "task_id", "?")
        error = context.get("exception")
        subject = f"[AstrID] Task failed: {dag_id}.{task}"
        detail = (
            f"Task {task} failed after its retries: {type(error).__name__ if error else ''}: {error or ''}"
        )
    elif kind == "promotion":
        headline = message.strip().splitlines()[0] if message.strip() else dag_id
        subject = f"[AstrID] Serving model changed: {headline}"
        detail = ""
    elif kind == "drift":
        subject = f"[AstrID] Drift: {dag_id}"
        detail = "Inputs or outputs of the serving model moved away from its reference window."
    else:
        subject = f"[AstrID] Degradation: {dag_id}"
        detail = ""
    body = "\n".join(line for line in (detail, message, f"Run: {url}", "Runbook: docs/runbook.md") if line)
    return Alert(kind, dag_id, run_id, subject, body, url)


class AstridNotifier(BaseNotifier):
    """Send an :class:`Alert` by email (and webhook) unless the same alert is in its cool-down.

    :param kind: ``deadline``, ``failure`` or ``degradation``
    :param to: recipients (default: ASTRID_INFERENCE_ALERT_EMAIL)
    :param message: extra text (templated)
    :param cooldown_minutes: suppress repeats of the same kind+DAG for this long
        (default: ASTRID_INFERENCE_ALERT_COOLDOWN_MINUTES)
    :param monitoring_enabled: count sent/suppressed alerts in StatsD
        (default: ASTRID_INFERENCE_MONITORING_ENABLED)
    """

    template_fields = ("message", "to")

    def __init__(
        self,
        kind: str = "failure",
        to: str | list[str] | None = None,
        message: str = "",
        cooldown_minutes: int | None = None,
        smtp_conn_id: str = "smtp_default",
        webhook_conn_id: str = "slack_webhook_default",
        catalog_conn_id: str = CatalogHook.default_conn_name,
        from_email: str | None = None,
        monitoring_enabled: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"alert kind {kind!r} unknown: use one of {', '.join(KINDS)}")
        self.kind, self.to, self.message = kind, to, message
        self.cooldown_minutes = cooldown_minutes
        self.smtp_conn_id, self.webhook_conn_id, self.catalog_conn_id = (
            smtp_conn_id,
            webhook_conn_id,
            catalog_conn_id,
        )
        self.from_email = from_email
        self.monitoring_enabled = monitoring_enabled

    # -- sync (task callbacks, degradation checks) -------------------------------------------
    def notify(self, context: Any) -> bool:
        """Deliver on every configured channel; a channel that fails is logged, never raised.

        An alert is a side effect of a task: an SMTP outage must not fail the inference run
        that noticed the degradation (the failure is in the task log as ``alert.delivery_failed``).
        """
        alert = build_alert(self.kind, context, self.message)
        if not self._due(alert, CatalogHook(self.catalog_conn_id).url):
            return False
        delivered = False
        for channel in (self._send_email, self._send_webhook):
            try:
                delivered = channel(alert) or delivered
            except Exception as exc:
                from astrid.logs import log_event

                log_event(
                    "alert.delivery_failed",
                    exc=exc,
                    channel=channel.__name__,
                    kind=alert.kind,
                    dag_id=alert.dag_id,
                    run_id=alert.run_id,
                )
        return delivered

    # -- async (deadline callbacks in the triggerer) -----------------------------------------
    async def async_notify(self, context: Any) -> bool:
        alert = build_alert(self.kind, context, self.message)
        url = await asyncio.to_thread(lambda: CatalogHook(self.catalog_conn_id).url)
        if not await asyncio.to_thread(self._due, alert, url):
            return False
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        async with SmtpHook(smtp_conn_id=self.smtp_conn_id) as smtp:
            await smtp.asend_email_smtp(
                smtp_conn_id=self.smtp_conn_id,
                to=self._recipients(),
                subject=alert.subject,
                html_content=_html(alert),
                from_email=self._from(smtp),
            )
        await asyncio.to_thread(self._send_webhook, alert)
        return True

    # -- helpers ------------------------------------------------------------------------------
    def _recipients(self) -> list[str]:
        from astrid.config import load_config

        if self.to:
            return [self.to] if isinstance(self.to, str) else list(self.to)
        return load_config().alert_recipients

    def _from(self, smtp: Any) -> str:
        return self.from_email or getattr(smtp, "from_email", None) or "astrid-airflow@localhost"

    def _due(self, alert: Alert, catalog_url: str) -> bool:
        from datetime import timedelta

        from astrid.config import load_config
        from astrid.logs import log_event

        config = load_config()
        cooldown = timedelta(minutes=self.cooldown_minutes or config.alert_cooldown_minutes)
        due = shared_catalog(catalog_url).alert_due(alert.key, cooldown)
        log_event(
            "alert.sent" if due else "alert.suppressed",
            kind=alert.kind,
            dag_id=alert.dag_id,
            run_id=alert.run_id,
            subject=alert.subject,
        )
        monitoring = config.monitoring_enabled if self.monitoring_enabled is None else self.monitoring_enabled
        _count(stats(monitoring), dag_id=alert.dag_id, sent=due, kind=alert.kind)
        return due

    def _send_email(self, alert: Alert) -> bool:
        if connection_or_none(self.smtp_conn_id) is None:
            from astrid.logs import log_event

            log_event(
                "alert.not_emailed",
                level=30,
                reason=f"connection {self.smtp_conn_id!r} is not defined",
                subject=alert.subject,
            )
            return False
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=self.smtp_conn_id) as smtp:
            smtp.send_email_smtp(
                smtp_conn_id=self.smtp_conn_id,
                to=self._recipients(),
                subject=alert.subject,
                html_content=_html(alert),
                from_email=self._from(smtp),
            )
        return True

    def _send_webhook(self, alert: Alert) -> bool:
        if connection_or_none(self.webhook_conn_id) is None:
            return False
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        SlackWebhookHook(slack_webhook_conn_id=self.webhook_conn_id).send(
            text=f"*{alert.subject}*\n{_slack(alert.body)}"
        )
        return True


def _blocks(text: str) -> list[tuple[bool, list[str]]]:
    """``text`` as runs of lines: (is a markdown table, lines)."""
    blocks: list[tuple[bool, list[str]]] = []
    for line in text.splitlines():
        table = line.lstrip().startswith("|")
        if blocks and blocks[-1][0] == table:
            blocks[-1][1].append(line)
        else:
            blocks.append((table, [line]))
    return blocks


def _html_table(lines: list[str]) -> str:
    rows = [[html.escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]  # the |---| line
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f'<table border="1" cellpadding="4" cellspacing="0"><tr>{head}</tr>{body}</table>'


def _html(alert: Alert) -> str:
    parts = []
    for table, lines in _blocks(alert.body):
        if table:
            parts.append(_html_table(lines))
        else:
            parts.append("<p>" + "<br>".join(html.escape(line) for line in lines) + "</p>")
    link = f'<p><a href="{alert.url}">Open the run</a></p>'
    return f"<h3>{html.escape(alert.subject)}</h3>{''.join(parts)}{link}"


def _slack(text: str) -> str:
    """Markdown tables as code blocks (Slack does not render tables)."""
    return "\n".join(
        "```\n" + "\n".join(lines) + "\n```" if table else "\n".join(lines) for table, lines in _blocks(text)
    )


def _count(metrics: Any, dag_id: str, sent: bool, kind: str) -> None:
    try:
        from astrid.metrics import metric_name

        metrics.incr(metric_name("astrid.alerts.sent" if sent else "astrid.alerts.suppressed", dag_id))
        if kind == "deadline":
            metrics.incr(metric_name("astrid.deadline.missed", dag_id))
    except Exception:  # metrics must never stop an alert
        pass
