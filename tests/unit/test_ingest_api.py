"""POST /astrid/observations: the status API's ingestion, behind Airflow's real auth (a JWT minted
by the simple auth manager), over real files, a real SQLite catalog and moto's S3 server.

Dependency overrides, and why: the catalog and the storage root are the test's own (SQLite file,
temporary folder or moto bucket) instead of the Airflow connections; auth is never overridden."""

from __future__ import annotations

import pytest
from upath import UPath

from astrid.catalog import Catalog
from astrid.storage import StorageRoot
from tests.conftest import s3_endpoint, s3_storage_options  # noqa: F401 - moto S3 server fixture
from tests.unit.test_ingest import frames  # noqa: F401 - FITS files on local disk
from tests.unit.test_status_api import _bearer, auth  # noqa: F401 - a real admin JWT


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    cat.migrate()
    return cat


@pytest.fixture
def storage(tmp_path, frames):  # noqa: F811
    """A storage root holding an 'incoming' folder with the test's FITS files (what the API may read)."""
    root = tmp_path / "storage"
    (root / "incoming").mkdir(parents=True)
    for path in frames.values():
        if path.is_file():
            (root / "incoming" / path.name).write_bytes(path.read_bytes())
    return StorageRoot(root)


def _client(catalog, storage):
    from fastapi.testclient import TestClient

    from astrid.airflow import api

    app = api.create_app()
    app.dependency_overrides[api.catalog_opener] = lambda: lambda: catalog
    app.dependency_overrides[api.storage_opener] = lambda: lambda: storage
    return TestClient(app)


@pytest.fixture
def client(catalog, storage, monkeypatch):
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "false")
    with _client(catalog, storage) as c:
        yield c


A = {
    "science": "incoming/a_sci.fits",
    "reference": "incoming/a_ref.fits",
    "difference": "incoming/a_diff.fits",
}


def _post(client, auth, body):  # noqa: F811
    return client.post("/observations", json=body, headers=_bearer(auth))


def _ingested_files(storage) -> list:
    folder = storage.path / "ingested"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_needs_airflow_auth(client, auth, catalog):  # noqa: F811
    assert client.post("/observations", json=A).status_code == 401
    assert client.post("/observations", json=A, headers=_bearer("not.a.jwt")).status_code in (401, 403)
    assert catalog.observations() == []


def test_ingest_then_the_same_files_again(client, auth, catalog, storage):  # noqa: F811
    r = _post(client, auth, {**A, "id": "api-a", "meta": {"night": "n1", "seeing": 1.1}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] and body["status"] == "preprocessed" and body["announced"] is False
    row = catalog.get("api-a")
    assert row["meta"]["user"] == {"night": "n1", "seeing": "1.1"} and row["arrived_at"] is not None
    assert storage.resolve(row["science_uri"]).read_bytes() == storage.resolve(A["science"]).read_bytes()
    files = _ingested_files(storage)
    again = _post(client, auth, {**A, "id": "other"})
    assert again.status_code == 200 and again.json()["id"] == "api-a" and not again.json()["created"]
    assert _ingested_files(storage) == files and len(catalog.observations()) == 1


@pytest.mark.parametrize(
    ("body", "code", "field", "text"),
    [
        ({**A, "science": "incoming/notes.txt"}, 422, "science", "is not a FITS file"),
        ({**A, "science": "incoming/truncated_sci.fits"}, 422, "science", "truncated"),
        ({**A, "science": "incoming/nan_sci.fits"}, 422, "science", "is mostly NaN/inf"),
        ({**A, "science": "incoming/table_sci.fits"}, 422, "science", "has no 2-D image HDU"),
        ({**A, "reference": "incoming/missing.fits"}, 422, "reference", "does not exist"),
        ({**A, "reference": "incoming/small_ref.fits"}, 422, "reference", "shape mismatch"),
        ({**A, "difference": "incoming/small_ref.fits"}, 422, "difference", "shape mismatch"),
        (
            {"science": "incoming/nowcs_sci.fits", "reference": "incoming/nowcs_ref.fits"},
            422,
            "science",
            "no celestial WCS",
        ),
        ({**A, "id": "../x"}, 422, "id", "is not allowed"),
        ({**A, "meta": {"bad key": "1"}}, 422, "meta", "meta key 'bad key'"),
        ({**A, "meta": {"k": float("nan")}}, 422, "meta", "not a finite number"),
        ({**A, "extra": 1}, 422, "extra", "Extra inputs"),
        ({"reference": "x"}, 422, "science", "Field required"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client, auth, catalog, storage, body, code, field, text):  # noqa: F811
    r = client.post(
        "/observations",
        content=__import__("json").dumps(body, allow_nan=True),
        headers={**_bearer(auth), "Content-Type": "application/json"},
    )
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][-1] == field and text in d["msg"] for d in detail), detail
    assert catalog.observations() == [] and _ingested_files(storage) == []


def test_an_id_taken_by_other_files_is_409(client, auth, catalog, storage):  # noqa: F811
    assert _post(client, auth, {**A, "id": "taken"}).status_code == 201
    files = _ingested_files(storage)
    b = {
        "science": "incoming/b_sci.fits",
        "reference": "incoming/b_ref.fits",
        "id": "taken",
        "subtract": False,
    }
    r = _post(client, auth, b)
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "id"]
    assert len(catalog.observations()) == 1 and _ingested_files(storage) == files


