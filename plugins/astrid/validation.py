"""Weekly model validation: score models on labelled observations and decide what serves.

Every candidate is scored on the same observations as the champion: the ``challenger`` alias and
the latest N registry versions (``ASTRID_INFERENCE_VALIDATION_CANDIDATES``), so a good model that
lost its alias, or an older version, can still win. The decision is a pure function of measured
metrics so it can be tested exhaustively and read in one screen: promote the best candidate only
when it is at least as good as the champion by a margin and above the floor; roll the champion
back when it fell below the floor and there is a previous version to go back to; otherwise keep
what serves. The comparison table (:func:`comparison_table`) goes to MLflow and into the
promotion/rollback announcement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from astrid.metrics import Metrics, NullMetrics, metric_name

PROMOTE, KEEP, ROLLBACK = "promote", "keep", "rollback"
# the figures of the comparison table: (column, score key); a key a score lacks shows as "–"
TABLE_COLUMNS = (
    ("F1", "f1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("recall SNR ≥ 7", "recall_snr_ge_7"),
    ("recall SNR 4.5–7", "recall_snr_4_5_to_7"),
    ("false / Mpix", "false_per_mpix"),
    ("efficiency 4.5–7", "efficiency_snr_4_5_to_7"),
    ("efficiency 7–12", "efficiency_snr_7_to_12"),
    ("efficiency ≥ 12", "efficiency_snr_ge_12"),
    ("observations", "observations"),
)


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    target_version: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    champion: dict[str, Any],
    candidates: Sequence[dict[str, Any]],
    *,
    min_f1: float,
    history: Sequence[str],
    margin: float = 0.01,
) -> Decision:
    """``champion`` and each candidate: {"version", "f1", ...} from :func:`score_model`.

    The candidate promoted is the best by F1 of those above the floor that beat the champion by
    ``margin`` (the first listed of equals: the challenger is listed first)."""
    eligible = [c for c in candidates if c["f1"] >= min_f1 and c["f1"] >= champion["f1"] + margin]
    if eligible:
        best = max(eligible, key=lambda c: c["f1"])
        return Decision(
            PROMOTE,
            f"{_label(best)} F1 {best['f1']:.3f} beats champion "
            f"v{champion['version']} F1 {champion['f1']:.3f} by >= {margin}",
            best["version"],
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


def _label(score: Mapping[str, Any]) -> str:
    alias = score.get("alias")
    return f"{alias} v{score['version']}" if alias else f"v{score['version']}"


def comparison_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """A markdown table, one row per ``(role, score)``: the figures ``astrid evaluate`` reports."""
    head = "| model | version | " + " | ".join(name for name, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(TABLE_COLUMNS)]
    for role, score in rows:
        cells = [_cell(score.get(key)) for _, key in TABLE_COLUMNS]
        lines.append(f"| {role} | {score.get('version', '–')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def scores_table(scores: Mapping[str, Any]) -> str:
    """:func:`comparison_table` of :func:`score_models`' output: the champion, then each candidate."""
    rows = [("champion", scores["champion"])]
    rows += [(c.get("alias") or "candidate", c) for c in scores.get("candidates", [])]
    return comparison_table(rows)


def score_model(
    detector: Any,
    claims: Sequence[Any],
    storage: Any,
    *,
    threshold: float,
    max_side: int,
    min_excess: float | str | None = "card",
    limits: Any = None,
    review: Any = None,
) -> dict[str, Any]:
    """Run ``detector`` over labelled claims and score against their truth (recall per SNR bin, F1...).

    ``review`` (an :class:`astrid.review.ValidationReview`) collects stamps of the missed transients
    and false detections, and the report for its plot, while the frames are in memory. Either way
    the score carries the efficiency against the ideal detector per local-SNR bin
    (``efficiency_snr_4_5_to_7``, ``_7_to_12``, ``_ge_12``: :meth:`ValidationReview.efficiency`)."""
    from astrid.imaging.truth import read_truth
    from astrid.ml.scoring import score_detections
    from astrid.pipeline import load_claim
    from astrid.review import ValidationReview

    review = review if review is not None else ValidationReview(limit=0)  # figures, no stamps
    pairs = []
    for claim in claims:
        triplet = load_claim(claim, storage, max_side, limits)
        probability, detections = detector.analyse(triplet, threshold, min_excess)
        truth = read_truth(storage.resolve(claim.truth_uri))
        pairs.append((detections, truth, triplet.difference.size))
        review.add(claim.name, triplet, probability, detections, truth)
    report = score_detections(pairs, detector=f"v{detector.version}", threshold=threshold)
    review.report = report
    efficiency = {_efficiency_key(row): row["efficiency"] for row in review.efficiency()}
    return _json_safe({"version": detector.version, **report.to_dict(), **efficiency})


