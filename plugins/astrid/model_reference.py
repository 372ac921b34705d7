"""Model references: the one parser of what a run, the trigger API or the CLI may be told to load.

Accepted, and nothing else:

* ``champion``, ``challenger`` → ``models:/astrid-unet@champion`` (``…@challenger``);
* a registry version ``3`` → ``models:/astrid-unet/3``;
* ``models:/astrid-unet@<alias>`` and ``models:/astrid-unet/<version>``;
* an absolute path to a model directory (``model.safetensors`` + ``model_card.json``) that lies
  under one of the model roots (``ASTRID_INFERENCE_MODEL_ROOTS``; default ``include/models``).

A path is checked twice. :func:`parse_model_reference` checks it lexically wherever a trigger is
validated (the API, the DAG params' pattern from :func:`model_pattern`, the configuration), and
:func:`checked_model_path` checks it again on the worker with symlinks resolved, just before the
model is loaded. A refused path always gets the same message, whether it is outside the roots,
missing or not a model, so an error never tells whether a path exists.

A model loaded from a path is not a registry version: it is recorded (detections, runs, MLflow)
under :func:`path_version`, ``path:<directory name>@<first 12 hex of the weights' sha256>``.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from astrid.errors import ModelReferenceError

MODEL_NAME = "astrid-unet"
CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ROOTS_ENV = "ASTRID_INFERENCE_MODEL_ROOTS"
MAX_LENGTH = 1024

_VERSION = r"[1-9][0-9]{0,8}"
_ALIAS = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
_REGISTRY = rf"{CHAMPION}|{CHALLENGER}|{_VERSION}|models:/{MODEL_NAME}(?:@{_ALIAS}|/{_VERSION})"
# one path segment: no '/', no control character, and not '.' or '..' (written without lookahead,
# so the same pattern works in Python's jsonschema and in the browser's form validation)
_CHAR, _NODOT = r"[^/\x00-\x1f\x7f]", r"[^/.\x00-\x1f\x7f]"
_SEGMENT = rf"(?:{_NODOT}{_CHAR}*|\.{_NODOT}{_CHAR}*|\.\.{_CHAR}+)"


class ModelReference(NamedTuple):
    """A parsed reference: ``kind`` ``alias`` (value: the alias), ``version`` (value: the number)
    or ``path`` (value: the absolute path, lexically normalised). A NamedTuple: it is imported
    while DAG files parse, where a frozen dataclass's generated methods cost milliseconds."""

    kind: Literal["alias", "version", "path"]
    value: str

    @property
    def uri(self) -> str:
        """``models:/astrid-unet@alias``, ``models:/astrid-unet/3`` or the path."""
        if self.kind == "alias":
            return f"models:/{MODEL_NAME}@{self.value}"
        if self.kind == "version":
            return f"models:/{MODEL_NAME}/{self.value}"
        return self.value

    def __str__(self) -> str:
        return self.uri


def parse_model_reference(
    text: object, roots: Sequence[Path], *, what: str = "model_version"
) -> ModelReference:
    """Parse ``text`` or raise :class:`ModelReferenceError` naming ``what`` and the fix.

    ``roots`` are the model roots as absolute, symlink-free paths
    (``InferenceSchedulingConfig.model_root_paths``); with none, no path is accepted.
    """
    if not isinstance(text, str):
        raise ModelReferenceError(f"{what}={text!r} is not a string: {_HELP}")
    if len(text) > MAX_LENGTH:
        raise ModelReferenceError(f"{what} is {len(text)} characters long (at most {MAX_LENGTH}): {_HELP}")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in text):
        raise ModelReferenceError(f"{what}={text!r} contains control or invisible characters: {_HELP}")
    if re.fullmatch(_REGISTRY, text):
        if text in (CHAMPION, CHALLENGER):
            return ModelReference("alias", text)
        if text.isdigit():
            return ModelReference("version", text)
        rest = text.removeprefix(f"models:/{MODEL_NAME}")
        return (
            ModelReference("alias", rest[1:]) if rest.startswith("@") else ModelReference("version", rest[1:])
        )
    if not text.startswith("/"):
        if text.startswith("models:/"):
            raise ModelReferenceError(
                f"{what}={text!r} is not a reference to {MODEL_NAME}: use models:/{MODEL_NAME}@<alias> "
                f"or models:/{MODEL_NAME}/<version>"
            )
        raise ModelReferenceError(f"{what}={text!r} is not a model reference: {_HELP}")
    segments = text.removesuffix("/").split("/")[1:]
    if any(s in ("", ".", "..") for s in segments):
        raise ModelReferenceError(
            f"{what}={text!r}: '.', '..' and '//' are not allowed in a model path; give the directory itself"
        )
    path = "/" + "/".join(segments)
    if not any(_below(path, root) for root in roots):
        raise ModelReferenceError(_outside(what, text))
    return ModelReference("path", path)


