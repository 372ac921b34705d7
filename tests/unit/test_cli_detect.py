"""`astrid detect` contract: CSV header/rows, ra/dec handling, clean failures with no output file."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from astrid.cli import main
from astrid.imaging.synthetic import make_observation
from astrid.ml.engine import get_engine

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
HEADER = ["x", "y", "ra", "dec", "score", "flux", "flux_err", "snr", "mag", "mag_err"]


@pytest.fixture(scope="module")
def observation():
    obs = make_observation(424242, size=256, n_transients=6, snr_range=(15.0, 40.0))
    assert len(obs.truth) >= 3
    return obs


def _write(path: Path, data: np.ndarray, header: fits.Header | None = None) -> Path:
    fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path)
    return path


@pytest.fixture
def files(tmp_path, observation):
    return {
        "sci": _write(tmp_path / "sci.fits", observation.science, observation.header),
        "ref": _write(tmp_path / "ref.fits", observation.reference),
        "diff": _write(tmp_path / "diff.fits", observation.difference),
        "sci_nowcs": _write(tmp_path / "sci_nowcs.fits", observation.science),
    }


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _detect_args(science: Path, reference: Path, output: Path, *options: str, **files: Path) -> list[str]:
    """``astrid detect`` arguments: the two images, ``files`` as ``--<name> <path>`` (e.g.
    ``difference=...``), then ``options`` and ``--output``."""
    named = [a for name, path in files.items() for a in (f"--{name}", str(path))]
    return [
        "detect",
        "--science",
        str(science),
        "--reference",
        str(reference),
        *named,
        *options,
        "--output",
        str(output),
    ]


def test_detect_writes_contract_csv_with_wcs(files, tmp_path, observation):
    get_engine.cache_clear()
    out = tmp_path / "out" / "catalog.csv"
    rc = main(_detect_args(files["sci"], files["ref"], out, "--device", "cpu", difference=files["diff"]))
    assert rc == 0
    assert out.read_text().splitlines()[0].startswith("x,y,ra,dec,score,flux,")
    header, rows = _rows(out)
    assert header == HEADER and len(rows) >= 3
    # the contract: found transients carry the WCS sky coordinates of their pixel position (how
    # many are found is the model's quality, scored in test_ml_evaluate / docs/model.md)
    found = 0
    for t in observation.truth:
        near = [r for r in rows if np.hypot(float(r["x"]) - t.x, float(r["y"]) - t.y) < 1.5]
        if not near:
            continue
        found += 1
        ra, dec = observation.wcs.pixel_to_world_values(float(near[0]["x"]), float(near[0]["y"]))
        assert float(near[0]["ra"]) == pytest.approx(float(ra)) and float(near[0]["dec"]) == pytest.approx(
            float(dec)
        )
        assert 0.5 < float(near[0]["score"]) <= 1.0
    assert found >= len(observation.truth) // 2, f"only {found} of {len(observation.truth)} bright transients"
    # the photometry columns after the six: error, SNR, and the AB magnitude from the header's MAGZPT
    zp = observation.header["MAGZPT"]
    for r in rows:
        flux, err = float(r["flux"]), float(r["flux_err"])
        assert err > 0 and float(r["snr"]) == pytest.approx(flux / err, rel=1e-6)
        if flux > 0:
            assert float(r["mag"]) == pytest.approx(zp - 2.5 * np.log10(flux), rel=1e-9)
            assert float(r["mag_err"]) == pytest.approx(1.0857362 * err / flux, rel=1e-6)
        else:
            assert r["mag"] == r["mag_err"] == ""
    assert not [p for p in out.parent.iterdir() if p.name != "catalog.csv"]  # no temp files left


def test_detect_without_wcs_leaves_ra_dec_empty(files, tmp_path):
    out = tmp_path / "nowcs.csv"
    rc = main(
        _detect_args(
            files["sci_nowcs"],
            files["ref"],
            out,
            "--threshold",
            "0.5",
            "--device",
            "cpu",
            difference=files["diff"],
        )
    )
    assert rc == 0
    header, rows = _rows(out)
    assert header == HEADER and rows
    assert all(r["ra"] == "" and r["dec"] == "" for r in rows)
    assert all(r["mag"] == "" and float(r["snr"]) != 0 for r in rows)  # no header: no zero point
    assert all(float(r["score"]) > 0.5 for r in rows)


def _fails(args: list[str], capsys, out: Path, match: str) -> None:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0
    assert "astrid detect: error:" in err and match in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "partial/temp catalog left behind"


def test_missing_file(files, tmp_path, capsys):
    out = tmp_path / "c.csv"
    _fails(_detect_args(tmp_path / "nope.fits", files["ref"], out), capsys, out, "nope.fits")


def test_not_fits(files, tmp_path, capsys):
    bad = tmp_path / "bad.fits"
    bad.write_text("this is not a FITS file\n" * 50)
    out = tmp_path / "c.csv"
    _fails(_detect_args(files["sci"], bad, out), capsys, out, "bad.fits")


def test_shape_mismatch(files, tmp_path, capsys, observation):
    """With a difference image the three share one grid (without one AstrID aligns the reference)."""
    small = _write(tmp_path / "small.fits", observation.reference[:200, :220])
    out = tmp_path / "c.csv"
    _fails(_detect_args(files["sci"], small, out, difference=files["diff"]), capsys, out, "mismatch")


def test_bad_model_path(files, tmp_path, capsys):
    out = tmp_path / "c.csv"
    _fails(
        _detect_args(files["sci"], files["ref"], out, model=tmp_path / "no-model"), capsys, out, "not found"
    )


def test_console_script_exit_code(files, tmp_path):
    """The real process: non-zero exit, one clear stderr line, no traceback, no file."""
    out = tmp_path / "c.csv"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.run(
        [sys.executable, "-m", "astrid.cli", *_detect_args(files["sci"], tmp_path / "missing.fits", out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "missing.fits" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_vetting_flag_off_keeps_at_least_the_cards_detections_and_bad_values_exit(files, tmp_path, capsys):
    """``--vetting off`` reports every candidate above the threshold; ``card`` (the default) can
    only drop some; an invalid level exits 2 naming the flag, before anything is written."""
    common = [
        "detect",
        "--science",
        str(files["sci"]),
        "--reference",
        str(files["ref"]),
        "--threshold",
        "0.05",
    ]
    assert main([*common, "--vetting", "off", "--output", str(tmp_path / "off.csv")]) == 0
    assert main([*common, "--output", str(tmp_path / "card.csv")]) == 0
    _, off = _rows(tmp_path / "off.csv")
    _, card = _rows(tmp_path / "card.csv")
    assert len(off) >= len(card) and {(r["x"], r["y"]) for r in card} <= {(r["x"], r["y"]) for r in off}
    with pytest.raises(SystemExit) as exit_:
        main([*common, "--vetting", "sometimes", "--output", str(tmp_path / "bad.csv")])
    assert exit_.value.code == 2 and "--vetting='sometimes'" in capsys.readouterr().err
    assert not (tmp_path / "bad.csv").exists()
