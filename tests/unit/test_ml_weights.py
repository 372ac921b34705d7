"""Weights + model card: safetensors round trip and refusal of anything that does not match."""

from __future__ import annotations

import json

import pytest
import torch

from astrid.errors import ModelError
from astrid.ml.unet import UNet, count_parameters
from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE, ModelCard, load_model, save_model, sha256_bytes

torch.set_num_threads(1)


def _tiny(base: int = 4) -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=base, depth=2)


def _save(tmp_path, model=None):
    model = model or _tiny()
    card = ModelCard(name="tiny", version="0.0.1", architecture=model.config(), training={"seed": 0})
    save_model(model, card, tmp_path)
    return model


def test_round_trip_directory_and_file(tmp_path):
    model = _save(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    for path in (tmp_path, tmp_path / WEIGHTS_FILE):
        loaded, card = load_model(path)
        assert not loaded.training
        assert card.parameters == count_parameters(model)
        assert card.sha256 == sha256_bytes((tmp_path / WEIGHTS_FILE).read_bytes())
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k])
        with torch.inference_mode():
            assert torch.equal(model(x), loaded(x))


def test_file_is_safetensors_not_pickle(tmp_path):
    _save(tmp_path)
    blob = (tmp_path / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(blob[:8], "little")
    assert json.loads(blob[8 : 8 + header_len])  # safetensors: u64 length + JSON header
    assert not blob.startswith(b"PK") and not blob.startswith(b"\x80")  # not a zip/pickle


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found") as err:
        load_model(tmp_path / "nowhere")
    assert "astrid train" in str(err.value)


def test_missing_card(tmp_path):
    _save(tmp_path)
    (tmp_path / CARD_FILE).unlink()
    with pytest.raises(ModelError, match=CARD_FILE):
        load_model(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_fail_hash(tmp_path, damage):
    _save(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="sha256") as err:
        load_model(tmp_path)
    assert str(weights) in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights_with_matching_hash_still_refused(tmp_path, damage):
    """Even if someone 'fixes' the card's hash, a broken file is refused (and never unpickled)."""
    _save(tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    blob = weights.read_bytes()
    bad = blob[: len(blob) // 2] if damage == "truncate" else b"\x00garbage" * 100
    weights.write_bytes(bad)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["sha256"] = sha256_bytes(bad)
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_model(tmp_path)


def test_hash_mismatch(tmp_path):
    _save(tmp_path)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["sha256"] = "0" * 64
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="sha256"):
        load_model(tmp_path)


def test_shape_mismatch(tmp_path):
    _save(tmp_path, _tiny(base=4))
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["architecture"]["base_channels"] = 8  # weights are base 4
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="do not match the architecture") as err:
        load_model(tmp_path)
    assert WEIGHTS_FILE in str(err.value)


def test_unknown_architecture(tmp_path):
    _save(tmp_path)
    card = json.loads((tmp_path / CARD_FILE).read_text())
    card["architecture"]["name"] = "resnet"
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="architecture"):
        load_model(tmp_path)
