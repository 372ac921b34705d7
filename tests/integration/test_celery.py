"""The nightly batch DAG on CeleryExecutor with two workers, the way docker-compose deploys it.

Separate ``airflow api-server``, ``scheduler``, ``dag-processor`` and ``triggerer`` processes;
two ``airflow celery worker -q default,gpu --concurrency 1`` processes (``w1@host``, ``w2@host``)
on a Redis broker; Airflow's metadata DB, the Celery result backend (``db+postgresql``) and the
observation catalog on throw-away PostgreSQL databases. Eight 256² observations, chunk size 2:
four mapped quality-gate + U-Net tasks, triggered through the REST API.

What it proves:

* the batch fan-out really spreads over workers: both worker names appear among the ``infer``
  map indexes (task instance ``hostname`` from the REST API), and each map index's Celery task id
  (``external_executor_id`` in the metadata DB) is in the log of the worker that name belongs to;
* every observation is processed exactly once: the chunks' observation ids are disjoint and cover
  all eight, each observation is inferred by this run only, its detection rows are exactly what the
  same model gives in-process, and ``inference_runs`` holds one row counting all eight.

Why both workers must take work: each worker runs one task at a time (``--concurrency 1``) and
Airflow's Celery config acknowledges late with a prefetch multiplier of 1, so a busy worker holds
no queued message; an ``infer`` task takes seconds (task process + torch + model), so with four
queued at once the idle worker always gets the next one.
"""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest

from tests.integration.standalone import (
    RedisDb,
    celery_env,
    cleanup,
    make_process_stack,
    postgres_metadata_env,
    redis_unavailable,
    task_instances,
)

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.slow]

BATCH = "astrid_batch_inference"
OBSERVATIONS, CHUNK, SIZE, THRESHOLD = 8, 2, 256, 0.5


@pytest.fixture(scope="module")
def services():
    from tests.catalog_helpers import postgres_unavailable

    reason = postgres_unavailable() or redis_unavailable()
    if reason:
        pytest.skip(reason)


def _xcom(stack, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict:
    r = stack.api(
        "GET",
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        params={"map_index": map_index, "deserialize": True},
    )
    r.raise_for_status()
    value = r.json()["value"]
    if isinstance(value, str):  # older API versions return the stringified value
        import ast

        value = ast.literal_eval(value)
    return value


def _external_executor_ids(metadata_url: str, dag_id: str, run_id: str, task_id: str) -> dict[int, str]:
    import sqlalchemy as sa

    engine = sa.create_engine(metadata_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT map_index, external_executor_id FROM task_instance "
                    "WHERE dag_id = :d AND run_id = :r AND task_id = :t"
                ),
                {"d": dag_id, "r": run_id, "t": task_id},
            )
            return {row.map_index: row.external_executor_id for row in rows}
    finally:
        engine.dispose()


def _reference_detections(observations: list[dict], storage_uri: str) -> dict[int, int]:
    """What the shipped model finds in each observation, computed here, in this process."""
    from astrid.catalog import Claim
    from astrid.ml.engine import get_engine
    from astrid.paths import shipped_model_path
    from astrid.pipeline import load_claim
    from astrid.storage import StorageRoot

    engine = get_engine(shipped_model_path(), device="cpu", batch_size=8)
    storage = StorageRoot.from_uri(storage_uri)
    counts = {}
    for obs in observations:
        claim = Claim(
            observation_id=obs["id"],
            name=obs["name"],
            science_uri=obs["science_uri"],
            reference_uri=obs["reference_uri"],
            difference_uri=obs["difference_uri"],
            truth_uri=None,
            run_id=None,
            lease_until=None,
        )
        triplet = load_claim(claim, storage, 8192)
        counts[obs["id"]] = len(engine.analyse(triplet, THRESHOLD)[1])
    return counts


