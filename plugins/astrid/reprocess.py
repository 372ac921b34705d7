"""Reprocessing: past observations through another model version, beside the live results.

After a promotion, or to compare two models, :func:`reprocess` runs a detector over the
observations of a time range (their ``MJD-OBS``) and stores its detections under its own model
version (:meth:`astrid.catalog.Catalog.store_results`). Rules:

* **never takes claims from the live queue**: observations are read, not claimed; their status,
  lease and live model version are untouched, so the realtime and batch runs carry on meanwhile;
* **idempotent per (observation, model version)**: running it again replaces that version's
  detections of an observation, never another version's;
* **resumable**: what a version has processed is recorded (``inference_results``), so a stopped or
  failed run is simply started again and goes on where it stopped. An observation the live queue
  already inferred with the same version counts as done.

The DAG ``astrid_reprocess`` and ``astrid reprocess`` (CLI) are thin wrappers over this.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from astrid.dag_kinds import REPROCESS_KIND
from astrid.errors import ConfigError, ObservationError
from astrid.logs import log_event
from astrid.pipeline import Detector, RunInfo, analyse_claim, error_record

PAGE = 20  # candidates read per catalog query


@dataclass
class ReprocessSummary:
    model_version: str
    processed: int = 0
    failed: int = 0
    detections: int = 0
    seconds: float = 0.0
    observation_ids: list[int] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    remaining: bool = False  # stopped at ``limit`` with candidates left: run it again to go on

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


def record(
    catalog: Any, run: RunInfo, summary: ReprocessSummary, started: datetime, details: dict[str, Any]
) -> None:
    """The run's row in ``inference_runs`` (kind ``reprocess``): what the status API and page list."""
    catalog.record_run(
        run_id=run.orchestrator_run_id,
        dag_id=run.dag_id,
        kind=REPROCESS_KIND,
        model_version=summary.model_version,
        started_at=started,
        finished_at=datetime.now(UTC),
        processed=summary.processed,
        failed=summary.failed,
        detections=summary.detections,
        processing_seconds=summary.seconds,
        success_rate=round(summary.processed / max(1, summary.processed + summary.failed), 4),
        status="success",
        details={**details, "remaining": summary.remaining, "errors": summary.errors[:20]},
    )


