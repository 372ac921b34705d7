"""Arrival to detections with no manual trigger: a real `airflow standalone` with its real
triggerer, the local Redis (a database and a channel of this module's own), `astrid ingest` as a
user runs it. The realtime DAG is scheduled on "arrival or cron" (every minute here), so a
message that is lost — published to nobody — is swept up by the next cron run."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import uuid

import pytest

from tests.integration.standalone import (
    BIN,
    REPO,
    RedisDb,
    cleanup,
    events_env,
    make_standalone,
    redis_unavailable,
    wait_for_listener,
)

pytestmark = [pytest.mark.standalone, pytest.mark.slow]
REALTIME = "astrid_realtime_inference"
SIZE = 256
MAX_OBSERVATIONS = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    redis_db = RedisDb()
    channel = f"astrid-it-{uuid.uuid4().hex[:8]}"
    instance = make_standalone(
        {
            **events_env(redis_db.url, channel, 0.5),
            "ASTRID_INFERENCE_SCHEDULE_REALTIME": "* * * * *",
            "ASTRID_INFERENCE_MAX_OBSERVATIONS": str(MAX_OBSERVATIONS),  # a burst outgrows one claim
            "ASTRID_INFERENCE_BATCH_ENABLED": "false",
            "ASTRID_INFERENCE_VALIDATION_ENABLED": "false",
            "ASTRID_INFERENCE_PERFORMANCE_TRACKING": "false",
            "ASTRID_INFERENCE_MAX_LOAD_PER_CPU": "1000",  # a shared test box must not skip the run
        }
    )
    try:
        instance.start()
        instance.api("PATCH", f"/api/v2/dags/{REALTIME}", json={"is_paused": False}).raise_for_status()
        wait_for_listener(redis_db.client, channel)  # the triggerer listens: a ring now is heard
    except Exception:
        print(instance.log_tail(200))
        cleanup(instance)
        redis_db.release()
        raise
    instance.sources = tmp_path_factory.mktemp("incoming")
    yield instance
    cleanup(instance)
    redis_db.release()


def _ingest(stack, seed: int, **env: str) -> dict:
    from astrid.imaging.synthetic import make_observation, write_observation

    files = write_observation(make_observation(seed, size=SIZE), stack.sources, f"it{seed}")
    args = [str(BIN / "astrid"), "ingest", "--json"]
    for role in ("science", "reference", "difference"):
        args += [f"--{role}", files[f"{role}_uri"]]
    done = subprocess.run(
        args,
        env={**stack.env, "PYTHONPATH": str(REPO / "plugins"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait(predicate, timeout: float, what: str, stack) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout}s: {stack.log_tail(80)}")


def _quiet_window(stack) -> None:
    """Start a step with no realtime run active, none waiting to be created from a queued asset
    event, and 20+ s before the next (per-minute) cron tick, so that neither the cron run nor a
    run left from an earlier step's message can be the one that claims what the step ingests.
    The scheduler creates a cron run a second or more after its tick on a loaded machine, so the
    window opens 8 s past the minute, and the run list must be empty twice, 3 s apart."""

    def quiet() -> bool:
        runs = stack.api("GET", f"/api/v2/dags/{REALTIME}/dagRuns", params={"state": ["queued", "running"]})
        queued = stack.api("GET", f"/api/v2/dags/{REALTIME}/assets/queuedEvents")
        pending = queued.ok and queued.json().get("total_entries", 0) > 0
        return runs.ok and runs.json()["total_entries"] == 0 and not pending

    def idle() -> bool:
        if not (8 <= time.gmtime().tm_sec <= 37 and quiet()):
            return False
        time.sleep(3)
        return quiet()

    _wait(idle, 300, "a quiet moment", stack)


def _run_of(stack, catalog, observation_id: int) -> dict:
    run_id = catalog.get(observation_id)["claimed_by"].split(":", 1)[1]
    r = stack.api("GET", f"/api/v2/dags/{REALTIME}/dagRuns/{run_id}")
    r.raise_for_status()
    return r.json()


def test_an_ingested_observation_starts_a_run_and_its_detections_land(stack):
    from astrid.catalog import Catalog

    catalog = Catalog(stack.env["ASTRID_CATALOG_URL"])
    _quiet_window(stack)
    arrived = _ingest(stack, 52000)
    assert arrived["created"] and arrived["announced"], arrived
    oid = arrived["observation_id"]
    _wait(lambda: catalog.get(oid)["status"] == "inferred", 240, "the observation inferred", stack)
    run = _run_of(stack, catalog, oid)
    assert run["run_type"] == "asset_triggered", run  # the message, not the cron, nor a person
    assert run["triggered_by"] != "rest_api"
    assert catalog.results(oid) == {catalog.get(oid)["model_version"]: len(catalog.detections(oid))}
    assert catalog.detections(oid), "the synthetic frame's transients were found"
    events = stack.api("GET", "/api/v2/assets/events", params={"limit": 50}).json()["asset_events"]
    assert any((e.get("extra") or {}).get("from_trigger") for e in events), events


def test_a_lost_message_is_swept_up_by_the_cron(stack):
    from astrid.catalog import Catalog

    catalog = Catalog(stack.env["ASTRID_CATALOG_URL"])
    _quiet_window(stack)
    before = {
        r["dag_run_id"]
        for r in stack.api("GET", f"/api/v2/dags/{REALTIME}/dagRuns", params={"limit": 100}).json()[
            "dag_runs"
        ]
    }
    # the publisher's doorbell is off: the message is never sent (as when pub/sub drops it)
    arrived = _ingest(stack, 52001, ASTRID_INFERENCE_EVENTS_ENABLED="false")
    assert arrived["created"] and not arrived["announced"]
    oid = arrived["observation_id"]
    _wait(lambda: catalog.get(oid)["status"] == "inferred", 200, "the cron sweep", stack)
    run = _run_of(stack, catalog, oid)
    assert run["run_type"] == "scheduled" and run["dag_run_id"] not in before, run
    assert catalog.get(oid)["attempts"] == 0  # processed once, by that run
    new = [
        r
        for r in stack.api("GET", f"/api/v2/dags/{REALTIME}/dagRuns", params={"limit": 100}).json()[
            "dag_runs"
        ]
        if r["dag_run_id"] not in before
    ]
    assert not [r for r in new if r["run_type"] == "asset_triggered"], "no message, no asset-triggered run"


BURST, PACE = 8, 0.5


def _runs(stack) -> list[dict]:
    r = stack.api("GET", f"/api/v2/dags/{REALTIME}/dagRuns", params={"limit": 100, "order_by": "-run_after"})
    r.raise_for_status()
    return r.json()["dag_runs"]


def test_a_burst_coalesces_into_a_few_runs(stack):
    """A message every PACE seconds, BURST of them, more than one run claims (MAX_OBSERVATIONS):
    a message that arrives while a run is active waits (max_active_runs=1) and is folded into the
    next run, and a run whose claim is full while more wait rings for the next one itself. So:
    fewer runs than messages, never two at once, every observation processed exactly once, and
    the follow-up ring went through the real triggerer."""
    from astrid.catalog import Catalog
    from astrid.events import WAITING, RedisDoorbell
    from astrid.imaging.synthetic import make_observation, write_observation
    from astrid.ingest import Ingestor, IngestRequest
    from astrid.storage import StorageRoot

    catalog = Catalog(stack.env["ASTRID_CATALOG_URL"])
    ingestor = Ingestor(  # the code path of the CLI and the API, in-process to keep the pace
        catalog,
        StorageRoot.from_uri(stack.env["ASTRID_STORAGE_ROOT"]),
        doorbell=RedisDoorbell(
            stack.env["ASTRID_INFERENCE_EVENTS_URL"], stack.env["ASTRID_INFERENCE_EVENTS_CHANNEL"]
        ),
    )
    files = [
        write_observation(make_observation(53000 + i, size=SIZE), stack.sources, f"burst{i}")
        for i in range(BURST)
    ]
    _quiet_window(stack)
    before = {r["dag_run_id"] for r in _runs(stack)}
    ids, began = [], time.monotonic()
    for i, f in enumerate(files):
        time.sleep(max(0.0, began + i * PACE - time.monotonic()))
        result = ingestor.ingest(
            IngestRequest(
                science=f["science_uri"], reference=f["reference_uri"], difference=f["difference_uri"]
            )
        )
        assert result.created and result.announced, result
        ids.append(result.observation_id)
    done = {"inferred", "failed", "rejected"}
    _wait(lambda: all(catalog.get(i)["status"] in done for i in ids), 300, "the burst processed", stack)
    _wait(
        lambda: not [r for r in _runs(stack) if r["state"] in ("queued", "running")], 120, "runs idle", stack
    )

    for oid in ids:
        row = catalog.get(oid)
        assert (row["status"], row["attempts"]) == ("inferred", 0), row
        assert len(catalog.results(oid)) == 1  # processed once
    new = [r for r in _runs(stack) if r["dag_run_id"] not in before]
    triggered = sorted((r for r in new if r["run_type"] == "asset_triggered"), key=lambda r: r["start_date"])
    claimed_by = {catalog.get(i)["claimed_by"].split(":", 1)[1] for i in ids}
    assert claimed_by <= {r["dag_run_id"] for r in new}
    # never two runs at once (max_active_runs=1 holds for asset-triggered runs too) ...
    for earlier, later in itertools.pairwise(triggered):
        assert later["start_date"] >= earlier["end_date"], (earlier, later)
    # ... fewer runs than messages: 8 arrivals need at least 3 claims of 3, and got at most 5 runs
    assert 1 <= len(triggered) <= 5, [(r["dag_run_id"], r["start_date"], r["end_date"]) for r in triggered]
    # a full claim with more waiting rang for the next run, and the triggerer turned it into one
    events = stack.api("GET", "/api/v2/assets/events", params={"limit": 100}).json()["asset_events"]
    payloads = [((e.get("extra") or {}).get("payload") or {}).get("data") for e in events]
    assert any(WAITING in str(p) for p in payloads), payloads
