"""What AstrID records in MLflow: one tracking run per inference step, per validated model, per
training (with its epochs and its comparison with the champion), and the validation's comparison.

The registry (:class:`astrid.registry.ModelRegistry`) is the client; this module decides the run
names, tags, params and metrics, so inference and validation runs read alike in the MLflow UI
whichever orchestrator (Airflow, the CLI, a notebook) started them.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from astrid.registry import INFERENCE_EXPERIMENT, VALIDATION_EXPERIMENT

INFERENCE_METRICS = (
    "processed_count",
    "failed_count",
    "detections_found",
    "processing_time",
    "success_rate",
    "megapixels",
)


def log_inference(
    registry: Any, run: Any, summary: Mapping[str, Any], *, model: Any, threshold: float, batch_size: int
) -> str:
    """Log one inference step (``run``: :class:`astrid.pipeline.RunInfo`) with its summary; the
    detection catalog CSV goes along as an artifact when it is a local file. Returns the MLflow run id."""
    tags = {
        "airflow.dag_id": run.dag_id,
        "airflow.run_id": run.orchestrator_run_id,
        "airflow.task_id": run.task_id,
    }
    name = f"{run.dag_id}/{run.orchestrator_run_id}"
    with registry.run(INFERENCE_EXPERIMENT, name, tags) as mlrun:
        run_id = mlrun.info.run_id
        registry.log(
            run_id,
            params={
                "model": model.reference,
                "model_version": model.version,
                "confidence_threshold": threshold,
                "batch_size": int(batch_size),
                "device": summary["device"],
                "star_residual_vetting": summary["star_residual_vetting"],
                "observations": len(summary["observation_ids"]) + summary["failed_count"],
            },
            metrics={key: summary[key] for key in INFERENCE_METRICS},
        )
        if summary["catalog_uri"]:
            local = Path(summary["catalog_uri"].removeprefix("file://"))
            if local.exists():
                registry.client.log_artifact(run_id, str(local))
    return run_id


def log_validation(
    registry: Any,
    alias: str,
    score: Mapping[str, Any],
    *,
    dag_run_id: str,
    observations: int,
    threshold: float,
    review: Any = None,
) -> str:
    """Log one model's validation score (from :func:`astrid.validation.score_model`), and its
    review (:class:`astrid.review.ValidationReview`: recall-vs-SNR plot, stamps of the missed
    transients and false detections, ``index.html``) as artifacts under ``review/``."""
    version = score["version"]
    tags = {"airflow.run_id": dag_run_id, "alias": alias}
    with registry.run(VALIDATION_EXPERIMENT, f"validate-{alias}-v{version}", tags) as mlrun:
        registry.log(
            mlrun.info.run_id,
            params={
                "model_version": version,
                "alias": alias,
                "observations": observations,
                "threshold": threshold,
            },
            metrics=flat_metrics(score),
        )
        if review is not None:
            with tempfile.TemporaryDirectory(prefix="astrid-review-") as folder:
                review.write(Path(folder), f"Validation of {alias} v{version}")
                registry.client.log_artifacts(mlrun.info.run_id, folder, artifact_path="review")
    return mlrun.info.run_id


def flat_metrics(score: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metric names for the summary figures and the recall of each SNR bin (finite only)."""
    flat = {k: v for k, v in score.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for b in score.get("recall_by_snr") or []:
        if b.get("n") and b.get("recall") is not None:
            flat["recall_snr_" + "".join(ch if ch.isalnum() else "_" for ch in str(b["label"]))] = b["recall"]
    return {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}


def training_params(config: Any, *, device: str, labelled: int) -> dict[str, Any]:
    """The params of a training run: the recipe's fields (lists as text), the device and how many
    labelled catalog observations were trained on beside the synthetic frames."""
    recipe = {k: (str(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in config.to_dict().items()}
    return {**recipe, "device": device, "labelled_observations": labelled}


def log_training_epoch(registry: Any, run_id: str, row: Mapping[str, Any]) -> None:
    """One epoch of :func:`astrid.ml.train.train` (its history row) as metrics at step ``epoch``."""
    step = int(row["epoch"])
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
            registry.client.log_metric(run_id, key, float(value), step=step)


def log_candidate_evaluation(
    registry: Any, run_id: str, scores: Mapping[str, Mapping[str, Any]], table: str
) -> None:
    """The candidate's validation figures (plain names) and the champion's (``champion_`` prefix)
    on the training run, with the comparison table as an artifact."""
    registry.log(run_id, metrics=flat_metrics(scores["candidate"]))
    registry.log(run_id, metrics={f"champion_{k}": v for k, v in flat_metrics(scores["champion"]).items()})
    registry.client.log_text(run_id, table, "evaluation/comparison.md")


def log_comparison(registry: Any, *, dag_run_id: str, table: str, scores: Mapping[str, Any]) -> str:
    """The weekly validation's comparison of the champion with every candidate: one run holding
    the table (markdown) and the scores (JSON) as artifacts. Returns the MLflow run id."""
    import json

    tags = {"airflow.run_id": dag_run_id, "alias": "comparison"}
    with registry.run(VALIDATION_EXPERIMENT, f"compare-{dag_run_id}", tags) as mlrun:
        registry.log(mlrun.info.run_id, params={"models": len(scores.get("candidates", [])) + 1})
        registry.client.log_text(mlrun.info.run_id, table, "comparison.md")
        registry.client.log_text(mlrun.info.run_id, json.dumps(scores, indent=2), "scores.json")
    return mlrun.info.run_id
