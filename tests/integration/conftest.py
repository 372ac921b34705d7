"""Session fixtures: one SMTP sink and one real `airflow standalone` shared by integration tests."""

from __future__ import annotations

import pytest

from tests.integration.standalone import SmtpSink, cleanup, make_standalone


@pytest.fixture(scope="session")
def smtp_sink():
    sink = SmtpSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def standalone(smtp_sink):
    """`airflow standalone` with a realtime deadline (6 s) shorter than a run's work, alerts to the sink."""
    instance = make_standalone(
        {
            **smtp_sink.connection_env(),
            "ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES": "0.1",
            # manual runs only: unpausing must not also start the latest cron run
            "ASTRID_INFERENCE_REALTIME_ENABLED": "false",
            "ASTRID_INFERENCE_BATCH_ENABLED": "false",
            "ASTRID_INFERENCE_VALIDATION_ENABLED": "false",
            "ASTRID_INFERENCE_ALERT_COOLDOWN_MINUTES": "60",
            "ASTRID_INFERENCE_ALERT_EMAIL": "oncall@example.org",
        }
    )
    try:
        instance.start()
    except Exception:
        print(instance.log_tail(200))
        cleanup(instance)
        raise
    yield instance
    cleanup(instance)
