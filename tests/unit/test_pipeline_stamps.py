"""run_inference with the shipped model: photometry and stamps reach the catalog, the run's CSV and storage."""

from __future__ import annotations

import csv
import logging
from datetime import timedelta

import pytest
import torch
from astropy.io import fits
from PIL import Image

from astrid.catalog import Catalog
from astrid.ml.engine import InferenceEngine
from astrid.paths import shipped_model_path
from astrid.pipeline import CATALOG_COLUMNS, RunInfo, VersionedDetector, run_inference
from astrid.stamps import split_stamp_uri
from astrid.storage import StorageRoot
from astrid.survey import seed_survey

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def engine():
    return VersionedDetector(InferenceEngine.from_path(shipped_model_path(), device="cpu"), "1")


@pytest.fixture
def seeded(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    seed_survey(2, size=256, seed=501, catalog_url=url, storage_root=str(tmp_path / "store"), n_transients=8)
    catalog = Catalog(url)
    yield catalog, StorageRoot.from_uri(str(tmp_path / "store"))
    catalog.dispose()


def _run(catalog, storage, engine, run_id, **kwargs):
    claims = catalog.claim(10, run_id, timedelta(minutes=5))
    artifacts = storage.path / "runs" / run_id
    summary = run_inference(
        claims,
        catalog=catalog,
        storage=storage,
        detector=engine,
        run=RunInfo(run_id=run_id),
        threshold=0.5,
        max_side=8192,
        artifacts=artifacts,
        **kwargs,
    )
    return summary, artifacts


def test_stamps_and_photometry_reach_catalog_csv_and_storage(seeded, engine):
    catalog, storage = seeded
    summary, artifacts = _run(catalog, storage, engine, "run-1", max_stamps=3, zeropoint_key="NOSUCHKY")
    assert summary.processed_count == 2 and summary.detections_found >= 4
    rows = catalog.detections()
    for oid in {r["observation_id"] for r in rows}:
        mine = [r for r in rows if r["observation_id"] == oid]  # score order
        assert all(r["stamp_uri"] for r in mine[:3]) and not any(r["stamp_uri"] for r in mine[3:])
        prefixes = {split_stamp_uri(r["stamp_uri"])[0] for r in mine[:3]}
        assert len(prefixes) == 1 and [split_stamp_uri(r["stamp_uri"])[1] for r in mine[:3]] == [0, 1, 2]
        (prefix,) = prefixes
        assert Image.open(storage.resolve(prefix + ".png")).size == (4 * 63, 3 * 63)
        with fits.open(storage.resolve(prefix + ".fits")) as hdus:
            assert [h.name for h in hdus] == ["PRIMARY", "DET0000", "DET0001", "DET0002"]
            assert [hdus[i + 1].header["DETSCORE"] for i in range(3)] == [
                pytest.approx(r["score"]) for r in mine[:3]
            ]
    # every detection measured; the synthetic header's MAGZPT gives magnitudes
    assert all(r["flux_err"] > 0 and r["snr"] is not None for r in rows)
    assert all(r["mag"] is not None for r in rows if r["flux"] > 0)
    with (artifacts / "detections.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["observation_id", "observation", *CATALOG_COLUMNS, "stamp_uri"]
        assert {r["stamp_uri"] for r in reader if r["stamp_uri"]} == {
            r["stamp_uri"] for r in rows if r["stamp_uri"]
        }


def test_stamps_off_and_a_storage_failure_costs_only_the_stamps(seeded, engine, caplog):
    catalog, storage = seeded
    _run(catalog, storage, engine, "run-off", max_stamps=None)
    assert catalog.detections() and not any(r["stamp_uri"] for r in catalog.detections())
    assert not (storage.path / "runs" / "run-off" / "stamps").exists()

    with catalog.engine.begin() as conn:  # requeue both for a second run
        conn.exec_driver_sql("UPDATE observations SET status = 'preprocessed', model_version = NULL")
        conn.exec_driver_sql("DELETE FROM detections")
    blocked = storage.path / "runs" / "run-bad"
    blocked.mkdir(parents=True)
    (blocked / "stamps").write_text("a file where the stamps directory should be")
    with caplog.at_level(logging.WARNING):
        summary, _ = _run(catalog, storage, engine, "run-bad", max_stamps=5)
    assert summary.processed_count == 2 and summary.failed_count == 0
    assert len(catalog.detections()) == summary.detections_found > 0
    assert "stamps.failed" in caplog.text