def _efficiency_key(row: Mapping[str, Any]) -> str:
    lo, hi = (f"{v:g}".replace(".", "_") for v in (row["lo"], row["hi"]))
    return f"efficiency_snr_ge_{lo}" if hi == "inf" else f"efficiency_snr_{lo}_to_{hi}"


def candidate_versions(registry: Any, *, latest: int) -> list[tuple[str, str]]:
    """``(alias, version)`` of every candidate, each version once, the champion's excluded: the
    ``challenger`` first (alias ``challenger``), then up to ``latest`` of the newest other
    registered versions (alias ``""``)."""
    from astrid.registry import CHALLENGER, CHAMPION

    seen = {registry.alias_version(CHAMPION)}
    out: list[tuple[str, str]] = []
    challenger = registry.alias_version(CHALLENGER)
    if challenger is not None and challenger not in seen:
        out.append((CHALLENGER, challenger))
        seen.add(challenger)
    others = [v for v in registry.versions() if v not in seen]
    out += [("", v) for v in others[:latest]]
    return out


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
    latest: int = 3,
    limits: Any = None,
) -> dict[str, Any]:
    """Score the registry's champion and every candidate (:func:`candidate_versions`) on the same
    labelled claims, log each score to MLflow, log the comparison table and gauge the champion's
    F1 (``astrid.validation.f1``).

    Returns ``{"history": [...], "champion": score, "candidates": [score, ...], "table": markdown,
    "comparison_run_id": ...}`` (each candidate's score carries its ``alias``): what
    :func:`decide_from_scores` takes.
    """
    from astrid.ml.engine import get_engine
    from astrid.paths import shipped_model_path
    from astrid.pipeline import VersionedDetector
    from astrid.registry import CHAMPION
    from astrid.review import ValidationReview
    from astrid.tracking import log_comparison, log_validation

    registry.ensure_champion(shipped_model_path())
    models = [(CHAMPION, registry.alias_version(CHAMPION)), *candidate_versions(registry, latest=latest)]
    scored = []
    for alias, version in models:
        detector = VersionedDetector(get_engine(registry.resolve(version).path, device=device), version)
        review = ValidationReview()
        score = score_model(
            detector,
            claims,
            storage,
            threshold=threshold,
            max_side=max_side,
            min_excess=vetting,
            limits=limits,
            review=review,
        )
        log_validation(
            registry,
            alias or "candidate",
            score,
            dag_run_id=dag_run_id,
            observations=len(claims),
            threshold=threshold,
            review=review,
        )
        scored.append({**score, "alias": alias})
    scores: dict[str, Any] = {
        "history": registry.champion_history(),
        "champion": scored[0],
        "candidates": scored[1:],
    }
    scores["table"] = scores_table(scores)
    scores["comparison_run_id"] = log_comparison(
        registry, dag_run_id=dag_run_id, table=scores["table"], scores=scores
    )
    (metrics or NullMetrics()).gauge(metric_name("astrid.validation.f1", dag_id), scores[CHAMPION]["f1"])
    return scores


def decide_from_scores(scores: dict[str, Any], *, min_f1: float) -> Decision:
    """:func:`decide` on the output of :func:`score_models`."""
    return decide(
        scores["champion"], scores.get("candidates", []), min_f1=min_f1, history=scores.get("history", [])
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
