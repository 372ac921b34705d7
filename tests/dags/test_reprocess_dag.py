"""Reprocessing end to end with ``dag.test()``: the live realtime run writes model version 1, the
``astrid_reprocess`` DAG writes version 2 beside it without touching version 1, claims nothing,
and goes on where it stopped. Real Airflow (in-process), SQLite catalog, real files, the shipped
U-Net on CPU, a real MLflow registry (version 2 is the shipped model registered again as the
challenger: a distinct registry version, which is what results are keyed by)."""

from __future__ import annotations

from datetime import timedelta

from astrid.airflow.demo import task_output
from tests.dag_runner import run_dag
from tests.dags.test_dag_runs import catalog, env, storage  # noqa: F401 - module fixtures

SIZE = 256


def _snapshot(catalog, version):  # noqa: F811
    return [
        {k: d[k] for k in ("id", "observation_id", "x", "y", "score", "run_id")}
        for d in catalog.detections(model_version=version)
    ]


def test_reprocessing_writes_v2_beside_v1_and_resumes(env, catalog, storage):  # noqa: F811
    from astrid.airflow.hooks import ModelRegistryHook
    from astrid.paths import shipped_model_path
    from astrid.survey import seed_survey

    seed_survey(5, size=SIZE, seed=7300, catalog_url=str(catalog.url), storage_root=storage, prefix="rp")
    live = run_dag("astrid_realtime_inference", {"max_observations": 4})
    assert str(live.state) == "success"
    inferred = {o["id"]: o for o in catalog.observations(status="inferred")}
    assert len(inferred) == 4 and {o["model_version"] for o in inferred.values()} == {"1"}
    v1 = _snapshot(catalog, "1")
    assert v1, "the live run found detections"
    # the fifth observation is in the middle of a live run: claimed, with a lease
    (held,) = catalog.claim(1, "astrid_realtime_inference:live-run", timedelta(minutes=30))
    lease = catalog.get(held.observation_id)["lease_until"]

    registry = ModelRegistryHook().get_conn()
    assert registry.register(shipped_model_path(), alias="challenger") == "2"

    first = run_dag("astrid_reprocess", {"model_version": "challenger", "max_observations": 3})
    assert str(first.state) == "success"
    part = task_output(first, "reprocess")
    assert (part["model_version"], part["processed"], part["failed"], part["remaining"]) == ("2", 3, 0, True)
    second = run_dag("astrid_reprocess", {"model_version": "2"})  # goes on where it stopped
    rest = task_output(second, "reprocess")
    assert (rest["processed"], rest["remaining"]) == (2, False)
    assert set(part["observation_ids"]) | set(rest["observation_ids"]) == {*inferred, held.observation_id}

    # version 2 beside version 1; version 1 untouched, row for row
    assert _snapshot(catalog, "1") == v1
    for oid in inferred:
        assert set(catalog.results(oid)) == {"1", "2"}
        assert catalog.get(oid)["status"] == "inferred" and catalog.get(oid)["model_version"] == "1"
    assert len(catalog.detections(model_version="2")) == part["detections"] + rest["detections"]
    # the live claim was never taken: still the live run's, same lease
    row = catalog.get(held.observation_id)
    assert (row["status"], row["claimed_by"], row["lease_until"]) == (
        "claimed",
        "astrid_realtime_inference:live-run",
        lease,
    )
    # idempotent: again, nothing to do, nothing changed
    again = run_dag("astrid_reprocess", {"model_version": "challenger"})
    assert task_output(again, "reprocess")["processed"] == 0
    runs = catalog.runs(dag_id="astrid_reprocess")
    assert {r["kind"] for r in runs} == {"reprocess"} and sum(r["processed"] for r in runs) == 5


def test_reprocess_params_refuse_bad_values(env):  # noqa: F811
    import pytest
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    from astrid.airflow.reprocess import reprocess_params
    from astrid.config import load_config

    params = reprocess_params(load_config())
    for key, value in [
        ("observed_from", "yesterday"),
        ("observed_to", "2026-13-45T99"),
        ("model_version", "../../etc"),
        ("max_observations", 0),
        ("confidence_threshold", 1.0),
    ]:
        with pytest.raises(ParamValidationError, match=f"Invalid input for param {key}"):
            ParamsDict({**params}).__setitem__(key, value)
    ok = ParamsDict({**params})
    ok["observed_from"] = "2026-11-30T18:00:00Z"
    ok["observed_to"] = "2026-12-01"
    assert ok.dump()["observed_to"] == "2026-12-01"
