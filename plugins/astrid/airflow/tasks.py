"""Operators for the steps around inference: pre-flight, run report, weekly validation.

Plain operator classes rather than TaskFlow functions: importing the TaskFlow decorators costs
~30 ms of DAG parse time, and every DAG file must parse in under 50 ms. Each ``execute`` is a
few lines over the core (:mod:`astrid.preflight`, :mod:`astrid.pipeline`, :mod:`astrid.validation`,
:mod:`astrid.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Asset, BaseBranchOperator, BaseOperator

from astrid.airflow.hooks import CatalogHook, ModelRegistryHook, ObservationStorageHook
from astrid.airflow.notifiers import AstridNotifier

SERVING_MODEL = Asset(name="astrid_serving_model", uri="file:///astrid/models/astrid-unet/champion")


class PreflightOperator(BaseOperator):
    """Skip the run (downstream skipped, nothing claimed) when the host is over its limits."""

    ui_color = "#f1f3f4"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from astrid.config import load_config
        from astrid.logs import log_event
        from astrid.preflight import check

        report = check(load_config())
        log_event(
            "preflight",
            run_id=context["run_id"],
            dag_id=self.dag_id,
            ok=report.ok,
            memory_percent=report.memory_percent,
            load_per_cpu=round(report.load_per_cpu, 2),
            gpu_memory_percent=report.gpu_memory_percent,
            reasons=report.reasons or None,
        )
        if not report.ok:
            raise AirflowSkipException("pre-flight: " + "; ".join(report.reasons))
        return {"memory_percent": report.memory_percent, "load_per_cpu": report.load_per_cpu}


class InferenceReportOperator(BaseOperator):
    """Record the run in ``inference_runs``, raise degradation alerts, return the run summary.

    :param summaries: one inference summary, or the list from mapped inference tasks
    :param claimed: the claim task's output (to count rejected observations)
    :param kind: ``realtime`` or ``batch``
    """

    template_fields: Sequence[str] = ("summaries", "claimed")

    def __init__(self, *, summaries: Any, claimed: Any = None, kind: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "none_failed_min_one_success")
        super().__init__(**kwargs)
        self.summaries, self.claimed, self.kind = summaries, claimed, kind

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.airflow.operators import _stats
        from astrid.config import load_config
        from astrid.pipeline import RunSummary, emit_run_gauges

        summaries = self.summaries
        if isinstance(summaries, dict):
            parts = [summaries]
        else:  # mapped: index by length (iterating a lazy XCom sequence probes one past the end)
            parts = [summaries[i] for i in range(len(summaries or []))]
            parts = [p for p in parts if p]
        summary = RunSummary.merge(parts).to_xcom()
        summary["rejected_count"] = _rejected(self.claimed, summary)
        config = load_config()
        catalog = CatalogHook().get_conn()
        catalog.record_run(
            run_id=context["run_id"],
            dag_id=self.dag_id,
            kind=self.kind,
            model_version=summary["model_version"],
            started_at=context["dag_run"].start_date,
            claimed=len(self.claimed or []),
            processed=summary["processed_count"],
            failed=summary["failed_count"],
            rejected=summary["rejected_count"],
            detections=summary["detections_found"],
            processing_seconds=summary["processing_time"],
            success_rate=summary["success_rate"],
            status="success",
        )
        emit_run_gauges(_stats(), self.dag_id, summary)
        for message in degradations(catalog, self.dag_id, self.kind, summary, config):
            AstridNotifier(kind="degradation", message=message).notify(context)
        return summary


def _rejected(claimed: Any, summary: dict[str, Any]) -> int:
    if not claimed:
        return 0
    done = summary["processed_count"] + summary["failed_count"]
    return max(0, len(claimed) - done)


def degradations(catalog: Any, dag_id: str, kind: str, summary: dict[str, Any], config: Any) -> list[str]:
    """Messages for every degradation this run shows (empty when healthy)."""
    messages = []
    attempted = summary["processed_count"] + summary["failed_count"]
    if attempted and summary["success_rate"] < config.min_success_rate:
        messages.append(
            f"success rate {summary['success_rate']:.2f} < {config.min_success_rate} "
            f"({summary['failed_count']} of {attempted} observations failed)"
        )
    if kind == "realtime":
        recent = catalog.runs(dag_id=dag_id)[: config.zero_detection_runs]
        if len(recent) >= config.zero_detection_runs and all(
            r["processed"] > 0 and r["detections"] == 0 for r in recent
        ):
            messages.append(
                f"zero detections in the last {config.zero_detection_runs} realtime runs "
                "that processed observations"
            )
    return messages


# -- weekly validation ---------------------------------------------------------------------
class SelectValidationSetOperator(BaseOperator):
    """Labelled observations (truth kept with them); read, not claimed: validation changes no state."""

    template_fields: Sequence[str] = ("size",)

    def __init__(self, *, size: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.size = size

    def execute(self, context: Any) -> list[dict[str, Any]]:
        observations = [c.to_xcom() for c in CatalogHook().get_conn().labelled(int(self.size))]
        if not observations:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(
                "no labelled observations in the catalog: seed some with "
                "`astrid seed --count N --labelled N` or register labelled data"
            )
        return observations


class ScoreModelsOperator(BaseOperator):
    """Score champion (and challenger when one exists) on the same observations; log to MLflow."""

    template_fields: Sequence[str] = ("observations", "confidence_threshold")

    def __init__(self, *, observations: Any, confidence_threshold: float | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.observations, self.confidence_threshold = observations, confidence_threshold

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.catalog import Claim
        from astrid.config import load_config
        from astrid.ml.engine import get_engine
        from astrid.paths import shipped_model_path
        from astrid.pipeline import VersionedDetector
        from astrid.registry import CHALLENGER, CHAMPION, VALIDATION_EXPERIMENT
        from astrid.validation import score_model

        config = load_config()
        threshold = float(self.confidence_threshold)
        registry = ModelRegistryHook().get_conn()
        registry.ensure_champion(shipped_model_path())
        storage = ObservationStorageHook().get_conn()
        claims = [Claim.from_xcom(c) for c in self.observations]
        scores: dict[str, Any] = {"history": registry.champion_history()}
        for alias in (CHAMPION, CHALLENGER):
            version = registry.alias_version(alias)
            if version is None:
                continue
            resolved = registry.resolve(version)
            detector = VersionedDetector(get_engine(resolved.path, device=config.device), version)
            scores[alias] = score_model(
                detector,
                claims,
                storage,
                threshold=threshold,
                max_side=config.max_image_side,
                min_excess=config.vetting_level,
            )
            with registry.run(
                VALIDATION_EXPERIMENT,
                f"validate-{alias}-v{version}",
                {"airflow.run_id": context["run_id"], "alias": alias},
            ) as mlrun:
                registry.log(
                    mlrun.info.run_id,
                    params={
                        "model_version": version,
                        "alias": alias,
                        "observations": len(claims),
                        "threshold": threshold,
                    },
                    metrics=_flat_metrics(scores[alias]),
                )
        _gauge_f1(self.dag_id, scores[CHAMPION]["f1"])
        return scores


def _gauge_f1(dag_id: str, f1: float) -> None:
    from astrid.airflow.operators import _stats
    from astrid.metrics import metric_name

    _stats().gauge(metric_name("astrid.validation.f1", dag_id), f1)


def _flat_metrics(score: dict[str, Any]) -> dict[str, float]:
    """MLflow metric names for the summary figures and the recall of each SNR bin."""
    import math

    flat = {k: v for k, v in score.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for b in score.get("recall_by_snr") or []:
        if b.get("n") and b.get("recall") is not None:
            flat["recall_snr_" + "".join(ch if ch.isalnum() else "_" for ch in str(b["label"]))] = b["recall"]
    return {k: v for k, v in flat.items() if v is not None and math.isfinite(v)}


class ValidationDecisionOperator(BaseBranchOperator):
    """Promote, keep or roll back — on the measured metrics (see :func:`astrid.validation.decide`)."""

    template_fields: Sequence[str] = ("scores",)

    def __init__(self, *, scores: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores = scores

    def choose_branch(self, context: Any) -> str:
        from astrid.config import load_config
        from astrid.logs import log_event
        from astrid.validation import decide

        config = load_config()
        scores = self.scores
        decision = decide(
            scores["champion"],
            scores.get("challenger"),
            min_f1=config.min_validation_f1,
            history=scores.get("history", []),
        )
        log_event(
            "validation.decision", run_id=context["run_id"], action=decision.action, reason=decision.reason
        )
        context["ti"].xcom_push(
            key="decision",
            value={
                "action": decision.action,
                "reason": decision.reason,
                "target_version": decision.target_version,
            },
        )
        if scores["champion"]["f1"] < config.min_validation_f1:
            AstridNotifier(kind="degradation", message=f"model validation: {decision.reason}").notify(context)
        return decision.action


class MoveChampionOperator(BaseOperator):
    """Carry out the decision: move the ``champion`` alias (promote/rollback) or keep it.

    Promote and rollback emit the ``astrid_serving_model`` Asset event (give them
    ``outlets=[SERVING_MODEL]``); a broken model never becomes champion because
    :meth:`ModelRegistry.register` refuses models that do not load.
    """

    def __init__(self, *, action: str, decision_task_id: str = "decide", **kwargs: Any) -> None:
        if action not in ("promote", "keep", "rollback"):
            raise ValueError(f"action {action!r}: expected promote, keep or rollback")
        super().__init__(**kwargs)
        self.action, self.decision_task_id = action, decision_task_id

    def execute(self, context: Any) -> str:
        from astrid.logs import log_event
        from astrid.registry import CHALLENGER, CHAMPION

        decision = context["ti"].xcom_pull(task_ids=self.decision_task_id, key="decision")
        if self.action == "keep":
            return decision["reason"]
        registry = ModelRegistryHook().get_conn()
        old = registry.alias_version(CHAMPION)
        registry.set_alias(CHAMPION, decision["target_version"])
        if self.action == "promote":
            registry.delete_alias(CHALLENGER)
        log_event(
            f"validation.{self.action}",
            run_id=context["run_id"],
            old_champion=old,
            new_champion=decision["target_version"],
        )
        return f"champion v{old} -> v{decision['target_version']} ({decision['reason']})"


class RecordFailedRun:
    """DAG-level on_failure_callback: record the run as failed and release its unfinished claims.

    Releasing returns the observations to the queue at once (instead of after the lease), so the
    next run — with the model or database fixed — picks them up.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __call__(self, context: Any) -> None:
        from astrid.airflow.operators import catalog_run_id

        try:
            catalog = CatalogHook().get_conn()
            catalog.record_run(
                run_id=context["run_id"], dag_id=context["dag"].dag_id, kind=self.kind, status="failed"
            )
            catalog.release(catalog_run_id(context))
        except Exception as exc:  # a callback must never raise, but must say why it did nothing
            from astrid.logs import log_event

            log_event("record_failed_run.error", exc=exc, dag_id=context["dag"].dag_id)


