"""Model directories for tests: a genuinely worse copy of the shipped model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def blind_copy(directory: Path, name: str = "blind-model") -> Path:
    """The shipped model with its output bias pushed to -40: a genuinely worse model (finds
    nothing), with a card whose sha256 matches, so it loads and registers like any model."""
    from safetensors.torch import load_file, save_file

    from astrid.paths import shipped_model_path

    dst = directory / name
    shutil.copytree(shipped_model_path(), dst)
    weights = next(dst.glob("*.safetensors"))
    tensors = load_file(str(weights))
    bias = [k for k in tensors if k.endswith("bias")][-1]
    tensors[bias] = tensors[bias] - 40.0
    save_file(tensors, str(weights))
    card = json.loads((dst / "model_card.json").read_text())
    card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    card["version"] = card.get("version", "x") + "-blind"
    (dst / "model_card.json").write_text(json.dumps(card))
    return dst
