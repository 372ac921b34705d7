"""The DAGs' ``subtract`` task (issue 20) with ``dag.test()``: observations that arrived
``ingested`` (science + reference only, ``astrid ingest --no-subtract``) are subtracted, stored
and inferred in the same realtime run; a pair of two fields is rejected with the reason, never
passed on with a garbage difference.

Real Airflow (in-process task execution), a real SQLite catalog, real files from seeded pairs
(tests/subtraction_pairs.py), the shipped U-Net on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from astrid.airflow.demo import task_output
from tests.dag_runner import inprocess_env, run_dag, task_states
from tests.subtraction_pairs import make_pair, write_pair

SIZE = 384


@pytest.fixture(scope="module")
def env(airflow_db, tmp_path_factory):
    root = tmp_path_factory.mktemp("astrid-subtract")
    # the shared test machine is often busy: the pre-flight load limit must not skip the run
    with inprocess_env(
        root, ASTRID_INFERENCE_EVENTS_ENABLED="false", ASTRID_INFERENCE_MAX_LOAD_PER_CPU="1000"
    ):
        yield root


@pytest.fixture(scope="module")
def arrived(env, tmp_path_factory):
    """A good pair and a pair of two fields, ingested without subtraction (status ``ingested``)."""
    from astrid.airflow.hooks import CatalogHook
    from astrid.ingest import IngestRequest, ingestor_from_config

    folder = tmp_path_factory.mktemp("pairs")
    good = make_pair(31, SIZE, star_density=4000.0, n_transients=6, transient_snr=(20.0, 40.0))
    other = make_pair(32, SIZE, star_density=4000.0, n_transients=0)
    files = {
        "good": write_pair(good, folder, "good"),
        "bad": write_pair(good, folder, "bad", reference=other),
    }
    catalog = CatalogHook().get_conn()
    catalog.migrate()
    ingestor = ingestor_from_config(catalog, subtract=False)
    ids = {
        kind: ingestor.ingest(IngestRequest(str(f["science"]), str(f["reference"]), name=kind)).observation_id
        for kind, f in files.items()
    }
    assert {r["status"] for r in catalog.observations()} == {"ingested"}
    return catalog, ids, good


def test_realtime_run_subtracts_ingested_observations_then_infers_them(arrived):
    catalog, ids, pair = arrived
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 5})
    assert str(dag_run.state) == "success", task_states(dag_run)
    done = task_output(dag_run, "subtract")
    assert done["subtracted"] == [ids["good"]]
    (rejected,) = done["rejected"]
    assert rejected["observation_id"] == ids["bad"] and "NoOverlapError" not in rejected["reason"]
    assert rejected["reason"].startswith("subtraction: the reference does not overlap the science frame")
    # the bad pair: rejected with that reason, no difference made
    bad = catalog.get(ids["bad"])
    assert bad["status"] == "rejected" and bad["rejection_reason"] == rejected["reason"]
    assert bad["difference_uri"] is None
    # the good pair: difference, noise and aligned reference stored; method and figures in meta;
    # inferred in the same run
    good = catalog.get(ids["good"])
    assert good["status"] == "inferred", good["rejection_reason"]
    assert "/preprocessed/" in good["difference_uri"] and good["reference_uri"].endswith(
        "reference_aligned.fits"
    )
    sub = good["meta"]["subtraction"]
    assert sub["where"] == "dag" and sub["method"] == "alard-lupton" and sub["star_chi2_median"] < 1.5
    assert sub["reference_input_uri"].endswith("reference.fits") and sub["noise_uri"].endswith("noise.fits")
    assert "awaiting" not in good["meta"]
    report = task_output(dag_run, "report")
    assert report["processed_count"] == 1 and report["failed_count"] == 0
    found = catalog.detections(observation_id=ids["good"])
    tr = pair.transients
    hits = sum(
        any(np.hypot(d["x"] - x, d["y"] - y) <= 3 for d in found)
        for x, y in zip(tr["x"], tr["y"], strict=True)
    )
    assert hits >= len(tr["x"]) - 1 and len(found) - hits <= 2, (hits, len(found))
    # nothing left to subtract: the next run's subtract task does nothing
    again = run_dag("astrid_realtime_inference", {"max_observations": 5})
    assert (
        task_output(again, "subtract")["subtracted"] == []
        and catalog.get(ids["good"])["status"] == "inferred"
    )


@pytest.mark.parametrize("dag_id", ["astrid_realtime_inference", "astrid_batch_inference"])
def test_both_inference_dags_subtract_before_they_claim(airflow_db, dag_id):
    from astrid.airflow.demo import load_dag

    dag = load_dag(dag_id)
    subtract, claim = dag.get_task("subtract"), dag.get_task("claim")
    assert type(subtract).__name__ == "SubtractObservationsOperator"
    assert subtract.upstream_task_ids == {"preflight"} and claim.upstream_task_ids == {"subtract"}
    # the same claim size as the run and the run's lease; CPU work: not on the GPU pool/queue
    assert subtract.max_observations == claim.max_observations == "{{ params.max_observations }}"
    assert subtract.lease_minutes == claim.lease_minutes
    assert subtract.pool == "default_pool" != dag.get_task("infer").pool
