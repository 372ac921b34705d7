"""Ingestion (astrid.ingest, `astrid ingest`) over real files, a real SQLite catalog, the real
local Redis (the doorbell) and moto's S3 server: the happy path and every bad input, with
nothing half-registered and no copied file left behind."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from astrid.catalog import Catalog
from astrid.cli import main
from astrid.errors import IngestError
from astrid.imaging.fits import write_image
from astrid.imaging.synthetic import make_observation, write_observation
from astrid.ingest import Ingestor, IngestRequest, read_manifest
from astrid.storage import StorageRoot
from tests.integration.standalone import redis_unavailable
from tests.unit.test_imaging_storage import s3_endpoint  # noqa: F401 - the moto S3 server fixture

SIZE = 128


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    """Two observations' FITS files on local disk (a source outside the storage root)."""
    folder = tmp_path_factory.mktemp("incoming")
    files: dict[str, Path] = {}
    for name, seed in (("a", 1), ("b", 2)):
        uris = write_observation(make_observation(seed, size=SIZE), folder, name)
        files.update({f"{name}_{k.removesuffix('_uri')}": Path(v) for k, v in uris.items()})
    write_image(folder / "small_ref.fits", np.zeros((SIZE // 2, SIZE), np.float32))
    write_image(folder / "nowcs_sci.fits", np.ones((SIZE, SIZE), np.float32))
    write_image(folder / "nowcs_ref.fits", np.ones((SIZE, SIZE), np.float32))
    truncated = folder / "truncated_sci.fits"
    truncated.write_bytes(files["a_science"].read_bytes()[: 2880 * 2 + 100])
    (folder / "empty_sci.fits").write_bytes(b"")
    mostly_nan = make_observation(1, size=SIZE).science.copy()
    mostly_nan[: SIZE * 3 // 4] = np.nan  # 25 % finite: below the loader's floor
    write_image(folder / "nan_sci.fits", mostly_nan)
    from astropy.io import fits

    fits.HDUList(
        [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0])])]
    ).writeto(folder / "table_sci.fits")
    (folder / "notes.txt").write_text("SIMPLE? no, a text file\n" * 200)
    return {**files, **{p.stem: p for p in folder.glob("*") if p.stem not in files}}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A fresh catalog and storage root; events off unless a test turns them on."""
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "false")
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    storage = tmp_path / "storage"
    storage.mkdir()
    return catalog_url, storage


def _cli(place, *args: str) -> list[str]:
    catalog_url, storage = place
    return ["ingest", "--catalog", catalog_url, "--storage", storage.as_uri(), *args]


def _triplet(frames, name: str = "a", difference: bool = True) -> list[str]:
    args = ["--science", str(frames[f"{name}_science"]), "--reference", str(frames[f"{name}_reference"])]
    if difference:
        args += ["--difference", str(frames[f"{name}_difference"])]
    return args


def _stored_files(storage: Path) -> list[Path]:
    return sorted(p for p in storage.rglob("*") if p.is_file())


def _nothing_registered(place) -> None:
    catalog_url, storage = place
    catalog = Catalog(catalog_url)
    catalog.migrate()
    assert catalog.observations() == []
    assert _stored_files(storage) == []


def _refused(capsys, argv, *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("astrid ingest: error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


# ------------------------------------------------------------------------------ the happy path


def test_cli_ingest_registers_a_copy_ready_for_inference(place, frames, capsys):
    catalog_url, storage = place
    argv = _cli(
        place, *_triplet(frames), "--id", "m31-0042", "--meta", "night=2026-12-01", "--meta", "seeing=1.1"
    )
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["created"] is True and out["status"] == "preprocessed" and out["id"] == "m31-0042"
    catalog = Catalog(catalog_url)
    row = catalog.get("m31-0042")
    assert row["status"] == "preprocessed" and row["content_hash"] == out["content_hash"]
    assert row["arrived_at"] is not None and row["arrived_at"] <= row["created_at"]
    assert row["meta"]["user"] == {"night": "2026-12-01", "seeing": "1.1"}
    assert row["meta"]["ingest"]["mode"] == "copy" and row["meta"]["ingest"]["wcs"] is True
    assert row["mjd"] is not None and row["ra_center"] is not None  # from the header and WCS
    # copied byte for byte under the storage root, and readable through it as the workers read it
    root = StorageRoot(storage)
    for role in ("science", "reference", "difference"):
        stored = root.resolve(row[f"{role}_uri"])
        assert stored.read_bytes() == frames[f"a_{role}"].read_bytes()
    claims = catalog.claim(5, "run-1", __import__("datetime").timedelta(minutes=5))
    assert [c.name for c in claims] == ["m31-0042"]


def test_without_a_difference_it_waits_as_ingested_for_subtraction(place, frames, capsys):
    # --no-subtract: the DAGs' subtract task makes the difference (tests/dags/test_subtract_task.py)
    assert main(_cli(place, *_triplet(frames, difference=False), "--no-subtract")) == 0
    assert "(ingested;" in capsys.readouterr().out
    catalog = Catalog(place[0])
    (row,) = catalog.observations()
    assert row["status"] == "ingested" and row["difference_uri"] is None
    assert row["meta"]["awaiting"] == "subtraction"
    assert row["name"].startswith("a-") and len(row["name"]) == len("a-") + 12  # stem + content hash
    assert catalog.claim(5, "run-1", __import__("datetime").timedelta(minutes=5)) == []


def test_the_same_triplet_twice_is_one_observation(place, frames, capsys):
    assert main(_cli(place, *_triplet(frames))) == 0
    first = capsys.readouterr().out
    files = _stored_files(place[1])
    assert main(_cli(place, *_triplet(frames), "--id", "another-name")) == 0
    again = capsys.readouterr().out
    assert again.startswith("already registered: observation 1 ") and "(same content)" in again
    assert first.split()[3] == again.split()[4]  # the same (derived) name
    assert len(Catalog(place[0]).observations()) == 1
    assert _stored_files(place[1]) == files  # the second copy was removed


def test_another_triplet_under_a_taken_id_is_refused(place, frames, capsys):
    assert main(_cli(place, *_triplet(frames, "a"), "--id", "taken")) == 0
    capsys.readouterr()
    files = _stored_files(place[1])
    _refused(
        capsys,
        _cli(place, *_triplet(frames, "b"), "--id", "taken"),
        "'taken' is already taken by other files",
    )
    assert [r["name"] for r in Catalog(place[0]).observations()] == ["taken"]
    assert _stored_files(place[1]) == files


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("science", "expected"),
    [
        ("missing_sci.fits", "does not exist"),
        ("notes", "is not a FITS file"),
        ("truncated_sci", "truncated"),
        ("empty_sci", "is empty"),
        ("nan_sci", "is mostly NaN/inf"),
        ("table_sci", "has no 2-D image HDU"),
    ],
)
def test_unreadable_science_is_refused_naming_it(place, frames, capsys, science, expected):
    path = frames.get(science) or frames["a_science"].with_name(science)
    argv = _cli(place, "--science", str(path), "--reference", str(frames["a_reference"]))
    _refused(capsys, argv, f"science file {path}", expected)
    _nothing_registered(place)


def test_mismatched_shapes_are_refused(place, frames, capsys):
    # with a difference image the three must share one grid (without one, AstrID aligns them)
    argv = _cli(
        place,
        "--science",
        str(frames["a_science"]),
        "--reference",
        str(frames["small_ref"]),
        "--difference",
        str(frames["a_difference"]),
    )
    _refused(capsys, argv, "shape mismatch", str(frames["small_ref"]), f"{SIZE}×{SIZE // 2}")
    _nothing_registered(place)


def test_a_frame_without_wcs_needs_saying_so(place, frames, capsys):
    argv = _cli(place, "--science", str(frames["nowcs_sci"]), "--reference", str(frames["nowcs_ref"]))
    _refused(capsys, argv, "no celestial WCS", "--no-wcs")
    _nothing_registered(place)
    assert main([*argv, "--no-wcs", "--no-subtract"]) == 0  # (constant test frames: nothing to subtract)
    (row,) = Catalog(place[0]).observations()
    assert row["meta"]["ingest"]["wcs"] is False and row["ra_center"] is None


def test_frames_over_the_configured_size_are_refused(place, frames, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRID_INFERENCE_MAX_IMAGE_SIDE", "64")
    _refused(
        capsys, _cli(place, *_triplet(frames)), "science file", "128×128 pixels, larger than max_side=64"
    )
    _nothing_registered(place)
    # a file bigger than any 64² frame can need is refused on its size, before a byte is read
    huge = tmp_path / "huge_sci.fits"
    with huge.open("wb") as f:
        f.truncate(2 << 20)
    argv = _cli(place, "--science", str(huge), "--reference", str(frames["a_reference"]))
    _refused(capsys, argv, f"science file {huge} is 2097152 bytes, more than", "MAX_IMAGE_SIDE")
    _nothing_registered(place)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--meta", "bad key=1"], "meta key 'bad key'"),
        (["--meta", "novalue"], "is not key=value"),
        (["--meta", "a=1", "--meta", "a=2"], "given twice"),
        (["--id", "../etc/passwd"], "id '../etc/passwd' is not allowed"),
        (["--id", "x" * 129], "is not allowed"),
    ],
)
def test_bad_ids_and_metadata_are_refused_before_any_file_is_read(place, frames, capsys, extra, expected):
    _refused(capsys, _cli(place, *_triplet(frames), *extra), expected)
    _nothing_registered(place)


def test_a_failed_registration_removes_the_copies(place, frames, capsys):
    catalog = Catalog(place[0])
    catalog.migrate()
    with catalog.engine.begin() as conn:  # a catalog that breaks at the INSERT, after the copy
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON observations BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    _refused(capsys, _cli(place, *_triplet(frames)), "catalog unreachable")
    assert catalog.observations() == [] and _stored_files(place[1]) == []


# ------------------------------------------------------------------------------ modes, manifests


def test_reference_in_place_only_under_the_storage_root(place, frames, capsys, tmp_path):
    catalog_url, storage = place
    _refused(
        capsys, [*_cli(place, *_triplet(frames)), "--mode", "reference"], "is not under the storage root"
    )
    _nothing_registered(place)
    night = storage / "night1"
    night.mkdir()
    for role in ("science", "reference", "difference"):
        (night / f"{role}.fits").write_bytes(frames[f"b_{role}"].read_bytes())
    argv = [*_cli(place), "--mode", "reference", "--science", str(night / "science.fits")]
    argv += ["--reference", str(night / "reference.fits"), "--difference", str(night / "difference.fits")]
    assert main(argv) == 0
    (row,) = Catalog(catalog_url).observations()
    assert (
        row["science_uri"] == (night / "science.fits").as_uri()
        and row["meta"]["ingest"]["mode"] == "reference"
    )
    assert len(_stored_files(storage)) == 3  # nothing copied


def test_manifest_csv_and_jsonl(place, frames, capsys, tmp_path):
    folder = frames["a_science"].parent
    (folder / "night.csv").write_text(
        "science,reference,difference,id,night\n"
        "a_sci.fits,a_ref.fits,a_diff.fits,csv-a,n1\n"
        f"{frames['b_science']},b_ref.fits,,csv-b,n1\n"
    )
    # --no-subtract: rows without a difference wait for the DAGs' subtract task
    assert main(_cli(place, "--manifest", str(folder / "night.csv"), "--no-subtract")) == 0
    assert capsys.readouterr().out.count("registered observation") == 2
    (folder / "night.jsonl").write_text(
        json.dumps({"science": "a_sci.fits", "reference": "a_ref.fits", "difference": "a_diff.fits"})
        + "\n\n"
        + json.dumps(
            {
                "science": "b_sci.fits",
                "reference": "b_ref.fits",
                "difference": "b_diff.fits",
                "id": "j-b",
                "meta": {"k": 2},
            }
        )
        + "\n"
    )
    assert main(_cli(place, "--manifest", str(folder / "night.jsonl"))) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("already registered") and out[1].startswith("registered observation 3 j-b")
    rows = {r["name"]: r for r in Catalog(place[0]).observations()}
    assert set(rows) == {"csv-a", "csv-b", "j-b"}
    assert rows["csv-a"]["meta"]["user"] == {"night": "n1"} and rows["j-b"]["meta"]["user"] == {"k": "2"}
    assert rows["csv-b"]["status"] == "ingested"


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("m.csv", "science,difference\na.fits,b.fits\n", "header row lacks reference"),
        ("m.csv", "science,reference\na.fits,b.fits,c.fits\n", "m.csv row 2: more cells"),
        ("m.csv", "science,reference\n,b.fits\n", "m.csv row 2: science and reference are required"),
        ("m.csv", "science,reference,id\na.fits,b.fits,bad/id\n", "m.csv row 2: id 'bad/id' is not allowed"),
        ("m.jsonl", '{"science": "a.fits", "reference": "b.fits"}\n{"science": 1}\n', "line 2: science must"),
        ("m.jsonl", '{"science": "a.fits", "refrence": "b"}\n', "unknown key(s) ['refrence']"),
        ("m.jsonl", "{not json\n", "line 1: not JSON"),
        ("m.csv", "science,reference\n", "lists no observations"),
    ],
)
def test_bad_manifests_are_refused_before_any_file_is_read(place, capsys, tmp_path, name, text, expected):
    (tmp_path / name).write_text(text)
    _refused(capsys, _cli(place, "--manifest", str(tmp_path / name)), expected)
    _nothing_registered(place)


def test_a_bad_manifest_row_stops_there_and_names_it(place, frames, capsys):
    folder = frames["a_science"].parent
    (folder / "bad.csv").write_text(
        "science,reference,difference\na_sci.fits,a_ref.fits,a_diff.fits\nb_sci.fits,small_ref.fits,b_diff.fits\n"
    )
    _refused(capsys, _cli(place, "--manifest", str(folder / "bad.csv")), "bad.csv row 3: shape mismatch")
    assert len(Catalog(place[0]).observations()) == 1  # row 2 went in; re-running is idempotent
    assert len(read_manifest(str(folder / "bad.csv"))) == 2


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_ingests_of_the_same_files_make_one_observation(place, frames):
    catalog_url, storage = place
    Catalog(catalog_url).migrate()
    results, errors = [], []

    def ingest() -> None:
        try:
            ingestor = Ingestor(Catalog(catalog_url), StorageRoot(storage), subtract=False)
            results.append(
                ingestor.ingest(IngestRequest(*(str(frames[f"a_{r}"]) for r in ("science", "reference"))))
            )
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len({r.observation_id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert len(_stored_files(storage)) == 2  # one science + one reference: the losers' copies removed


# ------------------------------------------------------------------------------ the doorbell


@pytest.fixture
def redis_channel(monkeypatch):
    reason = redis_unavailable()
    if reason:
        pytest.skip(reason)
    import redis

    channel = f"astrid-test-{uuid.uuid4().hex[:8]}"  # pub/sub is server-wide: a channel of our own
    client = redis.Redis(host="127.0.0.1", port=6379)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "true")
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_CHANNEL", channel)
    yield pubsub
    pubsub.close()
    client.close()


def test_a_new_observation_rings_the_doorbell_after_commit(place, frames, capsys, redis_channel):
    assert main(_cli(place, *_triplet(frames))) == 0
    assert "arrival announced" in capsys.readouterr().out
    message = redis_channel.get_message(timeout=5)
    body = json.loads(message["data"])
    row = Catalog(place[0]).get(body["observation_id"])  # committed before the ring
    assert body == {
        "event": "observation.arrived",
        "observation_id": row["id"],
        "name": row["name"],
        "status": "preprocessed",
        "arrived_at": row["arrived_at"].isoformat(),
    }
    assert main(_cli(place, *_triplet(frames))) == 0  # a duplicate registers nothing: no ring
    assert redis_channel.get_message(timeout=1) is None


def test_a_doorbell_that_does_not_answer_never_fails_the_ingest(place, frames, capsys, monkeypatch, caplog):
    from tests.integration.standalone import free_port

    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_ENABLED", "true")
    monkeypatch.setenv("ASTRID_INFERENCE_EVENTS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert main(_cli(place, *_triplet(frames))) == 0
    assert "no arrival message: the cron run will pick it up" in capsys.readouterr().out
    assert "could not be published" in caplog.text
    assert Catalog(place[0]).observations()[0]["status"] == "preprocessed"


# ------------------------------------------------------------------------------ s3 through moto


def test_s3_sources_and_storage_through_the_s3_test_server(place, frames, capsys, monkeypatch, s3_endpoint):  # noqa: F811
    endpoint, client = s3_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # what s3fs/botocore use for every s3:// path
    client.create_bucket(Bucket="astrid-ingest")
    for role in ("science", "reference", "difference"):
        client.put_object(
            Bucket="other-bucket", Key=f"drop/a_{role}.fits", Body=frames[f"a_{role}"].read_bytes()
        )
    client.put_object(Bucket="other-bucket", Key="drop/small_ref.fits", Body=frames["small_ref"].read_bytes())
    catalog_url = place[0]
    base = ["ingest", "--catalog", catalog_url, "--storage", "s3://astrid-ingest/root"]
    sources = [f"--{r}=s3://other-bucket/drop/a_{r}.fits" for r in ("science", "reference", "difference")]
    assert main([*base, *sources, "--id", "s3-a"]) == 0
    row = Catalog(catalog_url).get("s3-a")
    assert row["science_uri"].startswith("s3://astrid-ingest/root/ingested/")
    key = row["science_uri"].removeprefix("s3://astrid-ingest/")
    assert (
        client.get_object(Bucket="astrid-ingest", Key=key)["Body"].read() == frames["a_science"].read_bytes()
    )
    capsys.readouterr()
    # a bad s3 input: refused, nothing registered, nothing left in the bucket
    listed = client.list_objects_v2(Bucket="astrid-ingest")["KeyCount"]
    bad = [sources[0], "--reference=s3://other-bucket/drop/small_ref.fits", sources[2], "--id", "s3-bad"]
    _refused(capsys, [*base, *bad], "shape mismatch", "s3://other-bucket/drop/small_ref.fits")
    _refused(capsys, [*base, sources[0], "--reference=s3://other-bucket/drop/nothere.fits"], "does not exist")
    assert client.list_objects_v2(Bucket="astrid-ingest")["KeyCount"] == listed
    assert [r["name"] for r in Catalog(catalog_url).observations()] == ["s3-a"]


def test_a_failed_registration_removes_the_copies_from_s3(place, frames, capsys, monkeypatch, s3_endpoint):  # noqa: F811
    endpoint, client = s3_endpoint
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    client.create_bucket(Bucket="astrid-broken")
    catalog = Catalog(place[0])
    catalog.migrate()
    with catalog.engine.begin() as conn:  # breaks at the INSERT, after the three copies were written
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON observations BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    argv = ["ingest", "--catalog", place[0], "--storage", "s3://astrid-broken/root", *_triplet(frames)]
    _refused(capsys, argv, "catalog unreachable")
    assert catalog.observations() == []
    assert client.list_objects_v2(Bucket="astrid-broken")["KeyCount"] == 0


def test_the_ingestor_refuses_unknown_modes():
    with pytest.raises(IngestError, match="copy or reference"):
        Ingestor(None, None, mode="move")
