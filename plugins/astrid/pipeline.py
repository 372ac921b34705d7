"""One inference run over a list of claimed observations: gate, infer, persist, summarise.

This is the core the Airflow operators are thin wrappers over (and what the CLI or a notebook
can call directly). The rule that keeps runs alive at 3 AM: a bad *observation* fails or is
rejected on its own (status + reason kept in the catalog) and the run goes on; a bad *model* or an
unreachable catalog raises, so the task fails and Airflow retries it.
"""

from __future__ import annotations

import csv
import io
import re
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np

from astrid.catalog import Catalog, Claim
from astrid.drift import input_statistics
from astrid.errors import ObservationError
from astrid.logs import log_event, timed
from astrid.metrics import Metrics, NullMetrics, metric_name

# The contract's first six columns stay first (readers of `astrid detect` index them); photometry
# (astrid.photometry) is appended after them.
CATALOG_COLUMNS = ("x", "y", "ra", "dec", "score", "flux", "flux_err", "snr", "mag", "mag_err")


class Detector(Protocol):
    """What the pipeline needs from a model: the U-Net engine satisfies it."""

    version: str

    def analyse(
        self, triplet: Any, threshold: float | None = None, min_excess: float | str | None = "card"
    ) -> tuple[np.ndarray, list[Any]]:
        """(probability map, detections above ``threshold``, vetted at ``min_excess``) for one triplet."""
        ...


class VersionedDetector:
    """A detector under an explicit version label (the registry version detections are keyed by)."""

    def __init__(self, detector: Detector, version: str) -> None:
        self._detector, self.version = detector, str(version)

    def analyse(
        self, triplet: Any, threshold: float | None = None, min_excess: float | str | None = "card"
    ) -> tuple[np.ndarray, list[Any]]:
        return self._detector.analyse(triplet, threshold, min_excess)


@dataclass(frozen=True)
class RunInfo:
    """Who is running: carried into every log line, catalog write and metric.

    ``run_id`` owns the claims in the catalog (unique across DAGs: ``<dag_id>:<dag run id>`` under
    Airflow); ``dag_run_id`` is the orchestrator's own run id (MLflow tags, run records, artifacts).
    """

    run_id: str
    dag_id: str = "cli"
    kind: str = "cli"
    task_id: str | None = None
    dag_run_id: str | None = None
    map_index: int = -1

    @property
    def orchestrator_run_id(self) -> str:
        return self.dag_run_id or self.run_id


@dataclass
class RunSummary:
    """The XCom summary of an inference step (the shape the issue fixes, plus a few extras)."""

    processed_count: int = 0
    failed_count: int = 0
    rejected_count: int = 0
    detections_found: int = 0
    processing_time: float = 0.0
    success_rate: float = 1.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    model_version: str | None = None
    megapixels: float = 0.0
    observation_ids: list[int] = field(default_factory=list)
    catalog_uri: str | None = None

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def merge(cls, parts: Sequence[dict[str, Any]]) -> RunSummary:
        """Combine the summaries of mapped tasks (batch fan-out) into one run summary."""
        total = cls()
        for part in parts:
            total.processed_count += part.get("processed_count", 0)
            total.failed_count += part.get("failed_count", 0)
            total.rejected_count += part.get("rejected_count", 0)
            total.detections_found += part.get("detections_found", 0)
            total.processing_time += part.get("processing_time", 0.0)
            total.megapixels += part.get("megapixels", 0.0)
            total.errors.extend(part.get("errors", []))
            total.observation_ids.extend(part.get("observation_ids", []))
            total.model_version = total.model_version or part.get("model_version")
        total.success_rate = _success_rate(total.processed_count, total.failed_count)
        return total


def _success_rate(processed: int, failed: int) -> float:
    attempted = processed + failed
    return 1.0 if attempted == 0 else round(processed / attempted, 4)


def error_record(claim: Claim, exc: BaseException) -> dict[str, Any]:
    """What a run reports of an observation that failed: which one, why, when (XCom, run records)."""
    return {
        "observation_id": claim.observation_id,
        "observation": claim.name,
        "error": f"{type(exc).__name__}: {exc}",
        "timestamp": datetime.now(UTC).isoformat(),
    }


