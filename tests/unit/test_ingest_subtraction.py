"""Ingest with only a science and a reference image (issue 20): AstrID aligns, PSF-matches and
subtracts on ingest, through the CLI and POST /astrid/observations, over real seeded pairs
(tests/subtraction_pairs.py: one sky rendered twice through two WCSs, two PSFs, two flux scales
and two noise draws), a real SQLite catalog and real files. A pair that gives no honest
difference is refused with nothing registered and nothing left in storage.

The API's dependency overrides (the test's own catalog and storage root instead of the Airflow
connections) are those of tests/unit/test_ingest_api.py; auth is real."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from astrid.catalog import Catalog
from astrid.cli import main
from astrid.storage import StorageRoot
from tests.subtraction_pairs import make_pair, write_pair
from tests.unit.test_status_api import _bearer, auth  # noqa: F401 - a real admin JWT

SIZE = 384


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """A good pair (shifted, rotated, other seeing and flux scale) and a bad one: the same science
    with the reference of another field."""
    folder = tmp_path_factory.mktemp("pairs")
    good = make_pair(11, SIZE, star_density=4000.0, n_transients=6)
    other = make_pair(12, SIZE, star_density=4000.0, n_transients=0)
    return {
        "good": write_pair(good, folder, "good"),
        "bad": write_pair(good, folder, "bad", reference=other),
        "truth": good,
    }


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "false")
    storage = tmp_path / "storage"
    storage.mkdir()
    return f"sqlite:///{tmp_path / 'catalog.db'}", storage


def _cli(place, files, *extra: str) -> list[str]:
    catalog_url, storage = place
    return ["ingest", "--catalog", catalog_url, "--storage", storage.as_uri(),
            "--science", str(files["science"]), "--reference", str(files["reference"]), *extra]  # fmt: skip


def _stored(storage: Path) -> list[str]:
    return sorted(p.name for p in storage.rglob("*") if p.is_file() and p.suffix == ".fits")


def _check_preprocessed(catalog: Catalog, storage: StorageRoot, name: str, pair) -> dict:
    """The registered observation is what inference reads: science, the reference on the science
    grid, a difference whose sky scatters as its noise map says, and the method in meta."""
    from astrid.pipeline import load_claim

    row = catalog.get(name)
    assert row["status"] == "preprocessed"
    sub = row["meta"]["subtraction"]
    assert sub["method"] == "alard-lupton" and sub["alignment"] == "wcs+stars" and sub["where"] == "ingest"
    assert sub["alignment_rms_px"] < 0.3 and sub["star_chi2_median"] < 1.5
    assert sub["flux_scale"] == pytest.approx(1 / pair.params["flux_ratio"], rel=0.03)
    assert "awaiting" not in row["meta"]
    assert row["reference_uri"].endswith("reference_aligned.fits")
    assert storage.resolve(sub["reference_input_uri"]).is_file()
    noise_path = storage.resolve(sub["noise_uri"])
    (claim,) = catalog.claim(5, "run-1", timedelta(minutes=5))
    triplet = load_claim(claim, storage, 8192)
    assert triplet.difference.shape == triplet.reference.shape == triplet.science.shape == (SIZE, SIZE)
    from astropy.io import fits

    noise = fits.getdata(noise_path)
    raw = fits.getdata(storage.resolve(row["difference_uri"]))
    valid = np.isfinite(raw)
    assert valid.mean() > 0.8
    # away from sources, the difference is noise as the map describes it (plain S − R is not)
    quiet = valid & (np.abs(pair.ideal_difference - np.median(pair.ideal_difference)) < 3 * noise)
    pull = raw[quiet] / noise[quiet]
    assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.25
    # every injected transient is still there: its peak stands out of the difference
    for x, y in zip(pair.transients["x"], pair.transients["y"], strict=True):
        r, c = round(y), round(x)
        assert np.nanmax(raw[r - 2 : r + 3, c - 2 : c + 3] / noise[r - 2 : r + 3, c - 2 : c + 3]) > 4
    return row


# ------------------------------------------------------------------------------------------ CLI


def test_cli_ingest_with_only_science_and_reference_subtracts(place, pairs, capsys):
    catalog_url, storage = place
    assert main([*_cli(place, pairs["good"], "--id", "pair-1"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "preprocessed" and out["created"]
    assert set(out["uris"]) == {"science", "reference", "difference", "noise"}
    assert _stored(storage) == [
        "difference.fits", "noise.fits", "reference.fits", "reference_aligned.fits", "science.fits"
    ]  # fmt: skip
    catalog = Catalog(catalog_url)
    row = _check_preprocessed(catalog, StorageRoot(storage), "pair-1", pairs["truth"])
    # the originals are kept byte for byte; the content hash is theirs
    assert (
        StorageRoot(storage).resolve(row["science_uri"]).read_bytes() == pairs["good"]["science"].read_bytes()
    )
    sub = row["meta"]["subtraction"]
    assert StorageRoot(storage).resolve(sub["reference_input_uri"]).read_bytes() == (
        pairs["good"]["reference"].read_bytes()
    )
    # the same pair again is the same observation, and its second copies are gone
    assert main(_cli(place, pairs["good"])) == 0
    assert "already registered" in capsys.readouterr().out
    assert len(_stored(storage)) == 5 and len(catalog.observations()) == 1


def test_cli_ingest_refuses_a_pair_that_gives_no_difference(place, pairs, capsys):
    catalog_url, storage = place
    assert main(_cli(place, pairs["bad"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("astrid ingest: error: ") and "Traceback" not in err
    assert str(pairs["bad"]["science"]) in err and str(pairs["bad"]["reference"]) in err
    assert "give no usable difference image" in err and ("Overlap" in err or "Alignment" in err), err
    catalog = Catalog(catalog_url)
    catalog.migrate()
    assert catalog.observations() == [] and _stored(storage) == []


def test_no_subtract_and_the_setting_leave_it_for_the_dag(place, pairs, capsys, monkeypatch):
    catalog_url, storage = place
    assert main(_cli(place, pairs["bad"], "--no-subtract")) == 0  # not checked now: the DAG will
    monkeypatch.setenv("ASTRID_INFERENCE_INGEST_SUBTRACT", "false")
    assert main(_cli(place, pairs["good"])) == 0
    assert capsys.readouterr().out.count("(ingested;") == 2
    rows = Catalog(catalog_url).observations()
    assert {r["status"] for r in rows} == {"ingested"} and all(r["difference_uri"] is None for r in rows)
    assert _stored(storage) == ["reference.fits", "reference.fits", "science.fits", "science.fits"]
    assert Catalog(catalog_url).claim(5, "run-1", timedelta(minutes=5)) == []  # nothing to infer yet


def test_reference_mode_writes_what_it_made_in_a_fresh_folder(place, pairs):
    catalog_url, storage = place
    incoming = storage / "incoming"
    incoming.mkdir()
    files = {role: incoming / path.name for role, path in pairs["good"].items()}
    for role, path in files.items():
        path.write_bytes(pairs["good"][role].read_bytes())
    assert main(_cli(place, files, "--mode", "reference", "--id", "in-place")) == 0
    row = Catalog(catalog_url).get("in-place")
    assert row["science_uri"] == files["science"].as_uri()
    assert row["difference_uri"].startswith((storage / "ingested").as_uri())
    assert row["meta"]["subtraction"]["reference_input_uri"] == files["reference"].as_uri()
    assert sorted(p.name for p in incoming.iterdir()) == ["good_ref.fits", "good_sci.fits"]  # untouched


# ------------------------------------------------------------------------------------------ API


@pytest.fixture
def api(place, pairs, monkeypatch):
    """The status API's ingestion over the test's catalog and a storage root whose 'incoming'
    folder holds the pairs."""
    from fastapi.testclient import TestClient

    from astrid.airflow import api as module

    catalog_url, storage = place
    (storage / "incoming").mkdir(exist_ok=True)
    for kind in ("good", "bad"):
        for path in pairs[kind].values():
            (storage / "incoming" / path.name).write_bytes(path.read_bytes())
    catalog = Catalog(catalog_url)
    catalog.migrate()
    app = module.create_app()
    app.dependency_overrides[module.catalog_opener] = lambda: lambda: catalog
    app.dependency_overrides[module.storage_opener] = lambda: lambda: StorageRoot(storage)
    with TestClient(app) as client:
        yield client, catalog, StorageRoot(storage)


def _ingested(storage: StorageRoot) -> list[Path]:
    folder = storage.path / "ingested"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_api_ingest_with_only_science_and_reference_subtracts(api, pairs, auth):  # noqa: F811
    client, catalog, storage = api
    body = {"science": "incoming/good_sci.fits", "reference": "incoming/good_ref.fits", "id": "api-pair"}
    r = client.post("/observations", json=body, headers=_bearer(auth))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "preprocessed" and "difference" in r.json()["uris"]
    _check_preprocessed(catalog, storage, "api-pair", pairs["truth"])


def test_api_refuses_a_pair_that_gives_no_difference_naming_the_reference(api, auth):  # noqa: F811
    client, catalog, storage = api
    body = {"science": "incoming/bad_sci.fits", "reference": "incoming/bad_ref.fits"}
    r = client.post("/observations", json=body, headers=_bearer(auth))
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "reference"]
    assert (
        "bad_sci.fits" in detail["msg"]
        and "bad_ref.fits" in detail["msg"]
        and "no usable difference" in detail["msg"]
    )
    assert catalog.observations() == [] and _ingested(storage) == []
    # subtract: false registers it for the DAG's subtraction instead
    r = client.post("/observations", json={**body, "subtract": False}, headers=_bearer(auth))
    assert r.status_code == 201 and r.json()["status"] == "ingested"


def test_s3_storage_root_gets_the_difference_too(pairs, s3_endpoint, tmp_path):
    """The files AstrID makes are written through the same storage root as the copies (moto's
    S3 server), and read back by the workers' loader."""
    from upath import UPath

    from astrid.ingest import Ingestor, IngestRequest
    from astrid.pipeline import load_claim
    from tests.conftest import s3_storage_options

    endpoint, client = s3_endpoint
    client.create_bucket(Bucket="astrid-sub")
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.migrate()
    # explicit options, no cached filesystem: another module's moto server may have come and gone
    storage = StorageRoot(UPath("s3://astrid-sub/root", **s3_storage_options(endpoint)))
    files = pairs["good"]
    result = Ingestor(catalog, storage).ingest(IngestRequest(str(files["science"]), str(files["reference"])))
    assert result.status == "preprocessed" and result.uris["difference"].startswith(
        "s3://astrid-sub/root/ingested/"
    )
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in client.list_objects_v2(Bucket="astrid-sub")["Contents"])
    assert keys == [
        "difference.fits",
        "noise.fits",
        "reference.fits",
        "reference_aligned.fits",
        "science.fits",
    ]
    (claim,) = catalog.claim(1, "run-1", timedelta(minutes=5))
    assert load_claim(claim, storage, 8192).difference.shape == (SIZE, SIZE)
