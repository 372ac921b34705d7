"""`make up` chooses between runs on arrival and cron only (scripts/arrival-events.sh, sourced by
scripts/standalone.sh): sourced for real with bash, against the real local Redis and a port where
nothing listens, and the realtime DAG's schedule computed from what it exported."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.standalone import free_port, redis_unavailable

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
# after sourcing: what Airflow would be started with, and the realtime schedule it gives
PROBE = """
. scripts/arrival-events.sh
echo "enabled=${ASTRID_INFERENCE_EVENTS_ENABLED:-unset}"
echo "conn=${AIRFLOW_CONN_ASTRID_EVENTS:-unset}"
python -c 'from astrid.airflow.arrival import realtime_schedule; from astrid.config import load_config
print("schedule=" + type(realtime_schedule(load_config())).__name__)'
"""


def _source(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ASTRID_", "AIRFLOW_CONN_"))}
    clean.update(
        PATH=f"{VENV_BIN}:{clean.get('PATH', '')}",  # as standalone.sh sets it
        PYTHONPATH=str(REPO / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        **env,
    )
    return subprocess.run(
        ["bash", "-c", PROBE], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )


def _facts(done: subprocess.CompletedProcess) -> dict[str, str]:
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_redis_answering_means_runs_on_arrival():
    if redis_unavailable():
        pytest.skip(redis_unavailable())
    url = "redis://127.0.0.1:6379/14"
    done = _source(ASTRID_INFERENCE_EVENTS_URL=url)
    facts = _facts(done)
    assert facts == {"enabled": "unset", "conn": url, "schedule": "AssetOrTimeSchedule"}, done.stderr
    assert "NOTICE" not in done.stderr


def test_redis_not_answering_falls_back_to_cron_with_a_notice():
    done = _source(ASTRID_INFERENCE_EVENTS_URL=f"redis://127.0.0.1:{free_port()}/0")
    facts = _facts(done)
    assert facts == {"enabled": "false", "conn": "unset", "schedule": "str"}, done.stderr
    why, notice = done.stderr.strip().splitlines()[-2:]
    assert why.startswith("astrid events unavailable: ConnectionError"), done.stderr
    assert notice.startswith("AstrID: NOTICE: arrival events are off for this run") and "cron only" in notice


def test_events_switched_off_by_configuration_stay_off():
    done = _source(ASTRID_INFERENCE_EVENTS_ENABLED="false")
    assert _facts(done) == {"enabled": "false", "conn": "unset", "schedule": "str"}
    assert "switched off" in done.stderr and "NOTICE" in done.stderr


def test_standalone_sources_it_before_airflow_starts():
    text = (REPO / "scripts" / "standalone.sh").read_text()
    assert text.index(". scripts/arrival-events.sh") < text.index("exec airflow standalone")


def test_make_up_runs_the_measured_preload_profile():
    """`make up` exports the settings of bench/latency.py's `preload` profile (the measured one)."""
    import re
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from latency import PROFILES
    finally:
        sys.path.remove(str(REPO / "bench"))
    text = (REPO / "scripts" / "standalone.sh").read_text()
    exported = dict(re.findall(r'^export (AIRFLOW__SCHEDULER__\w+)="\$\{\1:-([^}]*)\}"$', text, flags=re.M))
    assert exported == PROFILES["preload"]
    assert text.index("AIRFLOW__SCHEDULER__MP_START_METHOD") < text.index("exec airflow standalone")
