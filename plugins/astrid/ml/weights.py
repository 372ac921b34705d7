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
import math
import os
import re
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
    def from_dict(cls, data: Any) -> ModelCard:
        """A card from parsed JSON, every field checked (``ValueError`` naming it): a card that
        loads must not break later, half-way through a run."""
        check_card(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


MAX_CARD_BYTES = 4 << 20


def check_card(data: Any) -> None:
    """Raise ``ValueError`` naming the first field of a model card that is missing or unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"the card is a JSON {type(data).__name__}, not an object")
    missing = {"name", "version", "architecture"} - data.keys()
    if missing:
        raise ValueError(f"missing keys {sorted(missing)}")
    for key in ("name", "version"):
        if not isinstance(data[key], str) or not 0 < len(data[key]) <= 200:
            raise ValueError(f"{key} must be a non-empty string (at most 200 characters), got {data[key]!r}")
    arch = data["architecture"]
    if not isinstance(arch, dict):
        raise ValueError(f"architecture must be an object, got {type(arch).__name__} {arch!r:.80}")
    # in_channels: what astrid.ml.normalise.normalise_stack can feed (3 to 5 channels)
    for key, low, high in (("in_channels", 3, 5), ("base_channels", 1, 256), ("depth", 1, 6)):
        value = arch.get(key, 3 if key == "in_channels" else None)
        if not _is_int(value) or not low <= value <= high:
            raise ValueError(f"architecture.{key} must be an integer from {low} to {high}, got {value!r}")
    thresholds = data.get("thresholds", {"default": 0.5})
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds must be an object, got {thresholds!r:.80}")
    for key in ("default", "recommended"):
        if key in thresholds and not (_is_number(thresholds[key]) and 0 < thresholds[key] < 1):
            raise ValueError(
                f"thresholds.{key} must be a number strictly between 0 and 1, got {thresholds[key]!r}"
            )
    level = thresholds.get("star_residual_min_excess")
    if level is not None and not (_is_number(level) and 0 < level <= 100):
        raise ValueError(
            f"thresholds.star_residual_min_excess must be null or a number in (0, 100], got {level!r}"
        )
    for key in ("training", "data", "metrics", "normalisation"):
        if key in data and not isinstance(data[key], dict):
            raise ValueError(f"{key} must be an object, got {type(data[key]).__name__}")
    for key in ("created", "command", "notes", "weights_file"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{key} must be a string, got {data[key]!r:.80}")
    if "parameters" in data and not (_is_int(data["parameters"]) and data["parameters"] >= 0):
        raise ValueError(f"parameters must be a non-negative integer, got {data['parameters']!r}")
    sha = data.get("sha256", "")
    if not isinstance(sha, str) or (sha and not re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha!r:.80}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise ModelError(f"model card {card_path} is larger than {MAX_CARD_BYTES} bytes: not a model card")
    try:
        return ModelCard.from_dict(json.loads(card_path.read_bytes()))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ModelError(f"model card {card_path} is not a valid card ({exc}); {_RETRAIN}") from None


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
