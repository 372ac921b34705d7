"""StorageRoot: URIs resolve inside the root or are refused; an s3:// round trip against moto."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from upath import UPath

from astrid.errors import FitsError, StorageError
from astrid.imaging.fits import load_triplet
from astrid.imaging.synthetic import make_observation, write_observation
from astrid.imaging.truth import read_truth
from astrid.storage import StorageRoot, to_path
from tests.conftest import s3_endpoint, s3_storage_options  # noqa: F401 - s3_endpoint re-exported for older imports


@pytest.fixture()
def root_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "survey"
    (root / "night1").mkdir(parents=True)
    (root / "night1" / "a.fits").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.fits").write_bytes(b"s")
    (tmp_path / "survey-evil").mkdir()
    return root


def _refused(root: StorageRoot, uri: str, *why: str) -> StorageError:
    with pytest.raises(StorageError) as info:
        root.resolve(uri)
    msg = str(info.value)
    assert repr(uri) in msg, msg
    assert root.uri in msg, msg
    for w in why:
        assert w in msg, msg
    return info.value


# -- local roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pathlib", "upath", "file-uri", "str"])
def test_local_root_resolves_relative_absolute_and_file_uris(root_dir: pathlib.Path, kind: str) -> None:
    if kind == "pathlib":
        root = StorageRoot(root_dir)
    elif kind == "upath":
        root = StorageRoot(UPath(root_dir))
    elif kind == "file-uri":
        root = StorageRoot.from_uri(root_dir.as_uri())
    else:
        root = StorageRoot(str(root_dir))
    target = root_dir / "night1" / "a.fits"
    for uri in (
        "night1/a.fits",
        "./night1//a.fits",
        str(target),
        target.as_uri(),
        f"file://localhost{target}",
    ):
        p = root.resolve(uri)
        assert str(p).endswith("night1/a.fits"), (uri, p)
        assert pathlib.Path(p.path if hasattr(p, "protocol") else p).resolve() == target.resolve()
        with p.open("rb") as f:
            assert f.read() == b"x"
    assert root.uri == root_dir.as_uri()
    assert root.uri_for(root.resolve("night1/a.fits")) == target.as_uri()
    assert root.uri_for("night1/a.fits") == target.as_uri()
    assert root.resolve(root.uri_for(target)) is not None
    # not-yet-existing files inside the root resolve too (writers need them)
    assert str(root.resolve("night2/new.fits")).endswith("night2/new.fits")


def test_local_root_refuses_everything_outside(root_dir: pathlib.Path) -> None:
    root = StorageRoot(root_dir)
    outside = root_dir.parent / "outside" / "secret.fits"
    _refused(root, "../outside/secret.fits", "..")
    _refused(root, "night1/../../outside/secret.fits", "..")
    _refused(root, str(outside), "outside the root")
    _refused(root, outside.as_uri(), "outside the root")
    _refused(root, str(root_dir.parent / "survey-evil" / "x.fits"), "outside the root")
    _refused(root, "/etc/passwd", "outside the root")
    _refused(root, "s3://bucket/survey/night1/a.fits", "scheme")
    _refused(root, "http://example.org/a.fits", "scheme")
    _refused(root, "file://otherhost/data/a.fits", "host")
    _refused(root, "", "empty")
    _refused(root, "night1/a.fits\x00.png", "NUL")
    with pytest.raises(StorageError, match="outside"):
        root.uri_for(outside)


def test_local_root_refuses_symlink_escapes(root_dir: pathlib.Path) -> None:
    outside = root_dir.parent / "outside"
    (root_dir / "escape").symlink_to(outside, target_is_directory=True)
    (root_dir / "inner").symlink_to(root_dir / "night1", target_is_directory=True)
    root = StorageRoot(root_dir)
    _refused(root, "escape/secret.fits", "symlink")
    _refused(root, str(root_dir / "escape" / "secret.fits"), "symlink")
    assert root.resolve("inner/a.fits").read_bytes() == b"x"


def test_error_is_an_observation_error(root_dir: pathlib.Path) -> None:
    from astrid.errors import ObservationError

    with pytest.raises(ObservationError):
        StorageRoot(root_dir).resolve("../x")


def test_to_path() -> None:
    assert isinstance(to_path("/data/x.fits"), pathlib.Path)
    assert isinstance(to_path(pathlib.PurePosixPath("/data/x.fits")), pathlib.Path)
    assert to_path("memory://bucket/x").protocol == "memory"
    p = UPath("memory://bucket/y")
    assert to_path(p) is p
    with pytest.raises(TypeError):
        to_path(42)


# -- object-store roots (no server needed) -------------------------------------------------


def test_s3_root_resolution_and_refusals() -> None:
    pytest.importorskip("s3fs")
    root = StorageRoot.from_uri("s3://bucket/survey", anon=True)
    assert root.uri == "s3://bucket/survey"
    for uri in (
        "s3://bucket/survey/night1/a.fits",
        "night1/a.fits",
        "s3a://bucket/survey/night1/a.fits",
        "s3://aws_default@bucket/survey/night1/a.fits",  # ObjectStoragePath's str() with a conn id
    ):
        p = root.resolve(uri)
        assert str(p) == "s3://bucket/survey/night1/a.fits"
        assert p.storage_options.get("anon") is True  # the root's options carry over
    assert root.uri_for(root.resolve("night1/a.fits")) == "s3://bucket/survey/night1/a.fits"
    _refused(root, "s3://other-bucket/survey/night1/a.fits", "bucket")
    _refused(root, "s3://bucket/elsewhere/a.fits", "outside the root")
    _refused(root, "s3://bucket/survey-evil/a.fits", "outside the root")
    _refused(root, "s3://bucket/survey/../elsewhere/a.fits", "..")
    _refused(root, "/etc/passwd", "local")
    _refused(root, "file:///data/a.fits", "scheme")
    _refused(root, "gs://bucket/survey/a.fits", "scheme")


def test_memory_filesystem_round_trip() -> None:
    """Any fsspec store through UPath: write an observation, read it back via the root."""
    root = StorageRoot.from_uri("memory://astrid-test/survey")
    obs = make_observation(4, 64, n_transients=3)
    uris = write_observation(obs, root.path / "night9", "m1")
    assert uris["science_uri"] == "memory://astrid-test/survey/night9/m1_sci.fits"
    t = load_triplet(
        root.resolve(uris["science_uri"]),
        root.resolve(uris["reference_uri"]),
        root.resolve("night9/m1_diff.fits"),
    )
    np.testing.assert_array_equal(t.difference, obs.difference)
    assert t.name == "m1"
    assert read_truth(root.resolve(uris["truth_uri"])) == obs.truth
    with pytest.raises(FitsError, match="does not exist"):
        load_triplet(root.resolve("night9/zz_sci.fits"), root.resolve(uris["reference_uri"]))


# -- s3 against a moto server (the s3_endpoint fixture is in tests/conftest.py) ----------------


def test_s3_round_trip_through_storage_root(s3_endpoint) -> None:  # noqa: F811
    endpoint, client = s3_endpoint
    options = s3_storage_options(endpoint)
    root = StorageRoot(UPath("s3://astrid-survey/survey", **options))
    obs = make_observation(6, 128, n_transients=4)
    uris = write_observation(obs, root.path / "2026-01-01", "obs6")
    assert uris["science_uri"] == "s3://astrid-survey/survey/2026-01-01/obs6_sci.fits"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="astrid-survey")["Contents"]}
    assert keys == {
        f"survey/2026-01-01/obs6_{s}" for s in ("sci.fits", "ref.fits", "diff.fits", "truth.json")
    }

    t = load_triplet(
        root.resolve(uris["science_uri"]),
        root.resolve(uris["reference_uri"]),
        root.resolve("2026-01-01/obs6_diff.fits"),
    )
    for name in ("science", "reference", "difference"):
        np.testing.assert_array_equal(getattr(t, name), getattr(obs, name))
    assert t.name == "obs6" and t.wcs is not None and t.problems == []
    assert read_truth(root.resolve(uris["truth_uri"])) == obs.truth
    assert root.uri_for(root.resolve(uris["science_uri"])) == uris["science_uri"]

    # a str URI with storage options works too (what a CLI would pass)
    direct = load_triplet(to_path(uris["science_uri"], **options), to_path(uris["reference_uri"], **options))
    np.testing.assert_array_equal(direct.science, obs.science)

    _refused(root, "s3://other-bucket/survey/secret_sci.fits", "bucket")
    _refused(root, "s3://astrid-survey/elsewhere/obs6_sci.fits", "outside the root")
    with pytest.raises(FitsError, match=r"obs7_sci\.fits does not exist"):
        load_triplet(root.resolve("2026-01-01/obs7_sci.fits"), root.resolve(uris["reference_uri"]))
    # a truncated upload is caught like a truncated local file
    raw = client.get_object(Bucket="astrid-survey", Key="survey/2026-01-01/obs6_sci.fits")["Body"].read()
    client.put_object(Bucket="astrid-survey", Key="survey/2026-01-01/cut_sci.fits", Body=raw[:-3000])
    with pytest.raises(FitsError, match=r"cut_sci\.fits is truncated"):
        load_triplet(root.resolve("2026-01-01/cut_sci.fits"), root.resolve(uris["reference_uri"]))