def claim_observations(
    catalog: Catalog,
    run: RunInfo,
    limit: int,
    *,
    lease_minutes: float,
    max_attempts: int,
    metrics: Metrics | None = None,
) -> list[Claim]:
    """Atomically claim up to ``limit`` preprocessed observations, leased to ``run``.

    A retried task (same ``run.run_id``) gets its own unexpired claims back first, so nothing is
    lost between the claim and the hand-over to the next step.
    """
    claims = catalog.claim(limit, run.run_id, timedelta(minutes=lease_minutes), max_attempts=max_attempts)
    (metrics or NullMetrics()).incr(metric_name("astrid.observations.claimed", run.dag_id), len(claims))
    log_event(
        "claim",
        run_id=run.orchestrator_run_id,
        dag_id=run.dag_id,
        requested=limit,
        observation_ids=[c.observation_id for c in claims],
    )
    return claims


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` in lists of at most ``size`` (at least 1): one mapped task per chunk."""
    items, size = list(items), max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


def confidence_threshold(value: Any) -> float:
    """A probability cut (a number, or a param rendered as text) strictly between 0 and 1;
    ValueError otherwise (:func:`astrid.config.check_threshold`)."""
    from astrid.config import check_threshold

    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"confidence_threshold={value!r} is not a number") from None
    return check_threshold("confidence_threshold", number)


def load_claim(claim: Claim, storage: Any, max_side: int, limits: Any = None) -> Any:
    """The claim's FITS triplet, read through the storage root (URIs outside it are refused).

    ``limits`` (:class:`astrid.imaging.fits.ReadLimits`: header size, plausible WCS) defaults to
    the configuration's defaults; ``max_side`` wins over its ``max_side``."""
    from dataclasses import replace

    from astrid.imaging.fits import ReadLimits, load_triplet

    if not claim.difference_uri:  # never science − reference: that leaves every star as a residual
        raise ObservationError(
            f"observation {claim.name} has no difference image: it was registered as preprocessed "
            "without one; re-ingest it (AstrID subtracts science and reference on ingest) or give a "
            "difference image"
        )
    return load_triplet(
        storage.resolve(claim.science_uri),
        storage.resolve(claim.reference_uri),
        storage.resolve(claim.difference_uri),
        name=claim.name,
        limits=replace(limits or ReadLimits(), max_side=int(max_side)),
    )


def analyse_claim(
    claim: Claim,
    storage: Any,
    detector: Detector,
    *,
    threshold: float,
    max_side: int,
    limits: Any = None,
    min_excess: float | str | None = "card",
    zeropoint_key: str | None = None,
) -> tuple[Any, np.ndarray, list[Any]]:
    """One observation through the detector, as the live queue and reprocessing both do it: its
    triplet read within bounds (:func:`load_claim`), candidates above ``threshold`` vetted at
    ``min_excess`` (:meth:`Detector.analyse`), then measured (:func:`astrid.photometry.measure`).
    Returns ``(triplet, probability, detections)``; bad data raises ``ObservationError``."""
    from astrid.photometry import measure

    triplet = load_claim(claim, storage, max_side, limits)
    probability, detections = detector.analyse(triplet, threshold, min_excess)
    return triplet, probability, measure(detections, triplet, zeropoint_key=zeropoint_key)


def quality_gate(
    claims: Sequence[Claim],
    *,
    catalog: Catalog,
    storage: Any,
    run: RunInfo,
    max_side: int,
    metrics: Metrics | None = None,
    gate: Any = None,
    limits: Any = None,
) -> tuple[list[Claim], list[dict[str, Any]]]:
    """Reject observations that are unreadable or fail the data-quality suite; return the rest.

    Rejected observations get status ``rejected`` with the reason (the failed expectation, or the
    file problem) kept in the catalog. Returns (accepted claims, rejection records).
    """
    from astrid.quality import QualityGate, observation_profile

    metrics = metrics or NullMetrics()
    gate = gate or QualityGate.shared()
    accepted_candidates: list[tuple[Claim, dict, list[str]]] = []
    rejections: list[dict[str, Any]] = []
    for claim in claims:
        try:
            triplet = load_claim(claim, storage, max_side, limits)
        except ObservationError as exc:
            rejections.append(reject_claim(catalog, claim, run, str(exc)))
            continue
        accepted_candidates.append(
            (claim, observation_profile(triplet), list(getattr(triplet, "problems", [])))
        )
    results = gate.validate([profile for _, profile, _ in accepted_candidates]) if accepted_candidates else []
    accepted = []
    for (claim, _, problems), result in zip(accepted_candidates, results, strict=True):
        if result.passed:
            accepted.append(claim)
        else:
            # the file problems found while reading (e.g. *why* there is no WCS) explain the failed checks
            reason = "; ".join([*result.failures, *problems])
            rejections.append(reject_claim(catalog, claim, run, reason))
    if rejections:
        metrics.incr(metric_name("astrid.observations.rejected", run.dag_id), len(rejections))
    log_event(
        "quality_gate",
        run_id=run.run_id,
        dag_id=run.dag_id,
        accepted=[c.observation_id for c in accepted],
        rejected=[r["observation_id"] for r in rejections],
    )
    return accepted, rejections


def reject_claim(catalog: Catalog, claim: Claim, run: RunInfo, reason: str) -> dict[str, Any]:
    """Mark a claimed observation ``rejected`` (it will never be usable: a bad image, a pair that
    cannot be subtracted), log it, and return the rejection as the run summary lists it."""
    catalog.reject(claim.observation_id, run.run_id, reason)
    log_event(
        "observation.rejected",
        level=30,
        run_id=run.run_id,
        dag_id=run.dag_id,
        observation_id=claim.observation_id,
        observation=claim.name,
        reason=reason,
    )
    return {"observation_id": claim.observation_id, "observation": claim.name, "reason": reason}


def run_inference(
    claims: Sequence[Claim],
    *,
    catalog: Catalog,
    storage: Any,
    detector: Detector,
    run: RunInfo,
    threshold: float,
    max_side: int,
    metrics: Metrics | None = None,
    artifacts: Any = None,
    on_observation: Callable[[Claim, list], None] | None = None,
    limits: Any = None,
    min_excess: float | str | None = "card",
    zeropoint_key: str | None = None,
    max_stamps: int | None = None,
) -> RunSummary:
    """Infer every claim, write detections + statuses, write artifacts; return the summary.

    ``min_excess`` is the star-residual vetting level (``"card"``: the model card's, ``None``: off).
    Each detection's flux error, SNR and (with a zero point in the header, ``zeropoint_key`` first)
    AB magnitude are measured by :func:`astrid.photometry.measure`. With ``artifacts`` and
    ``max_stamps``, the stamps of each observation's ``max_stamps`` best detections are written
    beside the catalog (:mod:`astrid.stamps`) and their URIs stored with the detections.

    ``artifacts`` is a directory path-like (under the storage root) for the run's detection
    catalog CSV and probability thumbnails; ``None`` skips artifacts.
    """
    metrics = metrics or NullMetrics()
    summary = RunSummary(model_version=detector.version)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with timed(
        "inference_run",
        run_id=run.run_id,
        dag_id=run.dag_id,
        task_id=run.task_id,
        observation_ids=[c.observation_id for c in claims],
        model_version=detector.version,
    ) as report:
        for claim in claims:
            t0 = time.perf_counter()
            try:
                triplet, probability, detections = analyse_claim(
                    claim,
                    storage,
                    detector,
                    threshold=threshold,
                    max_side=max_side,
                    limits=limits,
                    min_excess=min_excess,
                    zeropoint_key=zeropoint_key,
                )
                if artifacts is not None and max_stamps:
                    detections = _with_stamps(
                        artifacts, claim, triplet, probability, detections, storage, max_stamps, run
                    )
                catalog.complete(claim.observation_id, run.run_id, detector.version, detections)
                catalog.record_statistics(  # what the nightly drift check compares (astrid.drift)
                    claim.observation_id,
                    run.run_id,
                    detector.version,
                    detections=len(detections),
                    **input_statistics(triplet),
                )
            except ObservationError as exc:
                catalog.fail(claim.observation_id, run.run_id, str(exc))
                summary.failed_count += 1
                summary.errors.append(error_record(claim, exc))
                log_event(
                    "observation.failed",
                    run_id=run.run_id,
                    dag_id=run.dag_id,
                    exc=exc,
                    observation_id=claim.observation_id,
                    observation=claim.name,
                )
                continue
            seconds = time.perf_counter() - t0
            summary.processed_count += 1
            summary.detections_found += len(detections)
            summary.megapixels += triplet.difference.size / 1e6
            summary.observation_ids.append(claim.observation_id)
            metrics.timing(metric_name("astrid.inference.latency", run.dag_id), seconds * 1000)
            rows.extend(
                {"observation_id": claim.observation_id, "observation": claim.name, **d.to_dict()}
                for d in detections
            )
            if artifacts is not None:
                _write_thumbnail(artifacts / f"{claim.name}_probability.png", probability)
            if on_observation:
                on_observation(claim, detections)
            log_event(
                "observation.inferred",
                run_id=run.run_id,
                dag_id=run.dag_id,
                observation_id=claim.observation_id,
                observation=claim.name,
                detections=len(detections),
                duration_s=round(seconds, 3),
            )
        summary.processing_time = round(time.perf_counter() - started, 3)
        summary.success_rate = _success_rate(summary.processed_count, summary.failed_count)
        if artifacts is not None and claims:
            summary.catalog_uri = _write_catalog(artifacts / "detections.csv", rows)
        report.update(
            processed=summary.processed_count,
            failed=summary.failed_count,
            detections=summary.detections_found,
        )
    _emit_run_metrics(metrics, run.dag_id, summary)
    return summary


def _with_stamps(
    artifacts: Any,
    claim: Claim,
    triplet: Any,
    probability: np.ndarray,
    detections: list[Any],
    storage: Any,
    limit: int,
    run: RunInfo,
) -> list[Any]:
    """``detections`` with the URIs of the stamps written for them. A storage failure costs the
    stamps only (logged), never the detections: they are the result, the stamps a view of it."""
    from dataclasses import replace

    from astrid.stamps import stamp_prefix, write_stamps

    try:
        uris = write_stamps(
            stamp_prefix(artifacts, claim.observation_id, claim.name),
            triplet,
            probability,
            detections,
            storage=storage,
            observation=claim.name,
            limit=limit,
        )
    except Exception as exc:
        log_event(
            "stamps.failed",
            level=30,
            run_id=run.run_id,
            dag_id=run.dag_id,
            exc=exc,
            observation_id=claim.observation_id,
            observation=claim.name,
        )
        return detections
    return [replace(d, stamp_uri=uri) if uri else d for d, uri in zip(detections, uris, strict=True)]


def _emit_run_metrics(metrics: Metrics, dag_id: str, s: RunSummary) -> None:
    """Counters and this process's memory; run-level gauges come once per run from the report."""
    metrics.incr(metric_name("astrid.observations.processed", dag_id), s.processed_count)
    metrics.incr(metric_name("astrid.observations.failed", dag_id), s.failed_count)
    metrics.incr(metric_name("astrid.detections", dag_id), s.detections_found)
    metrics.gauge(
        metric_name("astrid.memory.rss_mb", dag_id), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    gpu_mb = _gpu_peak_mb()
    if gpu_mb is not None:
        metrics.gauge(metric_name("astrid.memory.gpu_mb", dag_id), gpu_mb)


def _gpu_peak_mb() -> float | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def emit_run_gauges(metrics: Metrics, dag_id: str, summary: dict[str, Any]) -> None:
    """Gauges describing a whole run (after mapped chunks are merged), sent once by the report."""
    metrics.gauge(metric_name("astrid.run.success_rate", dag_id), summary["success_rate"])
    metrics.gauge(metric_name("astrid.run.detections", dag_id), summary["detections_found"])
    if summary["processing_time"] > 0:
        metrics.gauge(
            metric_name("astrid.throughput_mpix", dag_id),
            round(summary["megapixels"] / summary["processing_time"], 3),
        )


def detections_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] = CATALOG_COLUMNS) -> str:
    """CSV text with the contract header; ``None`` (no WCS) becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def _write_catalog(path: Any, rows: Sequence[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write(detections_csv(rows, ("observation_id", "observation", *CATALOG_COLUMNS, "stamp_uri")))
    return str(path)


def _write_thumbnail(path: Any, probability: np.ndarray, side: int = 256) -> None:
    """A small PNG of the probability map for eyeballing a run from the UI's extra link."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    step = max(1, max(probability.shape) // side)
    small = probability[::step, ::step]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        plt.imsave(fh, small, cmap="magma", vmin=0.0, vmax=1.0, format="png")


# -- the inference step as the DAGs run it: model from the registry, artifacts, tracking ------------


@dataclass(frozen=True)
class LoadedModel:
    """A registry model loaded into the inference engine of this process."""

    detector: VersionedDetector
    resolved: Any  # astrid.registry.ResolvedModel
    device: str
    card_vetting: float | None  # the card's star-residual vetting level

    def vetting_label(self, vetting: float | str | None) -> float | str:
        """What a summary reports for a vetting setting: the level in force, or ``"off"``."""
        level = self.card_vetting if vetting == "card" else vetting
        return "off" if level is None else level


def load_detector(
    registry: Any,
    reference: Any,
    *,
    roots: Sequence[Any] = (),
    device: str = "auto",
    batch_size: int = 8,
    metrics: Metrics | None = None,
    dag_id: str | None = None,
) -> LoadedModel:
    """Resolve ``reference`` (a :class:`~astrid.model_reference.ModelReference` or its text; a path
    only under the model ``roots``) in the registry (bootstrapping an empty one with the shipped
    model as champion) and load it; the load time goes to ``astrid.model.load_time``."""
    from astrid.ml.engine import get_engine
    from astrid.paths import shipped_model_path

    registry.ensure_champion(shipped_model_path())
    started = time.perf_counter()
    resolved = registry.resolve(reference, roots)
    engine = get_engine(resolved.path, device=device, batch_size=int(batch_size))
    (metrics or NullMetrics()).timing(
        metric_name("astrid.model.load_time", dag_id), (time.perf_counter() - started) * 1000
    )
    return LoadedModel(
        VersionedDetector(engine, resolved.version), resolved, str(engine.device), engine.min_excess
    )


def artifacts_dir(storage: Any, run: RunInfo) -> Any:
    """Where one task's detection catalog and thumbnails go: ``runs/<dag>/<run>/<task>-<map index>``."""
    task = f"{run.task_id}-{run.map_index}"
    return storage.path / "runs" / run.dag_id / _safe_name(run.orchestrator_run_id) / _safe_name(task)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def infer_observations(
    claims: Sequence[Claim],
    *,
    catalog: Catalog,
    storage: Any,
    registry: Any,
    run: RunInfo,
    model: Any,
    threshold: float,
    batch_size: int = 8,
    device: str = "auto",
    max_side: int,
    vetting: float | str | None = "card",
    track: bool = True,
    metrics: Metrics | None = None,
    zeropoint_key: str | None = None,
    max_stamps: int | None = None,
    model_roots: Sequence[Any] = (),
    limits: Any = None,
) -> dict[str, Any]:
    """Load ``model`` from the registry, infer ``claims`` (:func:`run_inference`: photometry with
    ``zeropoint_key``, the stamps of each observation's ``max_stamps`` best detections), write the
    run's artifacts and, when ``track``, log the run to MLflow. Returns the XCom summary: the
    :class:`RunSummary` fields plus ``device``, ``star_residual_vetting`` and, when tracked,
    ``mlflow_run_id``."""
    from astrid.tracking import log_inference

    metrics = metrics or NullMetrics()
    threshold = confidence_threshold(threshold)
    loaded = load_detector(
        registry,
        model,
        roots=model_roots,
        device=device,
        batch_size=batch_size,
        metrics=metrics,
        dag_id=run.dag_id,
    )
    summary = run_inference(
        claims,
        catalog=catalog,
        storage=storage,
        detector=loaded.detector,
        run=run,
        threshold=threshold,
        max_side=max_side,
        metrics=metrics,
        artifacts=artifacts_dir(storage, run),
        min_excess=vetting,
        zeropoint_key=zeropoint_key,
        max_stamps=max_stamps,
        limits=limits,
    ).to_xcom()
    summary["device"] = loaded.device
    summary["star_residual_vetting"] = loaded.vetting_label(vetting)
    if track and claims:
        summary["mlflow_run_id"] = log_inference(
            registry, run, summary, model=loaded.resolved, threshold=threshold, batch_size=batch_size
        )
    return summary