def checked_model_path(reference: ModelReference, roots: Sequence[Path], *, what: str = "model") -> Path:
    """The model directory of a ``path`` reference, symlinks resolved, checked on the machine that
    loads it: still under a root, and a directory holding a model card and weights. Every refusal
    has the same message (see the module docs)."""
    from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE

    if reference.kind != "path":
        raise ValueError(f"{reference.uri} is a registry reference, not a path")
    real = Path(os.path.realpath(reference.value))
    inside = any(_below(str(real), str(Path(os.path.realpath(root)))) for root in roots)
    if not (inside and (real / CARD_FILE).is_file() and (real / WEIGHTS_FILE).is_file()):
        raise ModelReferenceError(_outside(what, reference.value))
    return real


def model_pattern(roots: Sequence[Path]) -> str:
    """A JSON-schema ``pattern`` accepting what :func:`parse_model_reference` accepts, for the DAG
    params (UI form, ``dags trigger --conf``, the REST API). Paths must lie under ``roots``."""
    alternatives = [_REGISTRY]
    if roots:
        prefixes = "|".join(_escape(str(root).rstrip("/")) for root in roots)
        alternatives.append(rf"(?:{prefixes})(?:/{_SEGMENT})+/?")
    # "$(?!\n)": Python's "$" (jsonschema) also matches before a final newline; ECMAScript's does not
    return "^(?:" + "|".join(alternatives) + r")$(?!\n)"


def path_version(path: Path, sha256: str) -> str:
    """The version label of a model loaded from a path: never a bare registry version number."""
    return f"path:{path.name[:80]}@{sha256[:12]}"


def _below(path: str | Path, root: str | Path) -> bool:
    root = str(root).rstrip("/")
    return str(path).startswith(root + "/") and len(str(path)) > len(root) + 1


def _outside(what: str, text: str) -> str:
    return (
        f"{what}={text!r} is not a model directory under the model roots ({MODEL_ROOTS_ENV}): put the "
        "model directory under one of them, or register it and pass its version"
    )


def _escape(text: str) -> str:
    """Regex-escape for both Python and ECMAScript (``re.escape`` writes ``\\-``, which a browser's
    unicode-mode RegExp refuses)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


_HELP = (
    f"use champion, challenger, a registry version number, models:/{MODEL_NAME}@<alias>, "
    f"models:/{MODEL_NAME}/<version>, or an absolute path to a model directory under {MODEL_ROOTS_ENV}"
)


def requested_model(value: object, default: str, roots: Sequence[Path]) -> ModelReference:
    """What a run loads: its ``model_version`` param, or ``default`` (``ASTRID_INFERENCE_MODEL_URI``)
    when the param is empty. The DAGs render params as native objects, so a version given as
    ``"999"`` arrives as the int 999: that is read as the version it was."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        return parse_model_reference(default, roots, what="ASTRID_INFERENCE_MODEL_URI")
    return parse_model_reference(value, roots)
