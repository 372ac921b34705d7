"""`astrid reprocess` and astrid.reprocess: time ranges, a bad observation failing alone and staying
a candidate, results beside the live ones. Real SQLite catalog, real files, the shipped U-Net on
CPU, a real (SQLite) MLflow registry under the test AIRFLOW_HOME."""

from __future__ import annotations

import pytest

from astrid.catalog import Catalog
from astrid.cli import main
from astrid.errors import ConfigError
from astrid.reprocess import mjd_of


@pytest.mark.parametrize(
    ("value", "mjd"),
    [
        ("2026-12-01", 61375.0),
        ("2026-12-01T12:00:00Z", 61375.5),
        ("2026-12-01T13:00:00+01:00", 61375.5),
        ("61375.25", 61375.25),
        (61000, 61000.0),
        ("", None),
        (None, None),
    ],
)
def test_observation_time_bounds(value, mjd):
    assert mjd_of(value, "x") == mjd


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "nan", "-5", "1e9", True])
def test_bad_time_bounds_are_named(value):
    with pytest.raises(ConfigError, match=r"^observed_from="):
        mjd_of(value, "observed_from")


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    from astrid.survey import seed_survey

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    storage = (tmp_path / "storage").as_uri()
    seed_survey(3, size=192, seed=7400, catalog_url=url, storage_root=storage, prefix="cli")
    return url, storage, tmp_path


def test_cli_reprocess_stores_beside_and_a_bad_file_fails_alone(seeded, capsys):
    url, storage, root = seeded
    catalog = Catalog(url)
    rows = catalog.observations()
    # one observation's difference image went missing: it fails alone, and stays a candidate
    broken = rows[1]
    (root / "storage" / broken["difference_uri"].split("/storage/", 1)[1]).unlink()
    args = ["reprocess", "--model", "champion", "--catalog", url, "--storage", storage]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("reprocessed 2 observation(s) with model version 1:") and "failed: " in out
    assert broken["name"] in out and "does not exist" in out
    assert [r["status"] for r in catalog.observations()] == ["preprocessed"] * 3  # nothing claimed
    assert catalog.results(rows[0]["id"]) == {"1": len(catalog.detections(rows[0]["id"], "1"))}
    assert catalog.results(broken["id"]) == {}
    assert [c.observation_id for c in catalog.reprocess_candidates("1")] == [broken["id"]]
    assert main(args) == 1  # again: only the broken one is tried
    assert capsys.readouterr().out.startswith("reprocessed 0 observation(s)")
    run = catalog.runs(dag_id="cli")[0]
    assert run["kind"] == "reprocess" and run["model_version"] == "1"


def test_cli_reprocess_time_range_and_bad_input(seeded, capsys):
    url, storage, _ = seeded
    catalog = Catalog(url)
    mjds = sorted(r["mjd"] for r in catalog.observations())
    base = ["reprocess", "--model", "1", "--catalog", url, "--storage", storage]
    assert main([*base, "--from", str(mjds[1]), "--to", str(mjds[2])]) == 0
    assert capsys.readouterr().out.startswith("reprocessed 1 observation(s)")
    for bad, expected in [
        (["--from", "yesterday"], "--from='yesterday' is neither"),
        (["--from", "2026-12-02", "--to", "2026-12-01"], "must be after"),
        (["--threshold", "1.5"], "--threshold 1.5"),
        (["--limit", "0"], "limit=0"),
    ]:
        assert main([*base, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("astrid reprocess: error:") and expected in err and len(err.splitlines()) == 1


def test_reprocess_reads_with_the_configured_fits_limits(seeded, capsys, monkeypatch):
    """Reprocessing reads files as the live queue does (:func:`astrid.pipeline.analyse_claim`
    with the configuration's read limits): a header-size limit below the survey's headers fails
    every observation with the limit named, and nothing is stored."""
    url, storage, _ = seeded
    monkeypatch.setenv("ASTRID_INFERENCE_MAX_HEADER_CARDS", "36")
    args = ["reprocess", "--model", "champion", "--catalog", url, "--storage", storage]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("reprocessed 0 observation(s)") and out.count("more than 36 header cards") == 3
    catalog = Catalog(url)
    assert all(catalog.results(r["id"]) == {} for r in catalog.observations())
