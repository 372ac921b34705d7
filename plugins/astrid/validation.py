"""Weekly model validation: score models on labelled observations and decide what serves.

The decision is a pure function of measured metrics so it can be tested exhaustively and read
in one screen: promote a challenger only when it is at least as good as the champion by a margin
and above the floor; roll the champion back when it fell below the floor and there is a previous
version to go back to; otherwise keep what serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from astrid.metrics import Metrics, NullMetrics, metric_name

PROMOTE, KEEP, ROLLBACK = "promote", "keep", "rollback"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    target_version: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    champion: dict[str, Any],
    challenger: dict[str, Any] | None,
    *,
    min_f1: float,
    history: Sequence[str],
    margin: float = 0.01,
) -> Decision:
    """``champion``/``challenger``: {"version", "f1", ...} from :func:`score_model`."""
    if challenger is not None and challenger["f1"] >= min_f1 and challenger["f1"] >= champion["f1"] + margin:
        return Decision(
            PROMOTE,
            f"challenger v{challenger['version']} F1 {challenger['f1']:.3f} beats champion "
            f"v{champion['version']} F1 {champion['f1']:.3f} by >= {margin}",
            challenger["version"],
        )
    if champion["f1"] < min_f1:
        previous = next((v for v in reversed(history) if v != champion["version"]), None)
        if previous is not None:
            return Decision(
                ROLLBACK,
                f"champion v{champion['version']} F1 {champion['f1']:.3f} < floor {min_f1}: "
                f"rolling back to v{previous}",
                previous,
            )
        return Decision(
            KEEP,
            f"champion v{champion['version']} F1 {champion['f1']:.3f} < floor {min_f1} "
            "but there is no previous version to roll back to",
        )
    return Decision(KEEP, f"champion v{champion['version']} F1 {champion['f1']:.3f} holds (floor {min_f1})")


def score_model(
    detector: Any,
    claims: Sequence[Any],
    storage: Any,
    *,
    threshold: float,
    max_side: int,
    min_excess: float | str | None = "card",
    limits: Any = None,
) -> dict[str, Any]:
    """Run ``detector`` over labelled claims and score against their truth (recall per SNR bin, F1...)."""
    from astrid.imaging.synthetic import read_truth
    from astrid.ml.evaluate import score_detections
    from astrid.pipeline import load_claim

    pairs = []
    for claim in claims:
        triplet = load_claim(claim, storage, max_side, limits)
        _, detections = detector.analyse(triplet, threshold, min_excess)
        truth = read_truth(storage.resolve(claim.truth_uri))
        pairs.append((detections, truth, triplet.difference.size))
    report = score_detections(pairs)
    return _json_safe({"version": detector.version, **report.to_dict()})


def score_models(
    registry: Any,
    claims: Sequence[Any],
    storage: Any,
    *,
    threshold: float,
    device: str = "auto",
    max_side: int,
    vetting: float | str | None = "card",
    dag_run_id: str,
    dag_id: str | None = None,
    metrics: Metrics | None = None,
    limits: Any = None,
) -> dict[str, Any]:
    """Score the registry's champion (and challenger, when one exists) on the same labelled claims,
    log each score to MLflow and gauge the champion's F1 (``astrid.validation.f1``).

    Returns ``{"history": [...], "champion": score, "challenger": score}`` (challenger only when
    the alias exists): what :func:`decide_from_scores` takes.
    """
    from astrid.ml.engine import get_engine
    from astrid.paths import shipped_model_path
    from astrid.pipeline import VersionedDetector
    from astrid.registry import CHALLENGER, CHAMPION
    from astrid.tracking import log_validation

    registry.ensure_champion(shipped_model_path())
    scores: dict[str, Any] = {"history": registry.champion_history()}
    for alias in (CHAMPION, CHALLENGER):
        version = registry.alias_version(alias)
        if version is None:
            continue
        detector = VersionedDetector(get_engine(registry.resolve(version).path, device=device), version)
        scores[alias] = score_model(
            detector,
            claims,
            storage,
            threshold=threshold,
            max_side=max_side,
            min_excess=vetting,
            limits=limits,
        )
        log_validation(
            registry,
            alias,
            scores[alias],
            dag_run_id=dag_run_id,
            observations=len(claims),
            threshold=threshold,
        )
    (metrics or NullMetrics()).gauge(metric_name("astrid.validation.f1", dag_id), scores[CHAMPION]["f1"])
    return scores


def decide_from_scores(scores: dict[str, Any], *, min_f1: float) -> Decision:
    """:func:`decide` on the output of :func:`score_models`."""
    return decide(
        scores["champion"], scores.get("challenger"), min_f1=min_f1, history=scores.get("history", [])
    )


def apply_decision(registry: Any, action: str, decision: dict[str, Any], *, run_id: str | None = None) -> str:
    """Carry out a decision (:meth:`Decision.to_xcom`) for ``action``: move the ``champion`` alias
    (promote also drops ``challenger``) or keep it. Returns what happened, in words."""
    from astrid.logs import log_event
    from astrid.registry import CHALLENGER, CHAMPION

    if action == KEEP:
        return decision["reason"]
    if action not in (PROMOTE, ROLLBACK):
        raise ValueError(f"action {action!r}: expected {PROMOTE}, {KEEP} or {ROLLBACK}")
    old = registry.alias_version(CHAMPION)
    registry.set_alias(CHAMPION, decision["target_version"])
    if action == PROMOTE:
        registry.delete_alias(CHALLENGER)
    log_event(
        f"validation.{action}", run_id=run_id, old_champion=old, new_champion=decision["target_version"]
    )
    return f"champion v{old} -> v{decision['target_version']} ({decision['reason']})"


def _json_safe(value: Any) -> Any:
    """NaN (e.g. recall of an empty SNR bin) becomes None: XCom and MLflow take JSON."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
