"""Model references (issue 13 item 2): registry names and aliases, or model directories under the
configured model roots, and nothing else, with one parser (astrid.model_reference) behind the
trigger API, the DAG params, the configuration and the operator."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from astrid.config import InferenceSchedulingConfig
from astrid.errors import ModelError, ModelReferenceError
from astrid.ml.weights import read_card
from astrid.model_reference import (
    ModelReference,
    checked_model_path,
    model_pattern,
    parse_model_reference,
    path_version,
    requested_model,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "include" / "models" / "astrid-unet"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A model root holding a copy of the shipped model (real weights and card)."""
    models = tmp_path / "models"
    shutil.copytree(SHIPPED, models / "unet-v2", ignore=shutil.ignore_patterns("*.png"))
    return models.resolve()


@pytest.mark.parametrize(
    ("text", "kind", "uri"),
    [
        ("champion", "alias", "models:/astrid-unet@champion"),
        ("challenger", "alias", "models:/astrid-unet@challenger"),
        ("7", "version", "models:/astrid-unet/7"),
        ("models:/astrid-unet@staging_2", "alias", "models:/astrid-unet@staging_2"),
        ("models:/astrid-unet/12", "version", "models:/astrid-unet/12"),
    ],
)
def test_registry_references(text, kind, uri):
    ref = parse_model_reference(text, ())
    assert (ref.kind, ref.uri) == (kind, uri)


def test_a_path_under_a_root(root):
    ref = parse_model_reference(f"{root}/unet-v2/", [root])
    assert ref == ModelReference("path", f"{root}/unet-v2")
    assert checked_model_path(ref, [root]) == root / "unet-v2"


REFUSED = [
    "/etc",
    "/etc/passwd",
    "/../../etc/passwd",
    "../../etc/passwd",
    "etc/passwd",
    "~/models/x",
    "latest",
    "latest; rm -rf /",
    "0",
    "007",
    "-1",
    "1e3",
    "models:/other-model@champion",
    "models:/astrid-unet@",
    "models:/astrid-unet/0",
    "models:/astrid-unet/latest; ls",
    "file:///etc/passwd",
    "s3://bucket/model",
    "champion\n",
    "champion\x00",
    "\u202echampion",  # right-to-left override
    "/x\ud800",  # a lone surrogate (JSON can carry one)
    "Champion",
    " champion",
    "",
    "x" * 2000,
]


@pytest.mark.parametrize("text", REFUSED)
def test_everything_else_is_refused_naming_the_field(text, root):
    with pytest.raises(ModelReferenceError) as err:
        parse_model_reference(text, [root])
    assert str(err.value).startswith("model_version")
    assert isinstance(err.value, ValueError) and isinstance(err.value, ModelError)


@pytest.mark.parametrize(
    "suffix", ["/unet-v2/../../../etc", "/./unet-v2", "//unet-v2", "/unet-v2/..", "/a/../unet-v2"]
)
def test_dot_segments_are_refused_even_when_they_land_inside_a_root(root, suffix):
    with pytest.raises(ModelReferenceError, match=r"'\.', '\.\.' and '//' are not allowed"):
        parse_model_reference(f"{root}{suffix}", [root])


def test_without_roots_no_path_is_accepted(root):
    with pytest.raises(ModelReferenceError, match="not a model directory under the model roots"):
        parse_model_reference(f"{root}/unet-v2", [])


def test_a_refused_path_never_tells_whether_it_exists(root, tmp_path):
    """Outside the roots (existing or not), missing inside a root, a symlink escaping the root, a
    file, an empty directory: one message, only the value differs."""
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / "unet-v2", outside)  # a real model, outside the root
    (root / "escape").symlink_to(outside)
    (root / "file").write_text("x")
    (root / "empty").mkdir()

    def message(text: str) -> str:
        try:
            ref = parse_model_reference(text, [root])
            checked_model_path(ref, [root], what="model_version")
        except ModelReferenceError as exc:
            return str(exc).replace(repr(text), "<value>")
        raise AssertionError(f"{text} was accepted")

    messages = {
        message(text)
        for text in (
            "/etc",  # exists, outside
            "/no/such/dir",  # missing, outside
            str(outside),  # a real model, outside
            f"{root}/missing",  # missing, inside
            f"{root}/escape",  # a symlink under the root to a model outside it
            f"{root}/file",
            f"{root}/empty",
        )
    }
    assert len(messages) == 1, messages
    assert "ASTRID_INFERENCE_MODEL_ROOTS" in messages.pop()


