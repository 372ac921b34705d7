"""``astrid register DIR`` and ModelRegistry.register_checked: what enters the registry, and what not.

Real MLflow store (SQLite + local artifacts under a temp dir), the shipped model (copied) as the
good model; each refusal is a real broken directory. The command runs through ``astrid.cli.main``
(the console script's entry point) and once as a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from astrid.cli import main
from astrid.errors import ModelError
from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE, sha256_bytes
from astrid.paths import shipped_model_path
from astrid.registry import CHALLENGER, ModelRegistry, verify_model_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A copy of the shipped model: a real trained model directory, free to break."""
    target = tmp_path / "model"
    shutil.copytree(shipped_model_path(), target)
    return target


def register(capsys, store: str, directory: Path | str) -> tuple[int, str, str]:
    code = main(["register", str(directory), "--tracking-uri", store])
    out = capsys.readouterr()
    return code, out.out, out.err


def _rewrite_card(directory: Path, **changes) -> None:
    card = json.loads((directory / CARD_FILE).read_text())
    card.update(changes)
    (directory / CARD_FILE).write_text(json.dumps(card))


def _reseal(directory: Path) -> None:
    """Make the card's sha256 match whatever weights file is there (so a later check must catch it)."""
    _rewrite_card(directory, sha256=sha256_bytes((directory / WEIGHTS_FILE).read_bytes()))


def test_register_uploads_the_model_as_challenger_once(capsys, store, model):
    code, out, err = register(capsys, store, model)
    assert code == 0 and "error" not in err
    assert "version 1, now the challenger" in out
    registry = ModelRegistry(store)
    assert registry.alias_version(CHALLENGER) == "1"
    resolved = registry.resolve("1")
    assert sorted(p.name for p in resolved.path.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])
    card = json.loads((model / CARD_FILE).read_text())
    assert registry.client.get_model_version("astrid-unet", "1").tags["sha256"] == card["sha256"]
    # the same weights again: no second version, the alias stays where it is
    code, out, _ = register(capsys, store, model)
    assert code == 0 and "already registered" in out and "version 1" in out
    assert registry.versions() == ["1"]


def test_only_the_model_files_are_uploaded(capsys, store, model):
    (model / "notes.txt").write_text("private")
    (model / "cache").mkdir()
    (model / "cache" / "big.bin").write_bytes(b"x" * 1000)
    assert register(capsys, store, model)[0] == 0
    uploaded = ModelRegistry(store).resolve("1").path
    assert sorted(p.name for p in uploaded.iterdir()) == sorted([CARD_FILE, WEIGHTS_FILE])


def _corrupt_weights(d: Path) -> None:
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(data))


def _other_architecture(d: Path) -> None:
    """Valid safetensors of another network (base 4 channels), the card resealed to their sha: the
    tensors do not fit the card's architecture."""
    from safetensors.torch import save

    from astrid.ml.unet import UNet

    other = UNet(in_channels=5, base_channels=4, depth=2)
    (d / WEIGHTS_FILE).write_bytes(save({k: v.contiguous() for k, v in other.state_dict().items()}))
    _reseal(d)


def _not_safetensors(d: Path) -> None:
    (d / WEIGHTS_FILE).write_bytes(b"\x80\x04K\x01." * 10)  # a pickle, resealed
    _reseal(d)


def _traversal(d: Path) -> None:
    _rewrite_card(d, weights_file="../../outside.safetensors")


def _symlinked_weights(d: Path) -> None:
    outside = d.parent / "elsewhere.safetensors"
    shutil.move(d / WEIGHTS_FILE, outside)
    (d / WEIGHTS_FILE).symlink_to(outside)


def _card_is_a_list(d: Path) -> None:
    (d / CARD_FILE).write_text("[1, 2]")


def _card_not_json(d: Path) -> None:
    (d / CARD_FILE).write_text("{not json")


def _other_model(d: Path) -> None:
    _rewrite_card(d, name="someone-elses-net")


@pytest.mark.parametrize(
    "breakage,needle",
    [
        (_corrupt_weights, "sha256"),
        (_other_architecture, "do not match the architecture"),
        (_not_safetensors, "not a valid safetensors"),
        (lambda d: (d / WEIGHTS_FILE).unlink(), f"{WEIGHTS_FILE} is missing"),
        (lambda d: (d / CARD_FILE).unlink(), f"{CARD_FILE} is missing"),
        (_traversal, "names weights file '../../outside.safetensors'"),
        (_symlinked_weights, "symbolic link"),
        (_card_is_a_list, "is not a model card"),
        (_card_not_json, "is not readable JSON"),
        (_other_model, "someone-elses-net"),
    ],
    ids=[
        "corrupt-weights",
        "card-weights-mismatch",
        "not-safetensors",
        "missing-weights",
        "missing-card",
        "path-traversal",
        "symlink",
        "card-list",
        "card-not-json",
        "other-model",
    ],
)
def test_broken_models_are_refused_in_one_line_and_nothing_is_registered(
    capsys, store, model, breakage, needle
):
    breakage(model)
    code, out, err = register(capsys, store, model)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("astrid register: error: "), err
    assert needle in err, err
    assert "Traceback" not in err
    assert ModelRegistry(store).versions() == []


def test_paths_that_are_not_model_directories_are_refused(capsys, store, model, tmp_path):
    for path, needle in (
        (model / WEIGHTS_FILE, "is not a directory"),
        (tmp_path / "nowhere", "does not exist"),
    ):
        code, _, err = register(capsys, store, path)
        assert code == 2 and needle in err and err.count("\n") == 1, err
    assert ModelRegistry(store).versions() == []


def test_verify_model_dir_returns_the_card_of_a_good_model(model):
    card = verify_model_dir(model)
    assert card.name == "astrid-unet" and card.sha256
    _corrupt_weights(model)
    with pytest.raises(ModelError, match="sha256"):
        verify_model_dir(model)


def test_the_console_script_refuses_without_a_traceback(store, model):
    """The installed entry point end to end: exit 2, one line, nothing else."""
    _corrupt_weights(model)
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    done = subprocess.run(
        [sys.executable, "-m", "astrid.cli", "register", str(model), "--tracking-uri", store],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "sha256" in done.stderr, done.stderr