def test_batch_fans_out_over_two_celery_workers_and_processes_each_observation_once(services):
    from astrid.catalog import Catalog
    from astrid.paths import shipped_model_path
    from astrid.registry import ModelRegistry
    from astrid.survey import seed_survey
    from tests.catalog_helpers import temporary_postgres_database

    with ExitStack() as resources:
        metadata_url = resources.enter_context(temporary_postgres_database("astrid_celery_meta"))
        catalog_url = resources.enter_context(temporary_postgres_database("astrid_celery_catalog"))
        broker = RedisDb()
        resources.callback(broker.release)
        stack = make_process_stack(
            {
                **postgres_metadata_env(metadata_url),
                **celery_env(broker.url, metadata_url),
                "ASTRID_CATALOG_URL": catalog_url,
                "ASTRID_INFERENCE_BATCH_CHUNK_SIZE": str(CHUNK),
                "ASTRID_INFERENCE_DEVICE": "cpu",
                "ASTRID_INFERENCE_CONFIDENCE_THRESHOLD": str(THRESHOLD),
                # manual runs only; and the pre-flight must not skip the run on a busy shared CI box
                "ASTRID_INFERENCE_REALTIME_ENABLED": "false",
                "ASTRID_INFERENCE_BATCH_ENABLED": "false",
                "ASTRID_INFERENCE_VALIDATION_ENABLED": "false",
                "ASTRID_INFERENCE_MAX_LOAD_PER_CPU": "1000",
            },
            workers=("w1", "w2"),
        )
        resources.callback(cleanup, stack)

        seeded = seed_survey(
            OBSERVATIONS,
            size=SIZE,
            seed=71000,
            catalog_url=catalog_url,
            storage_root=stack.env["ASTRID_STORAGE_ROOT"],
            prefix="celery",
        )
        assert len(seeded.observation_ids) == OBSERVATIONS
        # The registry's champion exists before the workers start (as after a deployment's first
        # validation run): two workers bootstrapping an empty registry at once would race.
        ModelRegistry(
            stack.env["MLFLOW_TRACKING_URI"], artifact_root=(stack.home / "astrid" / "mlartifacts").as_uri()
        ).ensure_champion(shipped_model_path())

        try:
            stack.start(timeout=420)
        except Exception:
            print(stack.log_tail(80))
            raise
        run_id = stack.trigger(BATCH)
        run = stack.wait_for_run(BATCH, run_id, timeout=480)
        tis = task_instances(stack, BATCH, run_id)
        assert run["state"] == "success", (
            {(t["task_id"], t["map_index"]): t["state"] for t in tis},
            stack.log_tail(),
        )

        # -- spread over both workers ---------------------------------------------------------
        infer = sorted((t for t in tis if t["task_id"] == "infer"), key=lambda t: t["map_index"])
        gate = [t for t in tis if t["task_id"] == "quality_gate"]
        assert [t["map_index"] for t in infer] == list(range(OBSERVATIONS // CHUNK))
        assert len(gate) == OBSERVATIONS // CHUNK
        assert all(t["state"] == "success" and t["queue"] == "gpu" and t["pool"] == "gpu" for t in infer), (
            infer
        )
        assert {t["executor"] for t in tis} <= {None, "CeleryExecutor"}
        hosts = {t["map_index"]: t["hostname"] for t in infer}
        assert set(hosts.values()) == {"w1", "w2"}, hosts
        # independent of the hostname callable: the worker that says it ran a task received it
        celery_ids = _external_executor_ids(
            stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], BATCH, run_id, "infer"
        )
        for index, host in hosts.items():
            task_id = celery_ids[index]
            assert task_id and re.fullmatch(r"[0-9a-f-]{36}", task_id), celery_ids
            other = "w2" if host == "w1" else "w1"
            assert task_id in stack.worker_log(host), (index, host, task_id)
            assert task_id not in stack.worker_log(other), (index, other, task_id)

        # -- each observation exactly once ----------------------------------------------------
        summaries = [_xcom(stack, BATCH, run_id, "infer", t["map_index"]) for t in infer]
        chunks = [s["observation_ids"] for s in summaries]
        flat = [i for chunk in chunks for i in chunk]
        assert sorted(flat) == sorted(seeded.observation_ids) and all(len(c) == CHUNK for c in chunks), chunks
        owner = f"{BATCH}:{run_id}"
        catalog = Catalog(catalog_url)
        resources.callback(catalog.dispose)
        counts = catalog.status_counts()
        assert counts["inferred"] == OBSERVATIONS and counts["claimed"] == 0, counts
        observations = catalog.observations()
        assert {o["claimed_by"] for o in observations} == {owner}
        assert {o["model_version"] for o in observations} == {"1"}
        detections = catalog.detections()
        assert {d["run_id"] for d in detections} <= {owner}
        per_observation = {o["id"]: 0 for o in observations}
        for d in detections:
            per_observation[d["observation_id"]] += 1
        assert len({(d["observation_id"], d["x"], d["y"]) for d in detections}) == len(detections), (
            "duplicate rows"
        )
        assert sum(s["detections_found"] for s in summaries) == len(detections)
        runs = catalog.runs(dag_id=BATCH)
        assert len(runs) == 1, runs
        assert (runs[0]["run_id"], runs[0]["claimed"], runs[0]["processed"], runs[0]["detections"]) == (
            run_id,
            OBSERVATIONS,
            OBSERVATIONS,
            len(detections),
        )
        stack.stop()  # free the CPU for the reference computation
        # the same model, run here in this process, finds the same detections per observation
        assert per_observation == _reference_detections(observations, stack.env["ASTRID_STORAGE_ROOT"])
