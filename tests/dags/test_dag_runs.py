"""The three DAGs end to end with ``dag.test()`` on SQLite over seeded observations.

Real Airflow (in-process task execution), real SQLite catalog, real files, real GX, the shipped
U-Net on CPU, a real MLflow store. The assertions are on what landed: statuses, detections
against injected truth, XCom summaries, MLflow runs and registry alias moves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astrid.airflow.demo import task_output
from tests.dag_runner import inprocess_env, run_dag
from tests.model_helpers import blind_copy

SIZE = 384


@pytest.fixture(scope="module")
def env(airflow_db, tmp_path_factory):
    """A fresh catalog, storage root and MLflow store for this module (under the test AIRFLOW_HOME)."""
    root = tmp_path_factory.mktemp("astrid-e2e")
    with inprocess_env(root, ASTRID_INFERENCE_PERFORMANCE_TRACKING="true"):
        yield root


@pytest.fixture(scope="module")
def catalog(env):
    from astrid.airflow.hooks import CatalogHook

    return CatalogHook().get_conn()


@pytest.fixture(scope="module")
def storage(env):
    import os

    from astrid.storage import StorageRoot

    return StorageRoot.from_uri(os.environ["ASTRID_STORAGE_ROOT"])


@pytest.fixture(scope="module")
def seeded(env, catalog, storage):
    from astrid.survey import seed_survey

    result = seed_survey(
        10, labelled=4, size=SIZE, seed=7100, catalog_url=catalog_url(), storage_root=storage, prefix="e2e"
    )
    return result


def catalog_url() -> str:
    import os

    return os.environ["ASTRID_CATALOG_URL"]


def _truth_for(storage, obs: dict):
    from astrid.imaging.truth import read_truth

    return read_truth(storage.resolve(obs["science_uri"].replace("_sci.fits", "_truth.json")))


def test_realtime_dag_infers_claimed_observations(seeded, catalog, storage):
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 3})
    assert str(dag_run.state) == "success"
    summary = task_output(dag_run, "report")
    assert summary["processed_count"] == 3
    assert summary["failed_count"] == 0
    assert summary["success_rate"] == 1.0
    assert summary["model_version"] == "1"
    inferred = catalog.observations(status="inferred")
    assert len(inferred) == 3
    # detections landed and match the injected truth (bright transients found within 3 px)
    bright_found = bright_total = 0
    for obs in inferred:
        found = catalog.detections(observation_id=obs["id"])
        for t in _truth_for(storage, obs):
            if t.snr >= 10:
                bright_total += 1
                bright_found += any(np.hypot(d["x"] - t.x, d["y"] - t.y) <= 3 for d in found)
    assert bright_total > 0
    assert bright_found / bright_total >= 0.9
    assert summary["detections_found"] == len(catalog.detections())
    # the run is recorded, and its MLflow run exists with the run id as tag
    runs = catalog.runs(dag_id="astrid_realtime_inference")
    assert runs[0]["processed"] == 3 and runs[0]["status"] == "success"
    infer = task_output(dag_run, "infer")
    from astrid.airflow.hooks import ModelRegistryHook

    registry = ModelRegistryHook().get_conn()
    mlrun = registry.client.get_run(infer["mlflow_run_id"])
    assert mlrun.data.tags["airflow.run_id"] == dag_run.run_id
    assert mlrun.data.metrics["processed_count"] == 3
    # star-residual vetting ran at the shipped card's level, and the run says so
    from astrid.ml.weights import load_model
    from astrid.paths import shipped_model_path

    level = load_model(shipped_model_path())[1].thresholds["star_residual_min_excess"]
    assert level is not None and infer["star_residual_vetting"] == level
    assert float(mlrun.data.params["star_residual_vetting"]) == level
    assert (
        Path(infer["catalog_uri"].removeprefix("file://"))
        .read_text()
        .startswith("observation_id,observation,x,y,ra,dec")
    )


def test_batch_dag_fans_out_over_the_rest(seeded, catalog):
    from astrid.config import load_config

    assert load_config().batch_chunk_size == 10
    import os

    os.environ["ASTRID_INFERENCE_BATCH_CHUNK_SIZE"] = "2"
    try:
        dag_run = run_dag("astrid_batch_inference", {})
    finally:
        del os.environ["ASTRID_INFERENCE_BATCH_CHUNK_SIZE"]
    assert str(dag_run.state) == "success"
    mapped = [ti for ti in dag_run.get_task_instances() if ti.task_id == "infer"]
    assert len(mapped) == 2  # the 3 remaining unlabelled observations in chunks of 2
    summary = task_output(dag_run, "report")
    assert summary["processed_count"] == 3
    counts = catalog.status_counts()
    assert counts["inferred"] == 6  # every unlabelled observation, once
    assert counts["preprocessed"] == 0 and counts["claimed"] == 0
    assert counts["ingested"] == 4  # the labelled validation set stays out of the queue


def test_rerunning_a_finished_run_duplicates_nothing(seeded, catalog):
    before = len(catalog.detections())
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 3})
    assert str(dag_run.state) == "success"
    assert task_output(dag_run, "report")["processed_count"] == 0  # nothing left to claim
    assert len(catalog.detections()) == before


def test_bad_observations_are_rejected_and_the_run_goes_on(seeded, catalog, storage):
    from astrid.catalog import NewObservation

    good = catalog.get(catalog.labelled(1)[0].observation_id)
    obs_dir = storage.path / "observations"
    broken = obs_dir / "broken_sci.fits"
    broken.write_bytes(storage.resolve(good["science_uri"]).read_bytes()[:5000])  # truncated
    nan_path = obs_dir / "nan_diff.fits"
    from astrid.imaging.fits import write_image

    write_image(nan_path, np.full((SIZE, SIZE), np.nan, dtype=np.float32))
    fresh = dict(
        survey="SYNTH",
        instrument="synthetic",
        filter="r",
        mjd=61000.0,
        exptime=30.0,
        ra_center=150.0,
        dec_center=2.0,
        truth_uri=None,
        labelled=False,
    )

    def like_good(name: str, **uris: str) -> NewObservation:
        """The labelled observation's files, but for ``uris``, as a fresh unlabelled arrival."""
        files = {k: good[k] for k in ("science_uri", "reference_uri", "difference_uri")}
        return NewObservation(name=name, **{**files, **uris}, **fresh)

    ids = catalog.register(
        [
            like_good("e2e-truncated", science_uri=storage.uri_for(broken)),
            like_good("e2e-nan", difference_uri=storage.uri_for(nan_path)),
            like_good("e2e-outside-root", science_uri="file:///etc/passwd"),
            like_good("e2e-ok"),
        ]
    )
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 10})
    assert str(dag_run.state) == "success"
    rows = {catalog.get(i)["name"]: catalog.get(i) for i in ids}
    assert rows["e2e-ok"]["status"] == "inferred"
    for name, needle in (
        ("e2e-truncated", "broken_sci.fits"),
        ("e2e-nan", "nan_diff.fits"),
        ("e2e-outside-root", "/etc/passwd"),
    ):
        assert rows[name]["status"] == "rejected", name
        assert needle in rows[name]["rejection_reason"], rows[name]["rejection_reason"]
    summary = task_output(dag_run, "report")
    assert summary["rejected_count"] == 3 and summary["failed_count"] == 0


