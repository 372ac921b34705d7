"""Bad input: one real realtime DAG run (dag.test, in this process) over every kind of bad
observation we know of plus two good ones.

Each bad observation must end ``rejected`` with a reason that names the file (or URI) and the
problem, the ``observation.rejected`` log line must name the observation, and the good ones must
be ``inferred`` in the same run. Nothing is mocked: the files are really truncated, empty, not
FITS, NaN-filled, mis-shaped, oversized or WCS-less on disk, and the URIs really point outside the
storage root. Invalid trigger conf and an invalid cron are covered elsewhere (docs/reliability.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from tests.dag_runner import inprocess_env, run_dag
from tests.reliability.helpers import (
    SIZE,
    AstridLogCapture,
    new_observation,
)

MAX_SIDE = 512  # ASTRID_INFERENCE_MAX_IMAGE_SIDE for this run
WCS_PREFIXES = (
    "CTYPE",
    "CRVAL",
    "CRPIX",
    "CDELT",
    "CUNIT",
    "CD1_",
    "CD2_",
    "PC1_",
    "PC2_",
    "WCSAXES",
    "RADESYS",
    "EQUINOX",
    "LONPOLE",
    "LATPOLE",
    "PV1_",
    "PV2_",
)


def _write(path, data, header=None) -> str:
    fits.PrimaryHDU(data=None if data is None else np.asarray(data, dtype=np.float32), header=header).writeto(
        path
    )
    return path.as_uri()


@pytest.fixture(scope="module")
def mixed_run(airflow_db, tmp_path_factory):
    """Seed 2 good observations, register every bad kind, run the realtime DAG once."""
    from astrid.catalog import Catalog
    from astrid.imaging.synthetic import make_observation, write_observation
    from astrid.survey import seed_survey

    root = tmp_path_factory.mktemp("bad-input")
    with inprocess_env(
        root, ASTRID_INFERENCE_MAX_IMAGE_SIDE=str(MAX_SIDE), ASTRID_INFERENCE_MAX_OBSERVATIONS="20"
    ) as env:
        seeded = seed_survey(
            2,
            size=SIZE,
            seed=8100,
            catalog_url=env["ASTRID_CATALOG_URL"],
            storage_root=env["ASTRID_STORAGE_ROOT"],
            prefix="good",
        )
        catalog = Catalog(env["ASTRID_CATALOG_URL"])
        good = catalog.get(seeded.observation_ids[0])
        obs_dir = root / "storage" / "observations"
        sci_path = obs_dir / good["science_uri"].rsplit("/", 1)[1]
        sci_bytes = sci_path.read_bytes()
        header = fits.getheader(sci_path)
        sci, ref, diff = good["science_uri"], good["reference_uri"], good["difference_uri"]

        files: dict[str, tuple[str, str, str | None]] = {}
        (obs_dir / "bad-truncated_sci.fits").write_bytes(sci_bytes[:5000])
        files["bad-truncated"] = ((obs_dir / "bad-truncated_sci.fits").as_uri(), ref, diff)
        (obs_dir / "bad-truncdata_sci.fits").write_bytes(sci_bytes[:-10_000])  # header intact, pixels cut
        files["bad-truncdata"] = ((obs_dir / "bad-truncdata_sci.fits").as_uri(), ref, diff)
        (obs_dir / "bad-notfits_sci.fits").write_text("this is a CSV export, not an image\n" * 200)
        files["bad-notfits"] = ((obs_dir / "bad-notfits_sci.fits").as_uri(), ref, diff)
        (obs_dir / "bad-empty_sci.fits").write_bytes(b"")
        files["bad-empty"] = ((obs_dir / "bad-empty_sci.fits").as_uri(), ref, diff)
        files["bad-missing"] = ((obs_dir / "bad-missing_sci.fits").as_uri(), ref, diff)
        files["bad-nan"] = (sci, ref, _write(obs_dir / "bad-nan_diff.fits", np.full((SIZE, SIZE), np.nan)))
        inf = np.full((SIZE, SIZE), np.inf)
        inf[:10] = 100.0  # 4 % finite
        files["bad-inf"] = (_write(obs_dir / "bad-inf_sci.fits", inf, header), ref, diff)
        files["bad-shape"] = (sci, _write(obs_dir / "bad-shape_ref.fits", np.ones((200, SIZE))), diff)
        big = make_observation(8200, size=640)
        uris = write_observation(big, obs_dir, "bad-toolarge")
        files["bad-toolarge"] = (uris["science_uri"], uris["reference_uri"], uris["difference_uri"])
        huge = fits.Header()
        huge.update(SIMPLE=True, BITPIX=-32, NAXIS=2, NAXIS1=100_000, NAXIS2=100_000)
        huge_bytes = huge.tostring().encode()  # 2 880 bytes declaring 40 GB of pixels
        (obs_dir / "bad-hugeheader_sci.fits").write_bytes(huge_bytes)
        files["bad-hugeheader"] = ((obs_dir / "bad-hugeheader_sci.fits").as_uri(), ref, diff)
        data = fits.getdata(sci_path)
        no_wcs = header.copy()
        for key in [k for k in no_wcs if k.startswith(WCS_PREFIXES)]:
            del no_wcs[key]
        files["bad-nowcs"] = (_write(obs_dir / "bad-nowcs_sci.fits", data, no_wcs), ref, diff)
        broken = header.copy()
        for key in [k for k in broken if k.startswith(("CD1_", "CD2_", "PC1_", "PC2_", "CDELT"))]:
            broken[key] = 0.0  # a singular pixel->sky matrix: WCS keywords present, no usable WCS
        files["bad-brokenwcs"] = (_write(obs_dir / "bad-brokenwcs_sci.fits", data, broken), ref, diff)
        files["bad-outside"] = ("file:///etc/passwd", ref, diff)
        files["bad-traversal"] = ("observations/../../../../../etc/passwd", ref, diff)
        ids = catalog.register([new_observation(name, *uris) for name, uris in files.items()])
        names = {
            **dict(zip(files, ids, strict=True)),
            "good-1": seeded.observation_ids[0],
            "good-2": seeded.observation_ids[1],
        }

        with AstridLogCapture() as logs:
            dag_run = run_dag("astrid_realtime_inference", {"max_observations": 20})
        rows = {name: catalog.get(i) for name, i in names.items()}
        from astrid.airflow.demo import task_output

        yield {
            "dag_run": dag_run,
            "rows": rows,
            "logs": logs,
            "report": task_output(dag_run, "report"),
            "catalog": catalog,
            "root": root,
        }
        catalog.dispose()


# name -> fragments the rejection reason must contain (the file or URI, then the problem)
EXPECTED = {
    "bad-truncated": ["bad-truncated_sci.fits", "truncated"],
    "bad-truncdata": ["bad-truncdata_sci.fits", "truncated", "header promises"],
    "bad-notfits": ["bad-notfits_sci.fits", "not a FITS file"],
    "bad-empty": ["bad-empty_sci.fits", "empty"],
    "bad-missing": ["bad-missing_sci.fits", "does not exist"],
    "bad-nan": ["bad-nan_diff.fits", "mostly NaN/inf"],
    "bad-inf": ["bad-inf_sci.fits", "mostly NaN/inf"],
    "bad-shape": ["bad-shape_ref.fits", "shape mismatch"],
    "bad-toolarge": ["bad-toolarge", "640×640", f"max_side={MAX_SIDE}", "ASTRID_INFERENCE_MAX_IMAGE_SIDE"],
    "bad-hugeheader": ["bad-hugeheader_sci.fits", "100000×100000", f"max_side={MAX_SIDE}"],
    "bad-nowcs": ["has_wcs", "bad-nowcs_sci.fits", "no celestial WCS"],
    "bad-brokenwcs": ["wcs_valid", "bad-brokenwcs_sci.fits", "WCS"],
    "bad-outside": ["/etc/passwd", "outside the root"],
    "bad-traversal": ["../", "path traversal"],
}


def test_the_run_goes_on_and_the_good_observations_are_inferred(mixed_run):
    assert str(mixed_run["dag_run"].state) == "success"
    rows = mixed_run["rows"]
    assert rows["good-1"]["status"] == "inferred" and rows["good-2"]["status"] == "inferred"
    report = mixed_run["report"]
    assert report["processed_count"] == 2 and report["failed_count"] == 0
    assert report["rejected_count"] == len(EXPECTED)
    assert mixed_run["catalog"].status_counts()["claimed"] == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_bad_observation_is_rejected_with_a_reason_naming_file_and_problem(mixed_run, name):
    row = mixed_run["rows"][name]
    assert row["status"] == "rejected", (name, row["status"], row["last_error"])
    for fragment in EXPECTED[name]:
        assert fragment in row["rejection_reason"], (name, fragment, row["rejection_reason"])
    # the task log line names the observation (id and name) next to the same reason
    events = [e for e in mixed_run["logs"].named("observation.rejected") if e.get("observation") == name]
    assert len(events) == 1, name
    assert events[0]["observation_id"] == row["id"] and events[0]["reason"] == row["rejection_reason"]
    assert mixed_run["catalog"].detections(observation_id=row["id"]) == []


@pytest.mark.parametrize("value", ["0", "-512", "huge", "nan"])
def test_an_invalid_max_image_side_is_a_config_error_naming_the_variable(value):
    from astrid.config import InferenceSchedulingConfig
    from astrid.errors import ConfigError

    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_MAX_IMAGE_SIDE") as info:
        InferenceSchedulingConfig.from_env({"ASTRID_INFERENCE_MAX_IMAGE_SIDE": value})
    assert value in str(info.value)
