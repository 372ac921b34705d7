"""Nightly drift check: is the serving model still seeing, and saying, what it did at first?

The **reference window** is the champion's own first ``reference_hours`` of serving (from the
first inference statistics it recorded, ending before the current window); the **current window**
is the last ``window_hours``. Six statistics are compared between them:

* ``score`` — the scores of the champion's detections (its output distribution);
* ``detections_per_mpix`` — detections per megapixel, per observation;
* ``sky``, ``seeing``, ``noise`` — the input statistics of each observation, measured at inference
  time by the quality profile (:func:`astrid.quality.observation_profile`: science background,
  header FWHM in pixels, the difference image's robust σ);
* ``rejection_rate`` — per observation the live queue finished in the window, 1 if the quality
  gate rejected it, 0 if it was inferred.

**The test.** Two-sample Kolmogorov–Smirnov (``scipy.stats.ks_2samp``) per statistic. A statistic
has drifted when *both*

* its distance ``D`` (the largest gap between the two empirical CDFs) is at least ``threshold``
  (default 0.2): for a normal distribution, D = 0.2 is a shift of the mean by ~0.5 σ
  (D = 2Φ(δ/2) − 1), or a change of width by ~1.5× — a change a person would call real; and
* it is significant: ``p < p_value / k`` (Bonferroni over the k statistics tested; default
  0.01 / 6), so a quiet night of thousands of detections does not alert on a trivially small but
  "significant" difference, and a night of 30 observations does not alert on noise (for 30 vs 30
  values D must then exceed ~0.45).

For the 0/1 rejection indicator D is exactly the change of the rejection rate (20 percentage
points at the default threshold) and the KS p-value is conservative (ties). A statistic with
fewer than ``min_samples`` values in either window is not tested (reported, never alerted on): a
newly promoted champion has no reference yet, and a night without observations has no current
window. Why KS and not PSI: PSI's bins and its small-sample bias (≈ (bins − 1)(1/n + 1/m), about
0.6 for 10 bins and 30 observations a side) would need thresholds tuned per window size; KS's
p-value already accounts for sample size and D is the same scale for every statistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from astrid.metrics import Metrics, NullMetrics, metric_name

STATISTICS = ("score", "detections_per_mpix", "sky", "seeing", "noise", "rejection_rate")
# statistic -> the astrid.metrics gauge carrying its D
GAUGES = {name: f"astrid.drift.{name}" for name in STATISTICS}


@dataclass(frozen=True)
class StatisticTest:
    """One statistic compared between the reference and the current window."""

    statistic: str
    reference_n: int
    current_n: int
    reference_median: float | None
    current_median: float | None
    d: float | None  # KS distance; None when not tested
    p_value: float | None
    drifted: bool
    note: str = ""


@dataclass
class DriftReport:
    """What the drift check found; ``reason`` is non-empty exactly when something drifted."""

    champion: str | None
    reference: tuple[str, str] | None  # ISO start, end
    current: tuple[str, str]
    threshold: float
    p_value: float
    tests: list[StatisticTest] = field(default_factory=list)
    note: str = ""

    @property
    def drifted(self) -> list[str]:
        return [t.statistic for t in self.tests if t.drifted]

    @property
    def reason(self) -> str:
        if not self.drifted:
            return ""
        detail = ", ".join(f"{t.statistic} (D={t.d:.2f})" for t in self.tests if t.drifted)
        return f"drift against champion v{self.champion}'s reference window: {detail}"

    def table(self) -> str:
        """A markdown table of every statistic (the alert email and the task log show it)."""
        lines = [
            "| statistic | reference n | current n | reference median | current median | D | p | drifted |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for t in self.tests:
            cells = [
                t.statistic,
                str(t.reference_n),
                str(t.current_n),
                _fmt(t.reference_median),
                _fmt(t.current_median),
                _fmt(t.d),
                "–" if t.p_value is None else f"{t.p_value:.2g}",
                "**yes**" if t.drifted else (t.note or "no"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_xcom(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted, "reason": self.reason, "table": self.table()}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def ks_test(
    statistic: str,
    reference: Sequence[float],
    current: Sequence[float],
    *,
    threshold: float,
    alpha: float,
    min_samples: int,
) -> StatisticTest:
    """The KS comparison of one statistic (see the module docstring for the rule)."""
    import numpy as np
    from scipy.stats import ks_2samp

    ref = [float(v) for v in reference if v is not None and math.isfinite(v)]
    cur = [float(v) for v in current if v is not None and math.isfinite(v)]
    medians = (float(np.median(ref)) if ref else None, float(np.median(cur)) if cur else None)
    if len(ref) < min_samples or len(cur) < min_samples:
        return StatisticTest(
            statistic,
            len(ref),
            len(cur),
            *medians,
            None,
            None,
            False,
            note=f"not tested (< {min_samples} values)",
        )
    result = ks_2samp(ref, cur)
    d, p = float(result.statistic), float(result.pvalue)
    return StatisticTest(
        statistic, len(ref), len(cur), *medians, round(d, 4), p, d >= threshold and p < alpha
    )


def windows(
    first_served: datetime | None, now: datetime, *, window_hours: float, reference_hours: float
) -> tuple[tuple[datetime, datetime] | None, tuple[datetime, datetime]]:
    """(reference window or None, current window): the champion's first ``reference_hours``,
    ending no later than the current window (the last ``window_hours``) begins."""
    current = (now - timedelta(hours=window_hours), now)
    if first_served is None or first_served >= current[0]:
        return None, current
    return (first_served, min(first_served + timedelta(hours=reference_hours), current[0])), current


def _values(rows: Sequence[Mapping[str, Any]], statistic: str) -> list[float]:
    if statistic == "detections_per_mpix":
        return [r["detections"] / r["megapixels"] for r in rows if r.get("megapixels")]
    column = {"seeing": "seeing_px"}.get(statistic, statistic)
    return [r[column] for r in rows if r.get(column) is not None]


def check_drift(
    catalog: Any,
    champion: str | None,
    *,
    now: datetime | None = None,
    window_hours: float,
    reference_hours: float,
    min_samples: int,
    threshold: float,
    p_value: float,
    metrics: Metrics | None = None,
    dag_id: str | None = None,
) -> DriftReport:
    """Compare the champion's current window with its reference window (module docstring); the
    D of each tested statistic goes to its ``astrid.drift.*`` gauge, the count of drifted ones to
    ``astrid.drift.drifted``."""
    now = now or datetime.now(UTC)
    first = catalog.first_statistics_at(champion) if champion else None
    reference, current = windows(first, now, window_hours=window_hours, reference_hours=reference_hours)
    report = DriftReport(
        champion=champion,
        reference=None if reference is None else (reference[0].isoformat(), reference[1].isoformat()),
        current=(current[0].isoformat(), current[1].isoformat()),
        threshold=threshold,
        p_value=p_value,
    )
    if champion is None or reference is None:
        report.note = (
            "no champion yet" if champion is None else f"champion v{champion} has no reference window yet"
        )
        _gauge(metrics or NullMetrics(), report, dag_id)
        return report
    samples = {
        "reference": catalog.statistics(model_version=champion, since=reference[0], until=reference[1]),
        "current": catalog.statistics(model_version=champion, since=current[0], until=current[1]),
    }
    values = {
        statistic: (_values(samples["reference"], statistic), _values(samples["current"], statistic))
        for statistic in ("detections_per_mpix", "sky", "seeing", "noise")
    }
    values["score"] = (
        catalog.statistics_scores(champion, *reference),
        catalog.statistics_scores(champion, *current),
    )
    outcomes = (catalog.gate_outcomes(*reference), catalog.gate_outcomes(*current))
    values["rejection_rate"] = tuple([float(r) for r in o] for o in outcomes)
    alpha = p_value / len(STATISTICS)
    report.tests = [
        ks_test(name, *values[name], threshold=threshold, alpha=alpha, min_samples=min_samples)
        for name in STATISTICS
    ]
    _gauge(metrics or NullMetrics(), report, dag_id)
    return report


def _gauge(metrics: Metrics, report: DriftReport, dag_id: str | None) -> None:
    for test in report.tests:
        if test.d is not None:
            metrics.gauge(metric_name(GAUGES[test.statistic], dag_id), test.d)
    metrics.gauge(metric_name("astrid.drift.drifted", dag_id), len(report.drifted))


def input_statistics(triplet: Any) -> dict[str, float]:
    """What the drift check records of an observation at inference time, from the quality
    profile (one home for these measurements): sky, seeing (px), noise, megapixels."""
    from astrid.quality import observation_profile

    profile = observation_profile(triplet)
    return {
        "sky": profile["sci_background"],
        "seeing_px": profile["fwhm_px"],
        "noise": profile["diff_noise"],
        "megapixels": profile["height"] * profile["width"] / 1e6,
    }
