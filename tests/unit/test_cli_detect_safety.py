"""`astrid detect` never harms what it is given (issue 13 item 5): inputs are never overwritten,
an existing output only with --overwrite, files get the user's umask, and every unusable output
path, threshold, device or model card is one line on stderr and exit 2, with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from astrid.cli import main
from astrid.imaging.synthetic import make_observation
from astrid.ml.unet import UNet
from astrid.ml.weights import CARD_FILE, ModelCard, save_model

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "include" / "models" / "astrid-unet"


@pytest.fixture(scope="module")
def observation():
    return make_observation(90210, size=128, n_transients=3, snr_range=(20.0, 40.0))


@pytest.fixture
def files(tmp_path, observation):
    def write(name, data, header=None):
        path = tmp_path / name
        fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path)
        return path

    return {
        "sci": write("sci.fits", observation.science, observation.header),
        "ref": write("ref.fits", observation.reference),
        "diff": write("diff.fits", observation.difference),
    }


def _args(files, out, *extra):
    # with --difference: these tests are about the catalog's safety (the files AstrID writes
    # without one follow the same rules: tests/unit/test_detect_subtraction.py)
    return ["detect", "--science", str(files["sci"]), "--reference", str(files["ref"]), "--difference",
            str(files["diff"]), "--device", "cpu", "--output", str(out), *extra]  # fmt: skip


def _refused(args, capsys, match: str) -> str:
    """Exit 2 with one stderr line naming the problem (argparse errors included), no traceback."""
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _snapshot(files) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in files.values()}


@pytest.mark.parametrize("how", ["same path", "relative path", "symlink", "hard link"])
def test_output_that_is_an_input_is_refused_and_the_input_survives(files, tmp_path, capsys, how, monkeypatch):
    before = _snapshot(files)
    out = files["sci"]
    if how == "relative path":
        monkeypatch.chdir(tmp_path)
        out = Path("sub/../sci.fits")
        (tmp_path / "sub").mkdir()
    elif how == "symlink":
        out = tmp_path / "link.csv"
        out.symlink_to(files["sci"])
    elif how == "hard link":
        out = tmp_path / "hard.csv"
        os.link(files["sci"], out)
    for extra in ([], ["--overwrite"]):  # --overwrite never makes an input fair game
        _refused(_args(files, out, *extra), capsys, "is the same file as --science")
    assert _snapshot(files) == before


def test_an_existing_output_needs_overwrite_which_keeps_its_mode(files, tmp_path, capsys):
    out = tmp_path / "catalog.csv"
    out.write_text("precious\n")
    out.chmod(0o640)
    _refused(_args(files, out), capsys, "already exists: pass --overwrite")
    assert out.read_text() == "precious\n"
    assert main(_args(files, out, "--overwrite", "--threshold", "0.3")) == 0
    assert out.read_text().startswith("x,y,ra,dec,score,flux")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv", "diff.fits", "ref.fits", "sci.fits"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_output_gets_the_users_umask(files, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        out = tmp_path / f"c{umask:o}.csv"
        assert main(_args(files, out, "--threshold", "0.3")) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_unusable_output_paths_are_one_line(files, tmp_path, capsys):
    before = _snapshot(files)
    (tmp_path / "adir").mkdir()
    _refused(_args(files, tmp_path / "adir"), capsys, "is a directory")
    _refused(_args(files, tmp_path / "adir", "--overwrite"), capsys, "is a directory")
    _refused(_args(files, files["ref"] / "under.csv"), capsys, "which is a file, not a directory")
    assert _snapshot(files) == before


def test_an_output_that_cannot_be_written_is_one_line(files, capsys):
    """/proc refuses new entries even to root (which os.access cannot tell): the error comes at
    write time and is still one line, with no temp file left."""
    _refused(_args(files, "/proc/astrid-no-such-dir/c.csv"), capsys, "cannot write --output")


@pytest.mark.parametrize("value", ["-1", "0", "1", "2", "nan", "inf", "-inf", "abc", "0x1", ""])
def test_threshold_outside_zero_one_is_refused(files, tmp_path, capsys, value):
    out = tmp_path / "c.csv"
    _refused(_args(files, out, "--threshold", value), capsys, "--threshold")
    assert not out.exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps", "CPU ", ""])
def test_unknown_device_is_refused(files, tmp_path, capsys, device):
    _refused(_args(files, tmp_path / "c.csv", "--device", device), capsys, "--device")


def _model(tmp_path: Path, edit) -> Path:
    """A copy of the shipped model (real weights, matching sha256) with its card edited."""
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model, ignore=shutil.ignore_patterns("*.png"))
    card = json.loads((model / CARD_FILE).read_text())
    card = edit(card)
    (model / CARD_FILE).write_text(json.dumps(card))
    return model


def _with(path: str, value):
    def edit(card):
        target = card
        *parents, last = path.split(".")
        for key in parents:
            target = target[key]
        target[last] = value
        return card

    return edit


CARDS = {
    "card is a list": (lambda c: [], "not an object"),
    "architecture is a string": (_with("architecture", "astrid-unet"), "architecture must be an object"),
    "threshold null": (_with("thresholds.recommended", None), "thresholds.recommended"),
    "threshold text": (_with("thresholds.recommended", "high"), "thresholds.recommended"),
    "threshold 2": (_with("thresholds.recommended", 2), "thresholds.recommended"),
    "threshold true": (_with("thresholds.default", True), "thresholds.default"),
    "vetting text": (_with("thresholds.star_residual_min_excess", "lots"), "star_residual_min_excess"),
    "vetting negative": (_with("thresholds.star_residual_min_excess", -1), "star_residual_min_excess"),
    "version empty": (_with("version", ""), "version"),
    "depth string": (_with("architecture.depth", "3"), "architecture.depth"),
    "sha not hex": (_with("sha256", "../../etc/passwd"), "sha256"),
}


@pytest.mark.parametrize("case", sorted(CARDS))
def test_a_broken_model_card_is_one_model_error_line(files, tmp_path, capsys, case):
    edit, match = CARDS[case]
    out = tmp_path / "c.csv"
    line = _refused([*_args(files, out), "--model", str(_model(tmp_path, edit))], capsys, match)
    assert "model card" in line and "astrid detect: error:" in line
    assert not out.exists()


def test_a_consistent_seven_channel_model_is_refused_at_load(files, tmp_path, capsys):
    """Weights and card agree on 7 input channels, so it loads; inference could feed only 5."""
    torch.manual_seed(0)
    net = UNet(in_channels=7, base_channels=4, depth=2)
    model = tmp_path / "seven"
    save_model(net, ModelCard(name="seven", version="1", architecture=net.config()), model)
    out = tmp_path / "c.csv"
    _refused(
        [*_args(files, out), "--model", str(model)],
        capsys,
        "architecture.in_channels must be an integer from 3 to 5",
    )
    assert not out.exists()


def test_a_huge_or_deeply_nested_card_is_refused(files, tmp_path, capsys):
    deep = _model(tmp_path, lambda c: c)
    (deep / CARD_FILE).write_text("[" * 100_000 + "]" * 100_000)
    _refused([*_args(files, tmp_path / "c.csv"), "--model", str(deep)], capsys, "is not a valid card")
    (deep / CARD_FILE).write_bytes(b" " * (5 << 20))
    _refused([*_args(files, tmp_path / "c.csv"), "--model", str(deep)], capsys, "larger than")


def test_the_console_script_prints_one_line_for_a_usage_error(files, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    proc = subprocess.run(
        [sys.executable, "-m", "astrid.cli", *_args(files, tmp_path / "c.csv", "--threshold", "nan")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--threshold" in proc.stderr and "Traceback" not in proc.stderr