# -- maintenance -----------------------------------------------------------------------------
class DbCleanOperator(BaseOperator):
    """`airflow db clean` for metadata rows older than the retention (archive tables dropped)."""

    template_fields: Sequence[str] = ("retention_days",)

    def __init__(self, *, retention_days: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days

    def execute(self, context: Any) -> str:
        import subprocess
        import sys
        from datetime import UTC, datetime, timedelta
        from pathlib import Path

        before = (datetime.now(UTC) - timedelta(days=float(self.retention_days))).isoformat()
        airflow = Path(sys.executable).with_name("airflow")
        command = [
            str(airflow) if airflow.exists() else "airflow",
            "db",
            "clean",
            "--clean-before-timestamp",
            before,
            "--skip-archive",
            "--yes",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        self.log.info("%s\n%s", " ".join(command), done.stdout[-4000:])
        if done.returncode != 0:
            raise RuntimeError(f"airflow db clean failed ({done.returncode}): {done.stderr[-2000:]}")
        return before


class PruneTaskLogsOperator(BaseOperator):
    """Delete local task log files older than the retention (see :func:`astrid.maintenance.prune_logs`)."""

    template_fields: Sequence[str] = ("retention_days", "log_folder")

    def __init__(self, *, retention_days: int | str, log_folder: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days, self.log_folder = retention_days, log_folder

    def execute(self, context: Any) -> dict[str, int]:
        from dataclasses import asdict
        from pathlib import Path

        from airflow.sdk.configuration import conf

        from astrid.logs import log_event
        from astrid.maintenance import prune_logs

        folder = Path(self.log_folder or conf.get("logging", "base_log_folder"))
        report = prune_logs(folder, float(self.retention_days))
        log_event("maintenance.prune_logs", run_id=context["run_id"], folder=str(folder), **asdict(report))
        return asdict(report)
