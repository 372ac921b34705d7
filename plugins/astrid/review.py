"""What a validation got wrong, for a person to look at: the missed transients and the false
detections of one model on the labelled set, as stamps, with the recall-versus-SNR plot.

A score says *how often* the model is wrong; the gallery shows *how*: a missed transient that sits
on a bright galaxy core, or a false detection on a bad star subtraction, tells the next training
what to add. The weekly validation logs one gallery per model it scores as MLflow artifacts
(:func:`astrid.tracking.log_validation`); nothing here knows about MLflow or Airflow.

Bounded: at most ``limit`` stamps of each kind per model, the most instructive first (the
brightest missed transients — the ones the model should have found — and the most confident
false detections).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REVIEW_LIMIT = 24  # stamps of each kind per model: a screenful, and a few hundred KiB of PNG


@dataclass(frozen=True)
class ReviewCase:
    """One missed transient (``kind="missed"``, ``value`` its SNR) or false detection
    (``kind="false"``, ``value`` its score), with its stamp as PNG."""

    kind: str
    observation: str
    x: float
    y: float
    value: float
    png: bytes

    @property
    def filename(self) -> str:
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.observation)[:80]
        return f"{self.kind}/{stem}_{self.x:.0f}_{self.y:.0f}.png"


@dataclass
class ValidationReview:
    """Collects the cases of one model over a validation set (:meth:`add` per observation), keeps
    the ``limit`` most instructive of each kind, and writes them (:meth:`write`)."""

    limit: int = REVIEW_LIMIT
    missed: list[ReviewCase] = field(default_factory=list)
    false: list[ReviewCase] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"missed": 0, "false": 0})
    report: Any = None  # the model's astrid.ml.scoring.EvaluationReport, for the plot
    # for the efficiency plot: every transient's local SNR and whether it was found, each frame's
    # seeing and size
    snr_local: list[float] = field(default_factory=list)
    found: list[bool] = field(default_factory=list)
    seeing: list[float] = field(default_factory=list)
    pixels: int = 0
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)  # efficiency(), until add()

    def add(
        self,
        name: str,
        triplet: Any,
        probability: np.ndarray,
        detections: Sequence[Any],
        truth: Sequence[Any],
    ) -> None:
        """Match ``detections`` to ``truth`` (as the score does) and keep stamps of what is wrong."""
        from astrid.ml.scoring import match_detections

        match = match_detections(detections, truth)
        missed = [t for t, found in zip(truth, match.truth_matched, strict=True) if not found]
        false = [d for d, real in zip(detections, match.detection_true, strict=True) if not real]
        self._rows = None
        self.counts["missed"] += len(missed)
        self.counts["false"] += len(false)
        self.snr_local += [float(t.snr_local if t.snr_local is not None else t.snr) for t in truth]
        self.found += list(match.truth_matched)
        self.pixels += int(np.asarray(triplet.difference).size)
        if truth:
            from astrid.ml.normalise import frame_seeing

            self.seeing.append(frame_seeing(triplet.science))
        self._keep(self.missed, "missed", name, triplet, probability, [(t.x, t.y, t.snr) for t in missed])
        self._keep(self.false, "false", name, triplet, probability, [(d.x, d.y, d.score) for d in false])

    def _keep(
        self,
        cases: list[ReviewCase],
        kind: str,
        name: str,
        triplet: Any,
        probability: np.ndarray,
        found: list[tuple[float, float, float]],
    ) -> None:
        from astrid.stamps import cutout, stamp_png

        floor = min((c.value for c in cases), default=-math.inf) if len(cases) >= self.limit else -math.inf
        for x, y, value in sorted(found, key=lambda f: -f[2])[: self.limit]:
            if value <= floor:
                break
            png = stamp_png(cutout(triplet, probability, x, y))
            cases.append(ReviewCase(kind, name, float(x), float(y), float(value), png))
        cases.sort(key=lambda c: -c.value)
        del cases[self.limit :]

    def write(self, folder: Path, title: str) -> list[Path]:
        """The stamps, ``recall_vs_snr.png`` (when a report was kept) and ``index.html`` (a gallery
        with each stamp's observation, position and SNR or score) under ``folder``."""
        written = []
        for case in (*self.missed, *self.false):
            path = folder / case.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(case.png)
            written.append(path)
        if self.report is not None:
            from astrid.ml.evaluate import plot_recall

            written.append(
                plot_recall([self.report], folder / "recall_vs_snr.png", title=f"{title}: recall vs SNR")
            )
        rows = self.efficiency()
        if rows:
            written.append(plot_review_efficiency(rows, folder / "efficiency_vs_snr.png", title))
        index = folder / "index.html"
        index.write_text(self.html(title), encoding="utf-8")
        return [*written, index]

    def html(self, title: str) -> str:
        """A self-contained gallery page (relative links only: it opens from MLflow's artifact view
        or a downloaded folder alike)."""
        parts = [
            "<!doctype html><meta charset='utf-8'>",
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px}"
            "img{image-rendering:pixelated;width:252px}</style>",
            f"<h1>{html.escape(title)}</h1>",
            "<p>Each stamp: science, reference, difference, probability.</p>",
        ]
        if self.report is not None:
            parts.append("<img src='recall_vs_snr.png' alt='recall versus SNR' style='width:480px'>")
        if self.snr_local and self.seeing:
            parts.append(
                "<img src='efficiency_vs_snr.png' alt='efficiency (recall / ideal recall) versus local SNR'"
                " style='width:480px'>"
            )
        for kind, cases, what in (("missed", self.missed, "SNR"), ("false", self.false, "score")):
            heading = "Missed transients" if kind == "missed" else "False detections"
            shown = f"{len(cases)} of {self.counts[kind]}"
            parts.append(
                f"<h2>{heading} ({shown}, {'brightest' if kind == 'missed' else 'most confident'} first)</h2>"
            )
            for case in cases:
                caption = f"{case.observation} ({case.x:.0f}, {case.y:.0f}) {what} {case.value:.2f}"
                parts.append(
                    f"<figure><img src='{html.escape(case.filename)}' alt='{html.escape(caption)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                )
        return "\n".join(parts) + "\n"

    def efficiency(self, mpix: float = 2.0) -> list[dict[str, Any]]:
        """Recall / ideal recall per local-SNR bin (``astrid.ml.evaluate.IDEAL_BINS``) at this
        model's own false-detection rate, as ``astrid evaluate`` defines it, approximated for a
        validation set whose PSFs were not kept: one Gaussian PSF of the frames' median measured
        seeing sets the ideal threshold t* (``astrid.ml.ideal.NoisePeakRate``, ``mpix`` of
        simulated noise). ``[]`` without transients or a measured seeing."""
        if not self.snr_local or not self.seeing or not self.pixels:
            return []
        if self._rows is None:
            self._rows = self._efficiency(mpix)
        return self._rows

    def _efficiency(self, mpix: float) -> list[dict[str, Any]]:
        from astrid.imaging.stats import FWHM_PER_SIGMA
        from astrid.ml.evaluate import IDEAL_BINS
        from astrid.ml.ideal import NoisePeakRate, ideal_recall

        sigma = float(np.median(self.seeing)) / FWHM_PER_SIGMA
        half = max(3, math.ceil(4 * sigma))
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        psf = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
        operating = max(self.counts["false"], 1) / (self.pixels / 1e6)
        t_star = NoisePeakRate.simulate(psf / psf.sum(), mpix=mpix).threshold(operating)
        snr, found = np.asarray(self.snr_local), np.asarray(self.found, dtype=bool)
        ideal = ideal_recall(snr, t_star)
        rows = []
        for lo, hi in IDEAL_BINS:
            inside = (snr >= lo) & (snr < hi)
            n = int(inside.sum())
            recall = float(found[inside].mean()) if n else math.nan
            best = float(ideal[inside].mean()) if n else math.nan
            efficiency = recall / best if n and best > 0 else math.nan
            rows.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "n": n,
                    "recall": recall,
                    "ideal": best,
                    "efficiency": efficiency,
                    "t_star": t_star,
                }
            )
        return rows


def plot_review_efficiency(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Efficiency (recall / ideal recall) per local-SNR bin, with the 0.90 floor."""
    from astrid.plots import report_figure

    shown = [r for r in rows if r["n"]]
    labels = [f"{r['lo']:g}–{r['hi']:g}" if math.isfinite(r["hi"]) else f"≥ {r['lo']:g}" for r in shown]
    with report_figure(path) as ax:
        ax.plot(labels, [r["efficiency"] for r in shown], marker="o", label="model / ideal")
        for label, r in zip(labels, shown, strict=True):
            ax.annotate(
                f"n={r['n']}",
                (label, r["efficiency"]),
                textcoords="offset points",
                xytext=(0, 8),
                ha="center",
            )
        ax.axhline(0.90, color="tab:red", lw=0.6, ls=":", label="floor 0.90")
        ax.set_xlabel("local SNR")
        ax.set_ylabel("efficiency (recall / ideal recall)")
        ax.set_ylim(0, 1.15)
        ax.set_title(f"{title}: efficiency (t* = {shown[0]['t_star']:.2f})" if shown else title)
    return path
