"""The nightly drift DAG for real: real inference records the statistics, an email arrives at an
aiosmtpd server and StatsD gauges at a UDP socket when the inputs shifted, and nothing is sent
when they did not.

In a child process (Airflow's Stats client and connections configured from a clean environment):
seed and infer a reference night with the shipped U-Net through the pipeline's own inference step
(``astrid.pipeline.infer_observations``, which records the inference statistics), move that
night's recorded times three days back (instead of waiting three days), seed and infer a current
night — with the survey's default conditions, or with bad seeing and a bright sky — and run
``astrid_drift_check`` with ``dag.test()``. ``ASTRID_INFERENCE_DRIFT_MIN_SAMPLES`` is lowered to
8 so two nights of 12 small frames are enough (the KS p-value still has to pass: for 12 against
12 values, D must exceed ~0.75).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dag_runner import run_child
from tests.dags.test_alerts_and_metrics import UdpSink, email_text
from tests.integration.standalone import SmtpSink

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys
from datetime import UTC, datetime, timedelta
sys.path[:0] = [os.path.join(os.environ["REPO"], "plugins"), os.environ["REPO"]]
import sqlalchemy as sa
from astrid.catalog import Catalog
from astrid.catalog.models import InferenceStatisticsRow, ObservationRow
from astrid.pipeline import RunInfo, infer_observations
from astrid.registry import ModelRegistry
from astrid.storage import StorageRoot
from astrid.survey import seed_survey
from tests.dag_runner import run_dag, task_states
from astrid.airflow.demo import task_output

spec = json.loads(os.environ["SCENARIO"])
url, root = os.environ["ASTRID_CATALOG_URL"], os.environ["ASTRID_STORAGE_ROOT"]
catalog, storage = Catalog(url), StorageRoot.from_uri(root)
catalog.migrate()
registry = ModelRegistry(os.environ["MLFLOW_TRACKING_URI"])

def night(prefix, seed, knobs):
    seed_survey(12, size=128, seed=seed, catalog_url=url, storage_root=storage, prefix=prefix, **knobs)
    run = RunInfo(run_id=f"drift-test:{prefix}", dag_id="astrid_realtime_inference", kind="realtime", task_id="infer")
    claims = catalog.claim(100, run.run_id, timedelta(minutes=30))
    infer_observations(claims, catalog=catalog, storage=storage, registry=registry, run=run,
                       model="models:/astrid-unet@champion", threshold=0.5, device="cpu", max_side=8192, track=False)

night("ref", 97000, {})
past = datetime.now(UTC) - timedelta(days=3)
with catalog.engine.begin() as conn:
    conn.execute(sa.update(InferenceStatisticsRow.__table__).values(recorded_at=past))
    conn.execute(sa.update(ObservationRow.__table__).values(inferred_at=past, updated_at=past))
night("cur", spec["seed"], spec["knobs"])
dag_run = run_dag("astrid_drift_check")
print("RESULT=" + json.dumps({"state": str(dag_run.state), "tasks": task_states(dag_run),
                              "report": task_output(dag_run, "drift_check")}))
"""


@pytest.fixture
def sink():
    s = SmtpSink()
    yield s
    s.stop()


def run_night(tmp_path: Path, scenario: dict, env: dict[str, str]) -> dict:
    env = {"SCENARIO": json.dumps(scenario), "ASTRID_INFERENCE_DRIFT_MIN_SAMPLES": "8", **env}
    return run_child(SCRIPT, tmp_path, env, marker="RESULT=")


def statsd_env(udp: UdpSink) -> dict[str, str]:
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(udp.port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
    }


def test_shifted_inputs_raise_one_drift_alert_gauges_and_a_retraining_request(tmp_path, sink):
    udp = UdpSink()
    try:
        result = run_night(
            tmp_path,
            {"seed": 98000, "knobs": {"seeing_fwhm": 9.0, "sky_level": 20000.0}},  # bad seeing, bright moon
            {**sink.connection_env(), **statsd_env(udp)},
        )
    finally:
        udp.stop()
    assert result["state"] == "success"
    report = result["report"]
    assert {"seeing", "sky"} <= set(report["drifted"]), report["table"]
    assert result["tasks"]["request_retraining"][0] == "success"  # the drift Asset was updated
    email = sink.wait_for(lambda m: "[AstrID] Drift: astrid_drift_check" in (m["Subject"] or ""), timeout=30)
    body = email_text(email)
    assert "drift against champion v1" in body and "<table" in body and "seeing" in body
    assert "oncall@example.org" in email["To"]
    assert sum("Drift" in (m["Subject"] or "") for m in sink.messages) == 1
    from tests.monitoring_config import map_statsd_name, parse_statsd_packet

    samples = {s.name: s for p in udp.packets for s in parse_statsd_packet(p)}
    seeing = samples["airflow.astrid.drift.seeing.astrid_drift_check"]
    assert float(seeing.value) == pytest.approx(
        next(t["d"] for t in report["tests"] if t["statistic"] == "seeing")
    )
    assert float(samples["airflow.astrid.drift.drifted.astrid_drift_check"].value) == len(report["drifted"])
    assert map_statsd_name(seeing.name, seeing.type) == (
        "astrid_drift_seeing",
        {"dag_id": "astrid_drift_check"},
    )


def test_unshifted_inputs_stay_quiet(tmp_path, sink):
    result = run_night(tmp_path, {"seed": 99000, "knobs": {}}, sink.connection_env())
    assert result["state"] == "success"
    report = result["report"]
    assert report["drifted"] == [] and report["reason"] == "", report["table"]
    tested = [t for t in report["tests"] if t["d"] is not None]
    assert {t["statistic"] for t in tested} >= {"sky", "seeing", "noise", "detections_per_mpix"}
    assert result["tasks"]["request_retraining"][0] == "skipped"  # no Asset event, no training
    assert not [m for m in sink.messages if "Drift" in (m["Subject"] or "")]
