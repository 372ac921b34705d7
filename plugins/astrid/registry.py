"""The MLflow side: tracking runs, and the model registry with ``champion``/``challenger`` aliases.

A model version's artifacts are our own format (``model.safetensors`` + ``model_card.json``),
registered with ``create_model_version`` pointing at a run's artifact directory — no pickled
MLflow flavour, so loading a model never unpickles anything. The serving model is whatever the
``champion`` alias points at; validation moves aliases, and the previous champion is remembered
on the registered model (tag ``champion_history``) so a rollback knows where to go.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrid.errors import ModelError
from astrid.model_reference import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    ModelReference,
    checked_model_path,
    parse_model_reference,
    path_version,
)

__all__ = ["CHALLENGER", "CHAMPION", "MODEL_NAME", "ModelRegistry", "ResolvedModel"]

INFERENCE_EXPERIMENT = "astrid-inference"
VALIDATION_EXPERIMENT = "astrid-validation"
TRAINING_EXPERIMENT = "astrid-training"
MLFLOW_UI_ENV = "ASTRID_MLFLOW_UI_URL"  # where browsers reach the MLflow UI (links in Airflow)


def reference_for(value: str) -> str:
    """``champion``/``challenger`` → ``models:/astrid-unet@<alias>``; anything else as given (a
    version number, a ``models:/`` URI or a path, for :meth:`ModelRegistry.resolve`)."""
    value = str(value).strip()
    return f"models:/{MODEL_NAME}@{value}" if value in (CHAMPION, CHALLENGER) else value


def verify_model_dir(model_dir: str | Path) -> Any:
    """Check a trained model directory before it enters the registry; return its card.

    Refuses, each with a :class:`ModelError` that names the file and the fix: a path that does
    not exist or is not a directory; a missing ``model.safetensors`` or ``model_card.json``; either
    file being a symbolic link (it could point anywhere on the host); a card naming another
    weights file (``weights_file`` such as ``../x`` would reach outside the directory) or another
    model; and everything :func:`astrid.ml.weights.load_model` refuses (sha256 mismatch = corrupt
    or swapped weights, not safetensors, an architecture the tensors do not fit).
    """
    from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE, load_model, read_card

    path = Path(model_dir)
    if not path.exists():
        raise ModelError(
            f"model directory {path} does not exist: pass the directory `astrid train --output` wrote"
        )
    if not path.is_dir():
        raise ModelError(
            f"{path} is not a directory: pass the model directory holding {WEIGHTS_FILE} and {CARD_FILE}"
        )
    for name in (WEIGHTS_FILE, CARD_FILE):
        file = path / name
        if file.is_symlink():
            raise ModelError(f"{file} is a symbolic link: copy the real file into the model directory")
        if not file.is_file():
            raise ModelError(
                f"{file} is missing: a model directory holds {WEIGHTS_FILE} and {CARD_FILE} (astrid train writes both)"
            )
    try:
        raw = json.loads((path / CARD_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(
            f"{path / CARD_FILE} is not readable JSON ({exc}): restore the card astrid train wrote"
        ) from exc
    if not isinstance(raw, dict):
        raise ModelError(
            f"{path / CARD_FILE} is not a model card (a JSON object): restore the card astrid train wrote"
        )
    card = read_card(path)
    if card.weights_file != WEIGHTS_FILE:
        raise ModelError(
            f"{path / CARD_FILE} names weights file {card.weights_file!r}: only {WEIGHTS_FILE} inside the "
            "model directory is accepted"
        )
    if card.name != MODEL_NAME:
        raise ModelError(f"{path / CARD_FILE} is a card for model {card.name!r}, not {MODEL_NAME}")
    return load_model(path)[1]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    version: str  # registry version ("3"), or path:<dir>@<sha12> for a model loaded from a path
    reference: str


class ModelRegistry:
    """Thin wrapper over an MLflow client bound to one tracking URI."""

    def __init__(self, tracking_uri: str, artifact_root: str | None = None) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow
        from mlflow import MlflowClient

        from astrid.paths import astrid_home, default_mlflow_artifacts

        self.tracking_uri = tracking_uri
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        local_store = tracking_uri.startswith(("sqlite:", "file:", "/"))
        self.artifact_root = artifact_root or (default_mlflow_artifacts() if local_store else None)
        self.cache = astrid_home() / "model-cache"
        if tracking_uri.startswith(("http://", "https://")):
            self._check_reachable()

    @property
    def display_uri(self) -> str:
        """The tracking URI without any user:password, for messages and logs."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.tracking_uri)
        if "@" not in parts.netloc:
            return self.tracking_uri
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()

    def _check_reachable(self, timeout: float = 10.0) -> None:
        """Fail fast when an HTTP tracking server does not answer at all: MLflow's client retries
        each request for about four minutes, so a task would hang past its execution timeout."""
        import requests

        try:
            requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=timeout)
        except requests.RequestException as exc:
            raise ModelError(
                f"MLflow registry at {self.display_uri} is unreachable ({type(exc).__name__}): check the "
                "mlflow_default connection (or MLFLOW_TRACKING_URI) and that the server is up; the task retries"
            ) from exc

    # -- tracking -------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=self.artifact_root and f"{self.artifact_root}/{name}"
            )
        except Exception:  # created concurrently by another task
            return self.client.get_experiment_by_name(name).experiment_id

    @contextmanager
    def run(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
        """An MLflow run; ended FAILED if the body raises, so failures are visible in the UI."""
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags or {})
        try:
            yield run
        except BaseException:
            self.client.set_terminated(run.info.run_id, status="FAILED")
            raise
        self.client.set_terminated(run.info.run_id, status="FINISHED")

    def log(
        self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None
    ) -> None:
        for key, value in (params or {}).items():
            self.client.log_param(run_id, key, value)
        for key, value in (metrics or {}).items():
            if value is not None:
                self.client.log_metric(run_id, key, float(value))

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI: under ``ASTRID_MLFLOW_UI_URL`` when set (the address a
        browser reaches; the tracking URI is often a container-only name like http://mlflow:5000),
        else under an http(s) tracking URI, else http://localhost:5000."""
        from astrid.status import safe_http_url

        run = self.client.get_run(run_id)
        ui = safe_http_url(os.environ.get(MLFLOW_UI_ENV), default="")
        base = ui or (self.tracking_uri if self.tracking_uri.startswith("http") else "http://localhost:5000")
        return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    # -- registry -------------------------------------------------------------------------
    def register(
        self,
        model_dir: Path,
        *,
        alias: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> str:
        """Upload a model directory as a new version (optionally setting an alias); returns the version.

        Only the model's two files are uploaded (never whatever else the directory holds), and
        the version is tagged with the weights' ``sha256`` and the card's version.
        """
        import shutil
        import tempfile

        from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE, load_model

        card = load_model(model_dir)[1]  # refuse to register anything that does not load
        try:
            self.client.get_registered_model(MODEL_NAME)
        except Exception:
            with contextlib.suppress(Exception):  # created concurrently by another task
                self.client.create_registered_model(MODEL_NAME, description="AstrID U-Net transient detector")
        with (
            tempfile.TemporaryDirectory(prefix="astrid-register-") as staging,
            self.run(VALIDATION_EXPERIMENT, f"register-{Path(model_dir).name}") as run,
        ):
            for name in (WEIGHTS_FILE, CARD_FILE):
                shutil.copyfile(Path(model_dir) / name, Path(staging) / name)
            self.client.log_artifacts(run.info.run_id, staging, artifact_path="model")
            source = f"{run.info.artifact_uri}/model"
        version_tags = {"sha256": card.sha256, "card_version": card.version, **(tags or {})}
        mv = self.client.create_model_version(
            MODEL_NAME, source=source, run_id=run.info.run_id, description=description, tags=version_tags
        )
        if alias:
            self.set_alias(alias, mv.version)
        return str(mv.version)

    def register_checked(
        self,
        model_dir: str | Path,
        *,
        alias: str = CHALLENGER,
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> tuple[str, bool]:
        """Register a trained model directory as ``alias`` (default ``challenger``) after
        :func:`verify_model_dir`; weights already registered (same sha256) are not uploaded
        again, the alias moves to their version. Returns ``(version, created)``."""
        card = verify_model_dir(model_dir)
        existing = self.version_with_sha256(card.sha256)
        if existing is not None:
            self.set_alias(alias, existing)
            return existing, False
        return self.register(Path(model_dir), alias=alias, description=description, tags=tags), True

    def versions(self, limit: int | None = None) -> list[str]:
        """Registered versions of the model, newest first (at most ``limit``)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{MODEL_NAME}'")
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        numbers = sorted((int(mv.version) for mv in found), reverse=True)
        return [str(n) for n in numbers[:limit]]

    def version_with_sha256(self, sha256: str) -> str | None:
        """The newest version whose weights have this sha256 (tagged at registration), if any."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{MODEL_NAME}'")
        except MlflowException:
            return None
        same = [int(mv.version) for mv in found if (mv.tags or {}).get("sha256") == sha256]
        return str(max(same)) if same else None

    def run_model(self, run_id: str) -> Path:
        """The model a run logged under its ``model`` artifacts (a training run), downloaded into
        the cache once and verified (:func:`astrid.ml.weights.load_model`)."""
        if not run_id.isalnum():  # MLflow run ids are hex: nothing else may name a cache directory
            raise ModelError(f"MLflow run id {run_id!r} is not a run id (hexadecimal)")
        target = self.cache / f"run-{run_id}"
        source = f"{self.client.get_run(run_id).info.artifact_uri}/model"
        if not (target / "model_card.json").exists():
            self._download(source, target)
        self._verify_or_refetch(source, target)
        return target

    def alias_version(self, alias: str) -> str | None:
        """The version the alias points at; ``None`` only when the model or alias does not exist.

        Any other error (registry down, auth) raises :class:`ModelError`: taking it for "no
        champion" would make :meth:`ensure_champion` replace the serving champion.
        """
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(MODEL_NAME, alias).version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc):
                return None
            raise ModelError(
                f"cannot read alias {alias!r} of {MODEL_NAME} from the registry at {self.display_uri}: {exc}"
            ) from exc

    def set_alias(self, alias: str, version: str) -> None:
        if alias == CHAMPION:
            current = self.alias_version(CHAMPION)
            if current == str(version):
                return
            if current is not None:
                history = [*self.champion_history(), current]
                self.client.set_registered_model_tag(
                    MODEL_NAME, "champion_history", json.dumps(history[-20:])
                )
        self.client.set_registered_model_alias(MODEL_NAME, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        if self.alias_version(alias) is not None:
            self.client.delete_registered_model_alias(MODEL_NAME, alias)

    def champion_history(self) -> list[str]:
        try:
            tags = self.client.get_registered_model(MODEL_NAME).tags
        except Exception:
            return []
        return json.loads(tags.get("champion_history", "[]"))

    def ensure_champion(self, shipped: Path) -> str:
        """Bootstrap: an empty registry gets the shipped model as version 1, champion."""
        return self.alias_version(CHAMPION) or self.register(
            shipped, alias=CHAMPION, description="shipped model"
        )

    def resolve(self, reference: str | ModelReference, roots: Sequence[Path] = ()) -> ResolvedModel:
        """The local directory of a model reference (parsed by :mod:`astrid.model_reference`).

        Registry references are downloaded into the cache; a path (allowed only under ``roots``,
        checked again here with symlinks resolved) is loaded in place and recorded as
        ``path:<dir>@<sha12>``, never as a registry version.
        """
        ref = reference if isinstance(reference, ModelReference) else parse_model_reference(reference, roots)
        if ref.kind == "path":
            from astrid.ml.weights import load_model

            path = checked_model_path(ref, roots)
            card = load_model(path)[1]
            return ResolvedModel(path=path, version=path_version(path, card.sha256), reference=ref.uri)
        version = ref.value if ref.kind == "version" else self._alias_target(ref)
        try:
            mv = self.client.get_model_version(MODEL_NAME, version)
        except Exception as exc:
            raise ModelError(
                f"model version {version!r} of {MODEL_NAME} not found in the registry at "
                f"{self.display_uri}: list versions in the MLflow UI and pass one that exists"
            ) from exc
        # keyed by registry (tracking URI) and by the version's source, so another registry's or a
        # re-registered "v3" never reuses stale files
        import hashlib

        key = hashlib.sha256(f"{self.tracking_uri}|{mv.source}".encode()).hexdigest()[:12]
        target = self.cache / f"v{version}-{key}"
        if not (target / "model_card.json").exists():
            self._download(mv.source, target)
        self._verify_or_refetch(mv.source, target)
        return ResolvedModel(path=target, version=str(version), reference=ref.uri)

    def _verify_or_refetch(self, source: str, target: Path) -> None:
        """A corrupt cache entry (disk error, killed copy) is replaced once, not failed on forever."""
        import shutil

        from astrid.ml.weights import load_model

        try:
            load_model(target)
        except ModelError:
            shutil.rmtree(target, ignore_errors=True)
            self._download(source, target)
            load_model(target)  # a corrupt *registered* model still fails, clearly

    def _download(self, source: str, target: Path) -> None:
        """Download into a private directory, then rename: concurrent mapped tasks never see half a model."""
        import shutil
        import tempfile

        import mlflow.artifacts

        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.cache, prefix=".download-"))
        try:
            got = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(staging), tracking_uri=self.tracking_uri
                )
            )
            try:
                got.rename(target)
            except OSError:  # another process won the race; its copy is identical
                if not (target / "model_card.json").exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _alias_target(self, ref: ModelReference) -> str:
        version = self.alias_version(ref.value)
        if version is None:
            raise ModelError(
                f"no model version has alias {ref.value!r} in {ref.uri!r}: "
                "run the validation DAG or set the alias in the MLflow UI"
            )
        return version