def test_a_model_directory_under_the_model_roots_is_recorded_as_a_path_model(seeded, catalog):
    """model_version may name a model directory under ASTRID_INFERENCE_MODEL_ROOTS (default
    include/models): its detections are keyed ``path:<dir>@<sha12>``, never as if it were a
    registry version. A path outside the roots is refused by the DAG's params: no run."""
    from airflow.sdk.exceptions import ParamValidationError

    from astrid.catalog import NewObservation
    from astrid.ml.weights import read_card
    from astrid.paths import REPO_ROOT

    model = REPO_ROOT / "include" / "models" / "astrid-unet"
    good = catalog.get(catalog.labelled(1)[0].observation_id)
    [oid] = catalog.register(
        [
            NewObservation(
                name="e2e-path-model",
                science_uri=good["science_uri"],
                reference_uri=good["reference_uri"],
                difference_uri=good["difference_uri"],
            )
        ]
    )
    for outside in ("/etc", "/../../etc/passwd", f"{model}/../../../etc"):
        with pytest.raises(ParamValidationError):
            run_dag("astrid_realtime_inference", {"max_observations": 1, "model_version": outside})
    assert catalog.get(oid)["status"] == "preprocessed"  # nothing was claimed
    dag_run = run_dag("astrid_realtime_inference", {"max_observations": 10, "model_version": str(model)})
    assert str(dag_run.state) == "success"
    label = f"path:astrid-unet@{read_card(model).sha256[:12]}"
    assert task_output(dag_run, "report")["model_version"] == label
    assert catalog.get(oid)["status"] == "inferred"
    assert {d["model_version"] for d in catalog.detections(observation_id=oid)} == {label}


@pytest.fixture(scope="module")
def registry(env):
    from astrid.airflow.hooks import ModelRegistryHook

    return ModelRegistryHook().get_conn()


def test_validation_keeps_a_healthy_champion(seeded, registry):
    dag_run = run_dag("astrid_model_validation", {"dataset_size": 4})
    assert str(dag_run.state) == "success"
    scores = task_output(dag_run, "score_models")
    assert scores["champion"]["f1"] >= 0.8
    assert scores["champion"]["observations"] == 4
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states["keep"] == "success" and states["promote"] == "skipped" and states["rollback"] == "skipped"


def test_validation_promotes_a_better_challenger_and_rolls_back_a_degraded_champion(
    seeded, registry, tmp_path
):
    from astrid.paths import shipped_model_path

    healthy = registry.alias_version("champion")
    blind = registry.register(blind_copy(tmp_path), alias="champion", description="test: degraded model")
    challenger = registry.register(shipped_model_path(), alias="challenger")
    # a degraded champion and a healthy challenger: promote
    dag_run = run_dag("astrid_model_validation", {"dataset_size": 4})
    assert registry.alias_version("champion") == challenger
    assert registry.alias_version("challenger") is None
    # now degrade the champion again with no challenger and no other candidate scored: a
    # champion below the floor rolls back (with candidates, the best of them would be promoted)
    registry.set_alias("champion", blind)
    import os

    os.environ["ASTRID_INFERENCE_VALIDATION_CANDIDATES"] = "0"
    try:
        dag_run = run_dag("astrid_model_validation", {"dataset_size": 4})
    finally:
        del os.environ["ASTRID_INFERENCE_VALIDATION_CANDIDATES"]
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    assert states["rollback"] == "success"
    assert states["request_retraining"] == "success"  # the degraded champion asks for retraining
    assert registry.alias_version("champion") == challenger  # the previous champion
    assert healthy is not None
    # the serving-model change emitted Asset events
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent)).all()
    assert len(events) >= 2