def mjd_of(value: str | float | None, name: str) -> float | None:
    """An observation time bound: an ISO date or date-time (naive = UTC), an MJD number, or
    nothing (``None``/``""``: unbounded)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(
                    f"{name}={text!r} is neither an ISO date/date-time (2026-11-30, 2026-11-30T18:00:00Z) "
                    "nor an MJD number"
                ) from None
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
            epoch = datetime(1858, 11, 17, tzinfo=UTC)  # MJD 0
            number = (moment - epoch).total_seconds() / 86400.0
    if not math.isfinite(number) or not 0 <= number < 200_000:
        raise ConfigError(f"{name}={value!r} is not a plausible MJD (0-200000)")
    return number


def check_request(
    observed_from: str | float | None,
    observed_to: str | float | None,
    limit: int | None,
    names: tuple[str, str] = ("observed_from", "observed_to"),
) -> tuple[float | None, float | None]:
    """The MJD bounds of a request, refused (ConfigError naming the value as ``names`` call the
    two bounds: params or CLI options) before any work."""
    mjd_from = mjd_of(observed_from, names[0])
    mjd_to = mjd_of(observed_to, names[1])
    if mjd_from is not None and mjd_to is not None and mjd_to <= mjd_from:
        raise ConfigError(f"{names[1]} ({observed_to}) must be after {names[0]} ({observed_from})")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit} must be at least 1")
    return mjd_from, mjd_to


def reprocess(
    *,
    catalog: Any,
    storage: Any,
    detector: Detector,
    run: RunInfo,
    threshold: float,
    max_side: int,
    observed_from: str | float | None = None,
    observed_to: str | float | None = None,
    limit: int | None = None,
    min_excess: float | str | None = "card",
    zeropoint_key: str | None = None,
    limits: Any = None,
) -> ReprocessSummary:
    """Process every not-yet-done observation of ``[observed_from, observed_to)`` with ``detector``
    (at most ``limit``); a bad observation fails alone and stays a candidate for the next run.
    Each is read, detected and measured as the live queue does it (:func:`astrid.pipeline.analyse_claim`,
    with the same read ``limits``)."""
    mjd_from, mjd_to = check_request(observed_from, observed_to, limit)
    version = detector.version
    summary = ReprocessSummary(model_version=version)
    started, after = time.perf_counter(), 0
    while True:
        room = PAGE if limit is None else min(PAGE, limit - summary.processed - summary.failed)
        if room <= 0:
            summary.remaining = bool(
                catalog.reprocess_candidates(
                    version, mjd_from=mjd_from, mjd_to=mjd_to, limit=1, after_id=after
                )
            )
            break
        page = catalog.reprocess_candidates(
            version, mjd_from=mjd_from, mjd_to=mjd_to, limit=room, after_id=after
        )
        if not page:
            break
        for claim in page:
            after = claim.observation_id
            try:
                _triplet, _probability, detections = analyse_claim(
                    claim,
                    storage,
                    detector,
                    threshold=threshold,
                    max_side=max_side,
                    limits=limits,
                    min_excess=min_excess,
                    zeropoint_key=zeropoint_key,
                )
                stored = catalog.store_results(claim.observation_id, run.run_id, version, detections)
            except ObservationError as exc:
                summary.failed += 1
                summary.errors.append(error_record(claim, exc))
                log_event("reprocess.failed", run_id=run.run_id, observation_id=claim.observation_id, exc=exc)
                continue
            summary.processed += 1
            summary.detections += stored
            summary.observation_ids.append(claim.observation_id)
    summary.seconds = round(time.perf_counter() - started, 3)
    log_event(
        "reprocess.done",
        run_id=run.run_id,
        dag_id=run.dag_id,
        model_version=version,
        processed=summary.processed,
        failed=summary.failed,
        detections=summary.detections,
        remaining=summary.remaining,
    )
    return summary


def run_reprocess(
    *,
    catalog: Any,
    storage: Any,
    registry: Any,
    run: RunInfo,
    model: str,
    threshold: float | str,
    max_side: int,
    batch_size: int = 8,
    device: str = "auto",
    vetting: float | str | None = "card",
    observed_from: str | float | None = None,
    observed_to: str | float | None = None,
    limit: int | None = None,
    metrics: Any = None,
    zeropoint_key: str | None = None,
    limits: Any = None,
) -> dict[str, Any]:
    """One reprocessing run as the DAG and the CLI run it: check the request, load ``model`` from the
    registry (``champion``, ``challenger``, a version, ``models:/...`` or a path), :func:`reprocess`,
    record the run. Returns the summary (plus ``device``) for XCom or printing."""
    from astrid.pipeline import confidence_threshold, load_detector
    from astrid.registry import reference_for

    threshold = confidence_threshold(threshold)
    check_request(observed_from, observed_to, limit)
    loaded = load_detector(
        registry,
        reference_for(model),
        device=device,
        batch_size=batch_size,
        metrics=metrics,
        dag_id=run.dag_id,
    )
    started = datetime.now(UTC)
    summary = reprocess(
        catalog=catalog,
        storage=storage,
        detector=loaded.detector,
        run=run,
        threshold=threshold,
        max_side=max_side,
        observed_from=observed_from,
        observed_to=observed_to,
        limit=limit,
        min_excess=vetting,
        zeropoint_key=zeropoint_key,
        limits=limits,
    )
    record(catalog, run, summary, started, {"observed_from": observed_from, "observed_to": observed_to})
    return {**summary.to_xcom(), "device": loaded.device}
