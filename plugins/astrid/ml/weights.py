"""Model weights (safetensors, never pickle) and the JSON model card that describes them.

A model directory holds ``model.safetensors`` and ``model_card.json``. The card is the single
source of truth for how to rebuild the network (``architecture``), how it was made (training
recipe, data generator settings, seed, the command to reproduce it), how good it is
(``metrics``, measured by ``astrid evaluate``), which threshold to use, and the sha256 of the
weights file, which :func:`load_model` verifies before anything is deserialised.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from astrid.errors import ModelError
from astrid.ml.unet import build_model, count_parameters

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
_RETRAIN = "retrain with `astrid train --output DIR` or restore the file from git (include/models/)"


@dataclass
class ModelCard:
    """Everything needed to rebuild, trust and reproduce a set of weights."""

    name: str
    version: str
    architecture: dict[str, Any]
    parameters: int = 0
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    training: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=lambda: {"default": 0.5})
    normalisation: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    weights_file: str = WEIGHTS_FILE
    notes: str = ""

    @property
    def threshold(self) -> float:
        """The recommended detection threshold (``thresholds['recommended']``, else 0.5)."""
        return float(self.thresholds.get("recommended", self.thresholds.get("default", 0.5)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)}
        missing = {"name", "version", "architecture"} - data.keys()
        if missing:
            raise ValueError(f"missing keys {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: torch.nn.Module, card: ModelCard, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` + ``model_card.json`` into ``directory``; return the weights path.

    The card written has ``parameters`` and ``sha256`` filled in from what was actually saved
    (the caller's card object is not modified).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key: safetensors writes a multi-key metadata map in hash order, which would
    # make the file's bytes (and the sha256 in the card) differ between identical trainings.
    blob = st_save(state, metadata={"model": f"{card.name}@{card.version}"})
    weights = directory / WEIGHTS_FILE
    _atomic_write(weights, blob)
    final = replace(
        card, sha256=sha256_bytes(blob), parameters=count_parameters(model), weights_file=WEIGHTS_FILE
    )
    write_card(final, directory)
    return weights


def write_card(card: ModelCard, directory: str | os.PathLike) -> Path:
    """(Re)write the card only, e.g. after evaluation updated ``metrics``; the sha stays valid."""
    path = Path(directory) / CARD_FILE
    _atomic_write(path, card.to_json().encode())
    return path


def resolve_model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights file, card file) for a model directory or a ``.safetensors`` path."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p / WEIGHTS_FILE, p / CARD_FILE
    if p.suffix == ".json":
        return p.with_name(WEIGHTS_FILE), p
    return p, p.with_name(CARD_FILE)


def read_card(path: str | os.PathLike) -> ModelCard:
    """The card of a model directory (or of the directory of a weights/card path)."""
    _, card_path = resolve_model_paths(path)
    if not card_path.is_file():
        raise ModelError(f"model card {card_path} not found; {_RETRAIN}")
    try:
        return ModelCard.from_dict(json.loads(card_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"model card {card_path} is not a valid card ({exc}); {_RETRAIN}") from exc


def load_model(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model directory or ``.safetensors`` file; returns ``(module in eval mode, card)``.

    Checks, in order, each failing with a :class:`ModelError` that names the file and the fix:
    the weights file exists; the card exists and parses; the weights' sha256 equals the card's;
    the file is valid safetensors; the card's architecture can be built; the tensors match it
    exactly (``strict=True``: no missing, unexpected or mis-shaped tensors). Nothing is
    unpickled: weights are read with ``safetensors`` only.
    """
    weights_path, card_path = resolve_model_paths(path)
    if not Path(path).exists() and Path(path).suffix not in (".safetensors", ".json"):
        raise ModelError(
            f"model directory {path} not found; pass --model DIR, set ASTRID_MODEL_PATH, or {_RETRAIN}"
        )
    if not weights_path.is_file():
        raise ModelError(
            f"model weights {weights_path} not found; pass --model DIR, set ASTRID_MODEL_PATH, or {_RETRAIN}"
        )
    card = read_card(card_path)
    try:
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model weights {weights_path}: {exc}") from exc
    if not card.sha256:
        raise ModelError(f"model card {card_path} has no sha256 for {weights_path.name}; {_RETRAIN}")
    digest = sha256_bytes(blob)
    if digest != card.sha256:
        raise ModelError(
            f"model weights {weights_path} have sha256 {digest[:12]}… but {card_path.name} expects "
            f"{card.sha256[:12]}…: the file is corrupt, truncated or from another model; {_RETRAIN}"
        )
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(
            f"model weights {weights_path} are not a valid safetensors file ({exc}); {_RETRAIN}"
        ) from exc
    try:
        model = build_model(card.architecture)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(
            f"model card {card_path} describes an architecture this code cannot build ({exc})"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:4])
        raise ModelError(
            f"model weights {weights_path} do not match the architecture in {card_path.name} "
            f"({detail}); the card and weights are from different models; {_RETRAIN}"
        ) from exc
    model.eval()
    return model, card
