"""``astrid detect`` without ``--difference`` (issue 20): AstrID aligns, PSF-matches and subtracts
the pair, detects on that, and writes the difference and its noise map beside the catalog under
the catalog's own safety rules. Real seeded pairs (tests/subtraction_pairs.py), the shipped U-Net
on CPU."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from astrid.cli import main
from tests.subtraction_pairs import make_pair, write_pair

torch.set_num_threads(1)
SIZE = 384


@pytest.fixture(scope="module")
def pair():
    return make_pair(21, SIZE, star_density=4000.0, n_transients=6, transient_snr=(20.0, 40.0))


@pytest.fixture
def files(tmp_path, pair):
    other = make_pair(22, SIZE, star_density=4000.0, n_transients=0)
    return {
        **write_pair(pair, tmp_path, "p"),
        "other_reference": write_pair(other, tmp_path, "o")["reference"],
    }


def _detect(files, out, *extra: str, reference: str = "reference") -> int:
    return main(["detect", "--science", str(files["science"]), "--reference", str(files[reference]),
                 "--device", "cpu", "--output", str(out), *extra])  # fmt: skip


def _snapshot(files) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in files.values()}


def test_detect_without_a_difference_subtracts_and_writes_it_beside_the_catalog(
    files, tmp_path, pair, capsys
):
    before = _snapshot(files)
    out = tmp_path / "out" / "night.csv"
    assert _detect(files, out) == 0
    err = capsys.readouterr().err
    assert "subtracted (alard-lupton, alignment wcs+stars" in err
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "night.csv",
        "night_difference.fits",
        "night_noise.fits",
    ]
    with fits.open(out.parent / "night_difference.fits") as hdul:
        difference, header = hdul[0].data, hdul[0].header
    noise = fits.getdata(out.parent / "night_noise.fits")
    assert difference.shape == noise.shape == (SIZE, SIZE) and header["IMAGETYP"] == "DIFFERENCE"
    assert header["CTYPE1"].startswith("RA---") and header["HIERARCH ASTRID SUB METHOD"] == "alard-lupton"
    # detections on the subtracted pair: most injected transients found, none of the ~300 stars
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    tr = pair.transients
    found = sum(
        any(np.hypot(float(r["x"]) - x, float(r["y"]) - y) <= 3 for r in rows)
        for x, y in zip(tr["x"], tr["y"], strict=True)
    )
    assert found >= len(tr["x"]) - 1, f"{found} of {len(tr['x'])} transients found"
    assert len(rows) - found <= 2, f"{len(rows) - found} false detections"  # stars subtracted away
    assert all(r["ra"] and r["dec"] for r in rows)
    assert _snapshot(files) == before  # inputs untouched


def test_a_pair_of_two_fields_exits_2_and_writes_nothing(files, tmp_path, capsys):
    out = tmp_path / "c.csv"
    assert _detect(files, out, reference="other_reference") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("astrid detect: error:") and "overlap" in err[0], err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("c", ".c", ".astrid"))]


def test_the_files_it_writes_follow_the_output_safety_rules(files, tmp_path, capsys):
    before = _snapshot(files)
    out = tmp_path / "c.csv"
    made = tmp_path / "c_difference.fits"
    made.write_text("precious\n")
    assert _detect(files, out) == 2
    err = capsys.readouterr().err
    assert "c_difference.fits already exists: pass --overwrite" in err and "beside --output" in err
    assert made.read_text() == "precious\n" and not out.exists()
    assert _detect(files, out, "--overwrite") == 0
    assert fits.getdata(made).shape == (SIZE, SIZE)
    # a file it would write that is an input is refused, even with --overwrite
    science = tmp_path / "x_difference.fits"
    science.write_bytes(files["science"].read_bytes())
    argv = ["detect", "--science", str(science), "--reference", str(files["reference"]), "--device", "cpu",
            "--output", str(tmp_path / "x.csv"), "--overwrite"]  # fmt: skip
    assert main(argv) == 2
    assert "x_difference.fits is the same file as --science" in capsys.readouterr().err
    assert science.read_bytes() == files["science"].read_bytes() and not (tmp_path / "x.csv").exists()
    assert _snapshot(files) == before
