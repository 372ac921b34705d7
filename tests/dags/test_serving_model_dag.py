"""Promotion → warm-up → reprocessing, for real, with nothing duplicated.

In a child process (so the SMTP and Slack connections and Airflow's configuration come from a clean
environment): a real SQLite catalog with seeded observations, a real MLflow store holding a
degraded champion (the shipped model with its output bias at -40) and the shipped model as
challenger, the realtime DAG inferring two observations live, then the weekly validation DAG
(promotes the challenger, emits the serving-model Asset, announces it by email to an aiosmtpd
server and by webhook to a local HTTP server) and the serving DAG twice with ``dag.test()``,
then the realtime DAG again. ``dag.test`` runs one DAG: that the serving DAG is scheduled on the
Asset the promote task emits is checked on the parsed DAGs (tests/dags/test_dag_integrity.py),
not by a running scheduler here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dag_runner import run_child
from tests.dags.test_alerts_and_metrics import WebhookSink, email_text
from tests.integration.standalone import SmtpSink

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, sys
from datetime import UTC, datetime
from pathlib import Path
sys.path[:0] = [os.path.join(os.environ["REPO"], "plugins"), os.environ["REPO"]]
import sqlalchemy as sa
from astrid.airflow.demo import task_output
from astrid.catalog import Catalog
from astrid.catalog.models import ObservationRow
from astrid.paths import shipped_model_path
from astrid.registry import ModelRegistry
from astrid.survey import seed_survey
from tests.dag_runner import run_dag, task_states
from tests.model_helpers import blind_copy

url, work = os.environ["ASTRID_CATALOG_URL"], Path(os.environ["WORK"])
seed_survey(6, labelled=2, size=256, seed=96000, catalog_url=url, storage_root=os.environ["ASTRID_STORAGE_ROOT"], prefix="srv")
catalog = Catalog(url)
registry = ModelRegistry(os.environ["MLFLOW_TRACKING_URI"])
registry.register(blind_copy(work), alias="champion")
registry.register(shipped_model_path(), alias="challenger")

def snapshot():
    return {"observations": catalog.observations(), "detections": catalog.detections(),
            "statistics": catalog.statistics()}

out = {"live1": str(run_dag("astrid_realtime_inference", {"max_observations": 2}).state)}
# the survey's observation dates are in the past: say they were taken an hour ago
mjd_now = (datetime.now(UTC) - datetime(1858, 11, 17, tzinfo=UTC)).total_seconds() / 86400
with catalog.engine.begin() as conn:
    conn.execute(sa.update(ObservationRow.__table__).values(mjd=mjd_now - 1 / 24))
out["before"] = snapshot()
validation = run_dag("astrid_model_validation", {"dataset_size": 2})
out["validation"] = task_states(validation)
out["announced"] = task_output(validation, "promote")
out["champion"] = registry.alias_version("champion")
runs = []
for _ in range(2):
    serving = run_dag("astrid_serving_model")
    runs.append({"state": str(serving.state), "tasks": task_states(serving),
                 "warm": task_output(serving, "warm_model"), "reprocess": task_output(serving, "reprocess_recent")})
    runs[-1]["after"] = snapshot()
out["serving"] = runs
out["live2"] = str(run_dag("astrid_realtime_inference", {"max_observations": 10}).state)
out["end"] = snapshot()
print("RESULT=" + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("serving")
    sink, webhook = SmtpSink(), WebhookSink()
    try:
        env = {
            "WORK": str(tmp_path),
            "ASTRID_INFERENCE_PERFORMANCE_TRACKING": "false",
            **sink.connection_env(),
            **webhook.connection_env(),
        }
        result = run_child(SCRIPT, tmp_path, env, marker="RESULT=", timeout=1200)
        announcement = sink.wait_for(lambda m: "Serving model changed" in (m["Subject"] or ""), timeout=30)
        yield {**result, "email": announcement, "emails": list(sink.messages), "slack": list(webhook.bodies)}
    finally:
        sink.stop()
        webhook.stop()


def _per_version(snapshot: dict, version: str) -> dict[int, list]:
    out: dict[int, list] = {}
    for d in snapshot["detections"]:
        if d["model_version"] == version:
            out.setdefault(d["observation_id"], []).append((d["x"], d["y"], d["score"]))
    return out


def test_the_promotion_is_announced_with_the_comparison_table(scenario):
    assert scenario["live1"] == "success"
    states = scenario["validation"]
    assert states["promote"][0] == "success" and states["keep"][0] == "skipped"
    assert scenario["champion"] == "2"
    assert scenario["announced"].startswith("promote: champion v1 -> v2")
    assert "| champion | 1 |" in scenario["announced"] and "| challenger | 2 |" in scenario["announced"]
    email = scenario["email"]
    assert email["Subject"].startswith("[AstrID] Serving model changed: promote: champion v1 -> v2")
    body = email_text(email)
    assert "<table" in body and "<td>challenger</td>" in body and "<td>champion</td>" in body
    assert "oncall@example.org" in email["To"]
    assert sum("Serving model changed" in (m["Subject"] or "") for m in scenario["emails"]) == 1
    slack = [b["text"] for b in scenario["slack"] if "Serving model changed" in b["text"]]
    assert len(slack) == 1 and "```" in slack[0] and "| challenger | 2 |" in slack[0]


def test_the_new_champion_is_warmed_and_recent_observations_reprocessed_once(scenario):
    first, second = scenario["serving"]
    assert first["state"] == second["state"] == "success"
    assert first["warm"]["version"] == "2" and first["warm"]["device"] == "cpu"
    assert first["reprocess"]["model_version"] == "2"
    assert (
        first["reprocess"]["processed"] == 6 and first["reprocess"]["failed"] == 0
    )  # every recent observation
    # the second run finds everything done: nothing processed, nothing added
    assert second["reprocess"]["processed"] == 0 and second["reprocess"]["remaining"] is False
    assert _per_version(second["after"], "2") == _per_version(first["after"], "2")
    assert len(_per_version(first["after"], "2")) >= 1  # the good model found transients


def test_reprocessing_took_nothing_from_the_live_queue(scenario):
    before = {o["id"]: o for o in scenario["before"]["observations"]}
    after = {o["id"]: o for o in scenario["serving"][0]["after"]["observations"]}
    for oid, row in before.items():
        for key in ("status", "claimed_by", "lease_until", "model_version", "attempts"):
            assert after[oid][key] == row[key], (oid, key)
    assert sorted(o["status"] for o in before.values()) == [
        "inferred",
        "inferred",
        "ingested",
        "ingested",
        "preprocessed",
        "preprocessed",
    ]
    # the live results of the old champion are untouched
    assert _per_version(scenario["serving"][0]["after"], "1") == _per_version(scenario["before"], "1")
    # reprocessing records no drift statistics (old observations must not look like new inputs)
    assert {s["model_version"] for s in scenario["serving"][1]["after"]["statistics"]} == {"1"}


def test_live_inference_after_reprocessing_duplicates_nothing(scenario):
    assert scenario["live2"] == "success"
    end = scenario["end"]
    assert sorted(o["status"] for o in end["observations"]) == ["inferred"] * 4 + ["ingested"] * 2
    reprocessed = _per_version(scenario["serving"][1]["after"], "2")
    live = _per_version(end, "2")
    for oid, found in live.items():
        assert sorted(found) == sorted(reprocessed[oid]), oid  # the same set, not twice
    rows = [(d["observation_id"], d["model_version"], d["x"], d["y"]) for d in end["detections"]]
    assert len(rows) == len(set(rows))