def test_a_root_reached_through_a_symlink_is_checked_on_the_real_path(root, tmp_path):
    link = tmp_path / "link-to-models"
    link.symlink_to(root)
    config = InferenceSchedulingConfig(model_roots=str(link))
    assert config.model_root_paths == (root,)  # roots are stored symlink-free
    ref = parse_model_reference(f"{root}/unet-v2", config.model_root_paths)
    assert checked_model_path(ref, config.model_root_paths) == root / "unet-v2"


def test_the_dag_param_pattern_accepts_exactly_what_the_parser_accepts(root):
    """The DAG params' JSON-schema pattern (UI form, dags trigger --conf, REST) and the parser agree."""
    schema = {"type": "string", "pattern": model_pattern([root])}
    accepted = ["champion", "challenger", "7", "models:/astrid-unet@x", "models:/astrid-unet/3"]
    accepted += [f"{root}/unet-v2", f"{root}/unet-v2/", f"{root}/a/.hidden/b", f"{root}/v..2"]
    refused = [*REFUSED, f"{root}", f"{root}/..", f"{root}/unet-v2/../../x", f"{root}//x", f"{root}x/y"]
    for text in accepted:
        jsonschema.validate(text, schema)
        parse_model_reference(text, [root])
    for text in refused:
        if len(text) > 1024:
            continue  # the Param's maxLength, not the pattern, refuses these
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(text, schema)
        with pytest.raises(ModelReferenceError):
            parse_model_reference(text, [root])


def test_the_pattern_is_valid_ecmascript_too(root):
    """The browser compiles it; Python's re.escape would write '\\-', which a unicode RegExp refuses."""
    weird_root = root.parent / "my-models (v1)+[a]"
    pattern = model_pattern([weird_root])
    assert r"\-" not in pattern
    assert re.fullmatch(pattern, f"{weird_root}/m") and not re.fullmatch(
        pattern, f"{root.parent}/my-models/m"
    )


def test_registry_resolves_a_path_under_a_root_with_a_path_label(root, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    from astrid.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{tmp_path}/mlflow.db")
    resolved = registry.resolve(f"{root}/unet-v2", [root])
    card = read_card(root / "unet-v2")
    assert resolved.path == root / "unet-v2"
    # recorded as a path model, never as if it were a registry version (or the card's own version)
    assert resolved.version == f"path:unet-v2@{card.sha256[:12]}" == path_version(resolved.path, card.sha256)
    assert resolved.version != card.version and not resolved.version.isdigit()
    assert resolved.reference == f"{root}/unet-v2"
    for text in ("/etc", f"{root}/../../etc", f"{root}/nope"):
        with pytest.raises(ModelReferenceError):
            registry.resolve(text, [root])
    # a directory swapped for a symlink after the trigger was validated is still refused at load
    shutil.move(root / "unet-v2", tmp_path / "moved")
    os.symlink(tmp_path / "moved", root / "unet-v2")
    with pytest.raises(ModelReferenceError, match="not a model directory under the model roots"):
        registry.resolve(f"{root}/unet-v2", [root])


def test_requested_model_falls_back_to_the_configured_model(root):
    config = InferenceSchedulingConfig(model_roots=str(root), model_uri=f"{root}/unet-v2")
    args = (config.model_uri, config.model_root_paths)
    assert requested_model(None, *args).uri == f"{root}/unet-v2"
    assert requested_model("", *args).uri == f"{root}/unet-v2"
    assert requested_model("challenger", *args).uri == "models:/astrid-unet@challenger"
    # "{{ params.model_version }}" rendered as a native object: "999" arrives as 999
    assert requested_model(999, *args).uri == "models:/astrid-unet/999"
    with pytest.raises(ModelReferenceError):
        requested_model(True, *args)
    with pytest.raises(ModelReferenceError, match="model_version='/etc'"):
        requested_model("/etc", *args)
    with pytest.raises(ModelReferenceError, match="ASTRID_INFERENCE_MODEL_URI"):
        requested_model(None, "/etc", config.model_root_paths)
