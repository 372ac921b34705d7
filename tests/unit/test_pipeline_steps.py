"""The core steps the operators are thin over, called directly (no Airflow): claim, chunk, infer
from the registry with artifacts and MLflow tracking, score models, apply a validation decision.

Real components: a SQLite catalog, seeded FITS files on disk, the shipped U-Net on CPU and a real
MLflow store (SQLite) as the registry.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest

from astrid.catalog import Catalog
from astrid.metrics import metric_name
from astrid.pipeline import (
    RunInfo,
    artifacts_dir,
    chunks,
    claim_observations,
    confidence_threshold,
    infer_observations,
)
from astrid.registry import CHALLENGER, CHAMPION, INFERENCE_EXPERIMENT, ModelRegistry
from astrid.review import REVIEW_LIMIT
from astrid.storage import StorageRoot
from astrid.tracking import flat_metrics
from astrid.validation import KEEP, PROMOTE, apply_decision, decide_from_scores, score_models
from tests.recording_metrics import RecordingMetrics

SIZE = 256
RUN = RunInfo(
    run_id="astrid_realtime_inference:manual__1",
    dag_id="astrid_realtime_inference",
    kind="realtime",
    task_id="infer",
    dag_run_id="manual__1",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 seeded observations (2 labelled, kept out of claims), a catalog, a storage root and an MLflow registry."""
    from astrid.survey import seed_survey

    root = tmp_path_factory.mktemp("steps")
    url = f"sqlite:///{root}/catalog.db"
    storage = StorageRoot.from_uri((root / "storage").as_uri())
    seed_survey(4, labelled=2, size=SIZE, seed=81000, catalog_url=url, storage_root=storage, prefix="steps")
    catalog = Catalog(url)
    catalog.migrate()
    registry = ModelRegistry(f"sqlite:///{root}/mlflow.db")
    yield {"catalog": catalog, "storage": storage, "registry": registry}
    catalog.dispose()


def test_chunks_and_threshold():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert chunks([1, 2], 0) == [[1], [2]]  # a size below 1 means one per chunk
    assert chunks([], 3) == []
    assert confidence_threshold("0.25") == 0.25 and confidence_threshold(0.999) == 0.999
    for bad in (-0.1, 0, 1, 1.5, "2", "nan", "inf"):  # 0: one whole-frame detection; 1: none, ever
        with pytest.raises(ValueError, match="between 0 and 1"):
            confidence_threshold(bad)
    with pytest.raises(ValueError, match="not a number"):
        confidence_threshold("half")


def test_artifacts_dir_is_per_task_and_map_index_and_safe(tmp_path):
    storage = StorageRoot.from_uri(tmp_path.as_uri())
    mapped = RunInfo(
        run_id="x", dag_id="d", task_id="infer", dag_run_id="scheduled__2026-01-01T00:00+00:00", map_index=3
    )
    path = Path(artifacts_dir(storage, mapped).path)
    assert path.relative_to(tmp_path).parts == ("runs", "d", "scheduled__2026-01-01T00_00_00_00", "infer-3")


def test_claim_observations_leases_counts_and_is_retry_safe(world):
    catalog, metrics = world["catalog"], RecordingMetrics()
    run = RunInfo(run_id="d:claim-test", dag_id="d")
    claims = claim_observations(catalog, run, 2, lease_minutes=5, max_attempts=3, metrics=metrics)
    assert len(claims) == 2
    assert ("incr", metric_name("astrid.observations.claimed", "d"), 2) in metrics.sent
    again = claim_observations(catalog, run, 2, lease_minutes=5, max_attempts=3)  # a task retry
    assert {c.observation_id for c in again} == {c.observation_id for c in claims}
    catalog.release(run.run_id)


