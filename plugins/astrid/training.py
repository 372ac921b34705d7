"""The model's life, step one: build a training set, train a candidate, compare it with the
champion, register it as ``challenger``.

The training DAG (``astrid_model_training``) is thin over these four functions, and a notebook
can call them the same way. What each step hands the next is small and JSON (claim dicts, an
MLflow run id, scores), so the steps can run on different workers:

1. :func:`build_dataset` — the labelled observations of the catalog, split the way the weekly
   validation splits them: the first ``validation_size`` (by id) are *the validation set*, the
   ones after it are trained on, beside the synthetic survey with injected transients that
   :func:`astrid.ml.train.train` generates from its seed.
2. :func:`train_candidate` — :func:`astrid.ml.train.train` with a recipe chosen by device
   (:func:`training_recipe`), every epoch's loss logged to an MLflow run of the
   ``astrid-training`` experiment while it trains, the model logged as that run's artifacts.
3. :func:`evaluate_candidate` — candidate and champion scored on the validation set with
   :func:`astrid.validation.score_model`, i.e. the figures ``astrid evaluate`` reports (recall per
   SNR bin, false detections per Mpix, precision, F1 — and whatever the evaluation adds).
4. :func:`register_candidate` — the measured metrics go into the card, and the model enters the
   registry as ``challenger`` (:meth:`astrid.registry.ModelRegistry.register_checked`). The
   weekly validation decides whether it ever serves.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrid.errors import ConfigError, ModelError

# TrainConfig fields a recipe override may not set (the worker's threads; the input channels the
# engine builds), and the ones that count things (at least 1)
_FIXED_FIELDS = frozenset({"threads", "in_channels"})
_SIZES = frozenset(
    {"epochs", "observations", "size", "patch", "patches_per_epoch", "batch_size", "base_channels", "depth"}
    | {"calibration_size"}
)


@dataclass(frozen=True)
class LabelledObservation:
    """A catalog observation with its truth, in the shape :func:`astrid.ml.train.make_frame` takes."""

    name: str
    science: Any
    reference: Any
    difference: Any
    truth: list[Any]


def build_dataset(catalog: Any, *, validation_size: int, labelled_limit: int) -> dict[str, Any]:
    """The validation set (the weekly validation's: the first ``validation_size`` labelled
    observations) and the labelled observations trained on (up to ``labelled_limit`` after them),
    as claim dicts. :class:`ModelError` when there is nothing to validate on."""
    if validation_size < 1 or labelled_limit < 0:
        raise ConfigError(f"validation_size={validation_size} must be >= 1, labelled_limit >= 0")
    labelled = catalog.labelled(validation_size + labelled_limit)
    if not labelled:
        raise ModelError(
            "no labelled observations in the catalog to validate a trained model on: seed some with "
            "`astrid seed --count N --labelled N` or register labelled data"
        )
    validation, training = labelled[:validation_size], labelled[validation_size:]
    return {
        "validation": [c.to_xcom() for c in validation],
        "training": [c.to_xcom() for c in training],
    }


def training_device(requested: str = "auto") -> str:
    """``cuda`` when asked for (or ``auto``) and present, else ``cpu`` — the fallback."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={requested!r} is not one of auto, cpu, cuda")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        from astrid.logs import log_event

        log_event("training.no_cuda", level=30, detail="CUDA asked for but not available: training on CPU")
    return "cpu"


def training_recipe(
    device: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    cpu_epochs: int,
    cpu_observations: int,
) -> Any:
    """The :class:`~astrid.ml.train.TrainConfig` for ``device``.

    On ``cuda``: the shipped model's recipe (``TrainConfig()``). On ``cpu``, the fallback: the same
    recipe bounded to ``cpu_epochs`` epochs over ``cpu_observations`` synthetic frames, so a CPU
    worker finishes within the task's timeout. ``overrides`` (the DAG's ``recipe`` param) then set
    any other field; unknown fields and non-positive sizes are refused (:class:`ConfigError`).
    """
    from astrid.ml.train import TrainConfig

    if not isinstance(overrides or {}, Mapping):
        raise ConfigError(f"recipe must be an object of TrainConfig fields, got {overrides!r}")
    config = TrainConfig()
    if device == "cpu":
        config = dataclasses.replace(
            config,
            epochs=min(config.epochs, cpu_epochs),
            observations=min(config.observations, cpu_observations),
        )
    return dataclasses.replace(config, **_checked_overrides(config, overrides or {}))


def _checked_overrides(config: Any, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe overrides, type-checked against ``config``'s fields (one clear error per bad one)."""
    known = {f.name for f in dataclasses.fields(config)} - _FIXED_FIELDS
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(
                f"recipe field {key!r} is not a training setting: use one of {', '.join(sorted(known))}"
            )
        default = getattr(config, key)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"recipe field {key!r} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"recipe field {key!r} must be an object, got {value!r}")
        else:
            value = _recipe_number(key, value, type(default))
        out[key] = value
    return out


def _recipe_number(key: str, value: Any, kind: type) -> float | int:
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"recipe field {key!r} must be a finite number, got {value!r}")
    if kind is int and value != int(value):
        raise ConfigError(f"recipe field {key!r} must be a whole number, got {value!r}")
    lowest = 1 if key in _SIZES else 0
    if value < lowest:
        raise ConfigError(f"recipe field {key!r} must be at least {lowest}, got {value!r}")
    return kind(value)


def load_labelled(
    claims: Sequence[Mapping[str, Any]], storage: Any, max_side: int
) -> list[LabelledObservation]:
    """The labelled observations' triplets and truth, read through the storage root."""
    from astrid.catalog import Claim
    from astrid.imaging.truth import read_truth
    from astrid.pipeline import load_claim

    out = []
    for data in claims:
        claim = Claim.from_xcom(data)
        triplet = load_claim(claim, storage, max_side)
        truth = read_truth(storage.resolve(claim.truth_uri))
        out.append(
            LabelledObservation(claim.name, triplet.science, triplet.reference, triplet.difference, truth)
        )
    return out


