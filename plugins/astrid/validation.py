"""Weekly model validation: score models on labelled observations and decide what serves.

The decision is a pure function of measured metrics so it can be tested exhaustively and read
in one screen: promote a challenger only when it is at least as good as the champion by a margin
and above the floor; roll the champion back when it fell below the floor and there is a previous
version to go back to; otherwise keep what serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMOTE, KEEP, ROLLBACK = "promote", "keep", "rollback"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    target_version: str | None = None


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
) -> dict[str, Any]:
    """Run ``detector`` over labelled claims and score against their truth (recall per SNR bin, F1...)."""
    from astrid.imaging.synthetic import read_truth
    from astrid.ml.evaluate import score_detections
    from astrid.pipeline import load_claim

    pairs = []
    for claim in claims:
        triplet = load_claim(claim, storage, max_side)
        _, detections = detector.analyse(triplet, threshold, min_excess)
        truth = read_truth(storage.resolve(claim.truth_uri))
        pairs.append((detections, truth, triplet.difference.size))
    report = score_detections(pairs)
    return _json_safe({"version": detector.version, **report.to_dict()})


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