def test_infer_observations_loads_the_champion_writes_artifacts_and_tracks_the_run(world):
    catalog, storage, registry = world["catalog"], world["storage"], world["registry"]
    claims = catalog.claim(3, RUN.run_id, timedelta(minutes=10))
    metrics = RecordingMetrics()
    summary = infer_observations(
        claims,
        catalog=catalog,
        storage=storage,
        registry=registry,
        run=RUN,
        model="models:/astrid-unet@champion",
        threshold="0.5",
        batch_size=4,
        device="cpu",
        max_side=8192,
        vetting="card",
        track=True,
        metrics=metrics,
    )
    assert registry.alias_version(CHAMPION) == "1"  # an empty registry got the shipped model
    assert summary["processed_count"] == 2 and summary["failed_count"] == 0
    assert summary["model_version"] == "1" and summary["device"] == "cpu"
    assert isinstance(summary["star_residual_vetting"], float)  # the card's level, in force
    assert catalog.status_counts().get("inferred") == 2
    csv = Path(summary["catalog_uri"].removeprefix("file://"))
    assert csv.exists() and csv.parent == Path(artifacts_dir(storage, RUN).path)
    assert any(stat == metric_name("astrid.model.load_time", RUN.dag_id) for _, stat, _ in metrics.sent)
    run = registry.client.get_run(summary["mlflow_run_id"])
    assert run.info.run_name == "astrid_realtime_inference/manual__1"
    assert run.data.tags["airflow.run_id"] == "manual__1" and run.data.tags["airflow.task_id"] == "infer"
    assert run.data.params["model_version"] == "1" and run.data.params["observations"] == "2"
    assert run.data.metrics["processed_count"] == 2
    experiment = registry.client.get_experiment(run.info.experiment_id)
    assert experiment.name == INFERENCE_EXPERIMENT
    assert [a.path for a in registry.client.list_artifacts(run.info.run_id)] == ["detections.csv"]


def test_untracked_and_empty_steps_log_nothing(world):
    summary = infer_observations(
        [],
        catalog=world["catalog"],
        storage=world["storage"],
        registry=world["registry"],
        run=RUN,
        model="1",
        threshold=0.5,
        max_side=8192,
        vetting=None,
        track=True,
    )
    assert summary["processed_count"] == 0 and "mlflow_run_id" not in summary
    assert summary["star_residual_vetting"] == "off"


def test_score_models_logs_each_alias_and_gauges_the_champion_f1(world):
    catalog, storage, registry = world["catalog"], world["storage"], world["registry"]
    labelled = catalog.labelled(10)
    assert len(labelled) == 2
    metrics = RecordingMetrics()
    scores = score_models(
        registry,
        labelled,
        storage,
        threshold=0.5,
        device="cpu",
        max_side=8192,
        dag_run_id="manual__v",
        dag_id="astrid_model_validation",
        metrics=metrics,
    )
    assert scores["candidates"] == []  # nothing registered but the champion yet
    assert "| champion | 1 |" in scores["table"] and "efficiency 4.5–7" in scores["table"]
    assert {"efficiency_snr_4_5_to_7", "efficiency_snr_7_to_12", "efficiency_snr_ge_12"} <= set(
        scores[CHAMPION]
    )
    assert scores[CHAMPION]["version"] == "1" and 0.0 <= scores[CHAMPION]["f1"] <= 1.0
    assert (
        "gauge",
        metric_name("astrid.validation.f1", "astrid_model_validation"),
        scores[CHAMPION]["f1"],
    ) in (metrics.sent)
    runs = registry.client.search_runs(
        [registry.experiment_id("astrid-validation")], "tags.`airflow.run_id` = 'manual__v'"
    )
    assert sorted(r.info.run_name for r in runs) == ["compare-manual__v", "validate-champion-v1"]
    validated = next(r for r in runs if r.info.run_name == "validate-champion-v1")
    assert validated.data.metrics["f1"] == pytest.approx(scores[CHAMPION]["f1"])
    # the review a person looks at: the plot, the gallery page, a stamp per missed/false case
    review = {a.path for a in registry.client.list_artifacts(validated.info.run_id, "review")}
    assert {"review/index.html", "review/recall_vs_snr.png", "review/efficiency_vs_snr.png"} <= review
    champion = scores[CHAMPION]
    missed = champion["truth"] - champion["true_positives"]
    stamps = {
        kind: [a.path for a in registry.client.list_artifacts(validated.info.run_id, f"review/{kind}")]
        for kind in ("missed", "false")
    }
    assert len(stamps["missed"]) == min(missed, REVIEW_LIMIT)
    assert len(stamps["false"]) == min(champion["false_positives"], REVIEW_LIMIT)
    page = Path(registry.client.download_artifacts(validated.info.run_id, "review/index.html")).read_text()
    assert f"Missed transients ({len(stamps['missed'])} of {missed}" in page
    assert all(f"src='{path.removeprefix('review/')}'" in page for path in stamps["missed"] + stamps["false"])
    decision = decide_from_scores(scores, min_f1=0.0)
    assert decision.action == KEEP and decision.to_xcom()["reason"].startswith("champion v1")