def train_candidate(
    registry: Any,
    *,
    config: Any,
    device: str,
    labelled: Sequence[LabelledObservation],
    run: Any,
    version: str | None = None,
) -> dict[str, Any]:
    """Train ``config`` on ``device`` (synthetic frames + ``labelled``), logging each epoch to an
    MLflow run of the training experiment and the model as its ``model`` artifacts.

    ``run`` is the :class:`astrid.pipeline.RunInfo` of the orchestrator's run (tags, names).
    Returns what the next steps need: the MLflow run id, the card's version and sha256, the
    device, the epochs' last loss and the seconds it took.
    """
    from astrid.ml.train import train
    from astrid.registry import TRAINING_EXPERIMENT
    from astrid.tracking import log_training_epoch, training_params

    started = time.perf_counter()
    # the card version is in the weights file's metadata: a clock-free one keeps a retraining
    # that reproduces the same weights recognisable (same sha256, no second registry version)
    version = version or f"{time.strftime('%Y.%m.%d')}-seed{config.seed}"
    tags = {"airflow.dag_id": run.dag_id, "airflow.run_id": run.orchestrator_run_id, "device": device}
    with registry.run(TRAINING_EXPERIMENT, f"train-{version}", tags) as mlrun:
        run_id = mlrun.info.run_id
        registry.log(run_id, params=training_params(config, device=device, labelled=len(labelled)))
        with tempfile.TemporaryDirectory(prefix="astrid-train-") as out:
            result = train(
                config,
                out,
                version=version,
                command=f"{run.dag_id} run {run.orchestrator_run_id} ({device})",
                extra_observations=labelled,
                on_epoch=lambda row: log_training_epoch(registry, run_id, row),
                device=device,
            )
            registry.client.log_artifacts(run_id, out, artifact_path="model")
    return {
        "mlflow_run_id": run_id,
        "version": result.card.version,
        "sha256": result.card.sha256,
        "device": device,
        "epochs": len(result.history),
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "labelled_observations": [o.name for o in labelled],
        "seconds": round(time.perf_counter() - started, 1),
    }


def evaluate_candidate(
    registry: Any,
    *,
    candidate_run_id: str,
    validation: Sequence[Mapping[str, Any]],
    storage: Any,
    threshold: float,
    max_side: int,
    device: str = "auto",
    vetting: float | str | None = "card",
) -> dict[str, Any]:
    """Score the candidate and the champion on the validation set (same claims, same threshold,
    same vetting), log both to the candidate's training run and return
    ``{"candidate": score, "champion": score, "table": markdown}``."""
    from astrid.catalog import Claim
    from astrid.ml.engine import get_engine
    from astrid.paths import shipped_model_path
    from astrid.pipeline import VersionedDetector
    from astrid.registry import CHAMPION
    from astrid.tracking import log_candidate_evaluation
    from astrid.validation import comparison_table, score_model

    claims = [Claim.from_xcom(c) for c in validation]
    if not claims:
        raise ModelError("the validation set is empty: nothing to compare the candidate with the champion on")
    registry.ensure_champion(shipped_model_path())
    champion_version = registry.alias_version(CHAMPION)
    detectors = {
        "candidate": VersionedDetector(
            get_engine(registry.run_model(candidate_run_id), device=device), "candidate"
        ),
        CHAMPION: VersionedDetector(
            get_engine(registry.resolve(champion_version).path, device=device), champion_version
        ),
    }
    scores = {
        role: score_model(
            detector, claims, storage, threshold=threshold, max_side=max_side, min_excess=vetting
        )
        for role, detector in detectors.items()
    }
    table = comparison_table([("candidate", scores["candidate"]), (CHAMPION, scores[CHAMPION])])
    log_candidate_evaluation(registry, candidate_run_id, scores, table)
    return {**scores, "table": table}


def register_candidate(
    registry: Any,
    *,
    candidate_run_id: str,
    evaluation: Mapping[str, Any],
    run: Any,
) -> dict[str, Any]:
    """Write the validation metrics into the candidate's card and register it as ``challenger``
    (already registered weights: the alias moves to that version). Returns the version."""
    import shutil

    from astrid.ml.weights import CARD_FILE, WEIGHTS_FILE, read_card, write_card
    from astrid.registry import CHALLENGER
    from astrid.tracking import flat_metrics

    source = registry.run_model(candidate_run_id)
    with tempfile.TemporaryDirectory(prefix="astrid-candidate-") as staging:
        directory = Path(staging)
        for name in (WEIGHTS_FILE, CARD_FILE):
            shutil.copyfile(source / name, directory / name)
        card = read_card(directory)
        champion = evaluation["champion"]
        card.metrics = {
            **card.metrics,
            "validation": flat_metrics({k: v for k, v in evaluation["candidate"].items() if k != "version"}),
            "validation_champion": {"version": champion["version"], **flat_metrics(champion)},
            "validation_observations": evaluation["candidate"].get("observations"),
            "validation_source": f"{run.dag_id} run {run.orchestrator_run_id}",
        }
        write_card(card, directory)
        version, created = registry.register_checked(
            directory,
            alias=CHALLENGER,
            description=f"trained by {run.dag_id} run {run.orchestrator_run_id}",
            tags={"training_run_id": candidate_run_id, "source": run.dag_id},
        )
    return {
        "version": version,
        "created": created,
        "alias": CHALLENGER,
        "f1": evaluation["candidate"].get("f1"),
        "champion_f1": champion.get("f1"),
    }