def test_a_failed_registration_is_503_and_leaves_no_copy(client, auth, catalog, storage):  # noqa: F811
    with catalog.engine.begin() as conn:  # a catalog that breaks at the INSERT, after the copy
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON observations BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    r = _post(client, auth, {**A, "id": "api-broken"})
    assert r.status_code == 503 and "catalog unreachable" in r.json()["detail"], r.text
    assert catalog.observations() == [] and _ingested_files(storage) == []
    assert not (storage.path / "ingested").exists() or not any((storage.path / "ingested").iterdir())


def test_files_outside_the_allowed_roots_are_refused_alike_whether_they_exist_or_not(
    client,
    auth,  # noqa: F811
    catalog,
    frames,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    existing = {**A, "science": str(frames["a_science"])}  # a real FITS file, outside the roots
    missing = {**A, "science": str(frames["a_science"].with_name("no_such.fits"))}
    answers = [_post(client, auth, body) for body in (existing, missing, {**A, "science": "/etc/passwd"})]
    assert {r.status_code for r in answers} == {422}
    texts = [
        r.json()["detail"][0]["msg"].replace(body["science"], "<path>")
        for r, body in zip(answers, (existing, missing, {"science": "/etc/passwd"}), strict=True)
    ]
    assert len(set(texts)) == 1 and "is refused: files are read only under the storage root" in texts[0]
    assert _post(client, auth, {**A, "science": "incoming/../../../etc/passwd"}).status_code == 422
    # an extra root makes that folder readable
    monkeypatch.setenv("ASTRID_INFERENCE_INGEST_ROOTS", frames["a_science"].parent.as_uri())
    assert _post(client, auth, existing).status_code == 201
    assert catalog.observations()[0]["science_uri"].startswith("file://" + str(tmp_path / "storage"))


def test_s3_storage_root_through_the_s3_test_server(auth, catalog, frames, monkeypatch, s3_endpoint):  # noqa: F811
    endpoint, client_s3 = s3_endpoint
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "false")
    options = s3_storage_options(endpoint)
    client_s3.create_bucket(Bucket="astrid-api")
    for name in ("a_sci.fits", "a_ref.fits", "a_diff.fits", "small_ref.fits"):
        client_s3.put_object(
            Bucket="astrid-api",
            Key=f"root/incoming/{name}",
            Body=(frames["a_science"].parent / name).read_bytes(),
        )
    storage = StorageRoot(UPath("s3://astrid-api/root", **options))

    def keys() -> list[str]:
        return sorted(o["Key"] for o in client_s3.list_objects_v2(Bucket="astrid-api").get("Contents", []))

    with _client(catalog, storage) as client:
        bad = _post(client, auth, {**A, "reference": "s3://astrid-api/root/incoming/small_ref.fits"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "reference"]
        before = keys()
        r = _post(client, auth, {**A, "science": "s3://astrid-api/root/incoming/a_sci.fits", "id": "s3-api"})
        assert r.status_code == 201, r.text
        other = _post(client, auth, {**A, "science": "s3://other-bucket/survey/secret_sci.fits"})
        assert other.status_code == 422 and "is refused" in other.text
    row = catalog.get("s3-api")
    assert row["science_uri"].startswith("s3://astrid-api/root/ingested/")
    assert len(keys()) == len(before) + 3