def test_apply_decision_moves_the_alias_and_keep_touches_nothing(world):
    registry = world["registry"]
    shipped = registry.resolve("1").path
    v2 = registry.register(shipped, alias=CHALLENGER, description="test challenger")
    assert apply_decision(None, KEEP, {"reason": "holds", "target_version": None}) == "holds"
    said = apply_decision(registry, PROMOTE, {"reason": "better", "target_version": v2}, run_id="r")
    assert said == f"champion v1 -> v{v2} (better)"
    assert registry.alias_version(CHAMPION) == v2 and registry.alias_version(CHALLENGER) is None
    assert registry.champion_history()[-1] == "1"
    with pytest.raises(ValueError, match="expected promote"):
        apply_decision(registry, "delete", {"reason": "", "target_version": v2})


def test_flat_metrics_keeps_finite_numbers_and_names_snr_bins():
    score = {
        "version": "3",
        "f1": 0.5,
        "precision": float("nan"),
        "ok": True,
        "recall_by_snr": [
            {"label": "5–10", "n": 4, "recall": 0.75},
            {"label": "≥10", "n": 0, "recall": None},
        ],
    }
    flat = flat_metrics(score)
    assert flat == {"f1": 0.5, "recall_snr_5_10": 0.75}
    assert all(math.isfinite(v) for v in flat.values())


def test_demo_truth_recall_matches_one_to_one_within_3_px(tmp_path):
    """Two transients 2 px apart and one detection between them: one match, not two (the demo
    counts as the evaluation does, astrid.ml.scoring.match_detections); a 5 px miss is no match."""
    import json

    from astrid.airflow.demo import truth_recall
    from astrid.catalog import NewObservation
    from tests.catalog_helpers import FakeDetection

    storage = StorageRoot.from_uri(tmp_path.as_uri())
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    catalog.migrate()
    truth = [
        {"x": 10.0, "y": 10.0, "flux": 1.0, "snr": 9.0, "host": "blank"},
        {"x": 12.0, "y": 10.0, "flux": 1.0, "snr": 9.0, "host": "blank"},
        {"x": 50.0, "y": 50.0, "flux": 1.0, "snr": 9.0, "host": "blank"},
    ]
    (tmp_path / "o_truth.json").write_text(json.dumps(truth))
    catalog.register([NewObservation(name="o", science_uri="o_sci.fits", reference_uri="o_ref.fits")])
    (claim,) = catalog.claim(1, "r", timedelta(minutes=5))
    found = [FakeDetection(11.0, 10.0, None, None, 0.9, 1.0), FakeDetection(55.0, 50.0, None, None, 0.8, 1.0)]
    catalog.complete(claim, "r", "1", found)
    assert truth_recall(catalog, storage) == (1, 3)
    catalog.dispose()


def test_analyse_claim_reads_detects_vets_and_measures_one_observation(world):
    """The one path an observation takes through the detector (live queue and reprocessing):
    bounded read, detections above the threshold, photometry on each; bad data raises an
    ObservationError naming the observation, so the caller fails that observation alone."""
    from dataclasses import replace

    from astrid.errors import ObservationError
    from astrid.imaging.fits import ReadLimits
    from astrid.pipeline import analyse_claim, load_detector

    claim = world["catalog"].labelled(1)[0]
    detector = load_detector(world["registry"], "champion", device="cpu").detector
    triplet, probability, detections = analyse_claim(
        claim, world["storage"], detector, threshold=0.5, max_side=4096
    )
    assert probability.shape == triplet.difference.shape == (SIZE, SIZE)
    assert detections and all(d.score >= 0.5 for d in detections)
    assert all(d.flux_err > 0 and math.isfinite(d.snr) for d in detections)  # measured
    vetted_off = analyse_claim(
        claim, world["storage"], detector, threshold=0.5, max_side=4096, min_excess=None
    )[2]
    assert len(vetted_off) >= len(detections)  # vetting can only drop candidates
    with pytest.raises(ObservationError, match=claim.name):
        analyse_claim(claim, world["storage"], detector, threshold=0.5, max_side=SIZE - 1)
    with pytest.raises(ObservationError, match="header cards"):
        analyse_claim(
            claim,
            world["storage"],
            detector,
            threshold=0.5,
            max_side=4096,
            limits=ReadLimits(max_header_cards=36),
        )
    with pytest.raises(ObservationError, match="no difference image"):
        analyse_claim(
            replace(claim, difference_uri=None), world["storage"], detector, threshold=0.5, max_side=4096
        )
