"""Pure scoring of detections against injected-transient truth: one-to-one matching, recall per
SNR bin, false detections per megapixel, precision, F1.

Matching (:func:`match_detections`): detections are taken in descending score order and each
claims the nearest not-yet-claimed truth transient within ``radius`` pixels (default 3). A
detection that claims nothing — including a second detection of an already-claimed transient —
is a false detection. Recall counts claimed transients; precision counts claiming detections.

No detectors, no generator, no training here: :func:`score_detections` is what the validation
DAG (detections read back from the catalog), the training calibration and the evaluation harness
(:mod:`astrid.ml.evaluate`, which runs detectors first) all call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "FLOORS",
    "MATCH_RADIUS",
    "SNR_BINS",
    "EvaluationReport",
    "MatchResult",
    "bin_label",
    "comparison_markdown",
    "match_detections",
    "score_detections",
]

SNR_BINS: tuple[tuple[float, float], ...] = (
    (0.0, 3.0),
    (3.0, 4.5),
    (4.5, 7.0),
    (7.0, 10.0),
    (10.0, 20.0),
    (20.0, math.inf),
)
MATCH_RADIUS = 3.0
# The quality floors the shipped model must meet (also asserted by tests/unit/test_ml_shipped_model.py).
FLOORS = {"recall_snr_ge_7": 0.95, "recall_snr_4.5_7": 0.80, "false_per_mpix_max": 1.0}


def _xy(item: Any) -> tuple[float, float]:
    if isinstance(item, Mapping):
        return float(item["x"]), float(item["y"])
    return float(item.x), float(item.y)


def _get(item: Any, key: str, default: Any = None) -> Any:
    return item.get(key, default) if isinstance(item, Mapping) else getattr(item, key, default)


@dataclass(frozen=True)
class MatchResult:
    """``truth_matched[i]``: transient i was found; ``detection_true[j]``: detection j is real."""

    truth_matched: list[bool]
    detection_true: list[bool]

    @property
    def true_positives(self) -> int:
        return sum(self.detection_true)

    @property
    def false_positives(self) -> int:
        return len(self.detection_true) - self.true_positives


def match_detections(
    detections: Sequence[Any], truth: Sequence[Any], radius: float = MATCH_RADIUS
) -> MatchResult:
    """Greedy one-to-one matching of detections (by descending ``score``) to truth within ``radius``.

    Both sequences hold objects or dicts with ``x``/``y`` (0-based pixels); detections may carry
    ``score`` (missing → 0).
    """
    truth_matched = [False] * len(truth)
    detection_true = [False] * len(detections)
    if not detections or not truth:
        return MatchResult(truth_matched, detection_true)
    tree = cKDTree(np.array([_xy(t) for t in truth], dtype=np.float64))
    order = sorted(range(len(detections)), key=lambda j: -float(_get(detections[j], "score", 0.0) or 0.0))
    for j in order:
        x, y = _xy(detections[j])
        candidates = tree.query_ball_point((x, y), r=radius)
        best, best_d = None, math.inf
        for i in candidates:
            if truth_matched[i]:
                continue
            tx, ty = _xy(truth[i])
            d = math.hypot(tx - x, ty - y)
            if d < best_d:
                best, best_d = i, d
        if best is not None:
            truth_matched[best] = True
            detection_true[j] = True
    return MatchResult(truth_matched, detection_true)


def bin_label(lo: float, hi: float) -> str:
    """``<3``, ``4.5–7``, ``≥20``: how a bin ``[lo, hi)`` is written in tables and cards."""

    def fmt(v: float) -> str:
        return f"{v:g}"

    if lo <= 0:
        return f"<{fmt(hi)}"
    if math.isinf(hi):
        return f"≥{fmt(lo)}"
    return f"{fmt(lo)}–{fmt(hi)}"


@dataclass
class EvaluationReport:
    """Scores of one detector on one set of labelled observations."""

    detector: str
    observations: int = 0
    megapixels: float = 0.0
    truth: int = 0
    detections: int = 0
    true_positives: int = 0
    false_positives: int = 0
    recall_by_snr: list[dict[str, Any]] = field(default_factory=list)
    threshold: float | None = None
    radius: float = MATCH_RADIUS

    @property
    def recovered(self) -> int:
        return sum(b["recovered"] for b in self.recall_by_snr)

    @property
    def recall(self) -> float:
        return self.recovered / self.truth if self.truth else 0.0

    @property
    def precision(self) -> float:
        return self.true_positives / self.detections if self.detections else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def false_per_mpix(self) -> float:
        return self.false_positives / self.megapixels if self.megapixels else 0.0

    def recall_between(self, lo: float, hi: float = math.inf) -> float:
        """Recall over all transients with ``lo <= snr < hi`` (sum of the covered bins)."""
        n = sum(b["n"] for b in self.recall_by_snr if b["lo"] >= lo and b["hi"] <= hi)
        k = sum(b["recovered"] for b in self.recall_by_snr if b["lo"] >= lo and b["hi"] <= hi)
        return k / n if n else float("nan")

    def meets_floors(self) -> dict[str, bool]:
        return {
            "recall_snr_ge_7": self.recall_between(7.0) >= FLOORS["recall_snr_ge_7"],
            "recall_snr_4.5_7": self.recall_between(4.5, 7.0) >= FLOORS["recall_snr_4.5_7"],
            "false_per_mpix": self.false_per_mpix <= FLOORS["false_per_mpix_max"],
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["recall_by_snr"] = [
            {**b, "hi": None if math.isinf(b["hi"]) else b["hi"]} for b in self.recall_by_snr
        ]
        d.update(
            recall=round(self.recall, 4),
            precision=round(self.precision, 4),
            f1=round(self.f1, 4),
            false_per_mpix=round(self.false_per_mpix, 4),
            recall_snr_ge_7=round(self.recall_between(7.0), 4),
            recall_snr_4_5_to_7=round(self.recall_between(4.5, 7.0), 4),
            megapixels=round(self.megapixels, 4),
        )
        return d

    def to_markdown(self) -> str:
        return comparison_markdown([self])


def comparison_markdown(reports: Sequence[EvaluationReport]) -> str:
    """One markdown table with a column per detector (recall per SNR bin, then the summary rows)."""
    if not reports:
        return ""
    head = "| | " + " | ".join(r.detector for r in reports) + " |\n"
    head += "|---|" + "---:|" * len(reports) + "\n"
    rows = []
    for i, b in enumerate(reports[0].recall_by_snr):
        cells = []
        for r in reports:
            rb = r.recall_by_snr[i]
            cells.append(f"{rb['recall']:.3f} ({rb['recovered']}/{rb['n']})" if rb["n"] else "–")
        rows.append(f"| recall, SNR {b['label']} | " + " | ".join(cells) + " |")
    summary = [
        ("recall, SNR ≥ 7", lambda r: f"{r.recall_between(7.0):.3f}"),
        ("recall, SNR 4.5–7", lambda r: f"{r.recall_between(4.5, 7.0):.3f}"),
        ("recall, all injected", lambda r: f"{r.recall:.3f}"),
        ("false detections / Mpix", lambda r: f"{r.false_per_mpix:.3f} ({r.false_positives})"),
        ("precision", lambda r: f"{r.precision:.3f}"),
        ("F1", lambda r: f"{r.f1:.3f}"),
        ("threshold", lambda r: "–" if r.threshold is None else f"{r.threshold:g}"),
    ]
    rows += [f"| {name} | " + " | ".join(fn(r) for r in reports) + " |" for name, fn in summary]
    return head + "\n".join(rows) + "\n"


def score_detections(
    pairs: Iterable[tuple[Sequence[Any], Sequence[Any], int]],
    *,
    detector: str = "detector",
    radius: float = MATCH_RADIUS,
    bins: Sequence[tuple[float, float]] = SNR_BINS,
    threshold: float | None = None,
) -> EvaluationReport:
    """Score ``(detections, truth, n_pixels)`` triples (one per observation) into a report."""
    report = EvaluationReport(detector=detector, threshold=threshold, radius=radius)
    counts = [[0, 0] for _ in bins]
    for detections, truth, n_pixels in pairs:
        result = match_detections(detections, truth, radius)
        report.observations += 1
        report.megapixels += n_pixels / 1e6
        report.truth += len(truth)
        report.detections += len(detections)
        report.true_positives += result.true_positives
        report.false_positives += result.false_positives
        for t, found in zip(truth, result.truth_matched, strict=True):
            snr = float(_get(t, "snr", 0.0))
            for k, (lo, hi) in enumerate(bins):
                if lo <= snr < hi or (k == 0 and snr < lo):
                    counts[k][0] += 1
                    counts[k][1] += int(found)
                    break
    report.recall_by_snr = [
        {
            "label": bin_label(lo, hi),
            "lo": lo,
            "hi": hi,
            "n": n,
            "recovered": k,
            "recall": (k / n if n else float("nan")),
        }
        for (lo, hi), (n, k) in zip(bins, counts, strict=True)
    ]
    return report
