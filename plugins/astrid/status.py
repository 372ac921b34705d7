"""The AstrID status payloads: pure assembly from catalog facts and DAG facts. No Airflow imports.

The status API (:mod:`astrid.airflow.api`) reads the *DAG facts* (paused, next run, recent runs)
from Airflow's metadata DB and hands them here as :class:`DagFacts`; the *catalog facts* come
from a :class:`~astrid.catalog.Catalog` (anything with ``runs(since, dag_id)``,
``status_counts()`` and ``stuck_claims()``). Everything that decides what the payload says lives
here, so it is unit-testable with a SQLite catalog and hand-made facts, and usable from a
notebook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

# The DAGs the status covers and the run types it triggers come from the DAG kinds table.
from astrid.dag_kinds import DAG_IDS, KINDS, RUN_TYPES, kind_of_dag

MIN_HOURS, MAX_HOURS = 1, 720  # GET /runs?hours=: one hour to 30 days
DEFAULT_GRAFANA_URL = "http://localhost:3000/d/astrid-inference"
FINISHED_STATES = ("success", "failed")
SCHEMA_VERSION = 1


class CatalogReader(Protocol):
    def runs(self, since: datetime | None = None, dag_id: str | None = None) -> list[dict[str, Any]]: ...
    def status_counts(self) -> dict[str, int]: ...
    def stuck_claims(self, now: datetime | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class RunFact:
    """One Airflow DAG run, as read from the metadata DB."""

    run_id: str
    state: str | None
    run_type: str | None = None
    run_after: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    logical_date: datetime | None = None

    @property
    def when(self) -> datetime | None:
        """The time the run counts at: ``run_after`` (always set in Airflow 3), else its start."""
        return self.run_after or self.logical_date or self.start_date


@dataclass(frozen=True)
class DagFacts:
    """What Airflow's metadata DB says about one DAG.

    ``recent_runs`` must hold every run whose ``run_after`` is at or after
    :func:`facts_window_start` (older runs are ignored); ``last_run`` is the newest run at all.
    ``exists=False`` means the DAG is not (or no longer) in the metadata DB.
    """

    dag_id: str
    exists: bool = True
    paused: bool | None = None
    stale: bool = False
    has_import_errors: bool = False
    next_dagrun: datetime | None = None
    next_dagrun_create_after: datetime | None = None
    last_run: RunFact | None = None
    recent_runs: tuple[RunFact, ...] = ()


# ----------------------------------------------------------------------------------- helpers


def utc(value: datetime | None) -> datetime | None:
    """Aware UTC (naive values are taken to be UTC, as Airflow and the catalog store them)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def now_utc(now: datetime | None = None) -> datetime:
    return utc(now) if now is not None else datetime.now(UTC)


def day_start(now: datetime, tz: str = "UTC") -> datetime:
    """Midnight of ``now``'s day in timezone ``tz`` (the schedules' timezone), as UTC."""
    local = now.astimezone(ZoneInfo(tz))
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def facts_window_start(now: datetime | None = None, tz: str = "UTC") -> datetime:
    """How far back :attr:`DagFacts.recent_runs` must reach: the earlier of 24 h ago and midnight."""
    now = now_utc(now)
    return min(now - timedelta(hours=24), day_start(now, tz))


def check_hours(hours: Any) -> int:
    """``hours`` as an int in [MIN_HOURS, MAX_HOURS]; ValueError otherwise (the API answers 422)."""
    if isinstance(hours, bool) or not isinstance(hours, int):
        raise ValueError(f"hours must be an integer, got {hours!r}")
    if not MIN_HOURS <= hours <= MAX_HOURS:
        raise ValueError(f"hours must be between {MIN_HOURS} and {MAX_HOURS}, got {hours}")
    return hours


def safe_http_url(url: str | None, default: str = DEFAULT_GRAFANA_URL) -> str:
    """``url`` if it is an http(s) URL, else ``default`` (never a ``javascript:`` link on the page)."""
    url = (url or "").strip()
    return url if url.lower().startswith(("http://", "https://")) else default


def _run_payload(run: RunFact | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "run_id": run.run_id,
        "state": run.state,
        "run_type": run.run_type,
        "run_after": iso(run.run_after),
        "start_date": iso(run.start_date),
        "end_date": iso(run.end_date),
    }


def _inference_payload(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "run_id": row.get("run_id"),
        "status": row.get("status"),
        "model_version": row.get("model_version"),
        "started_at": iso(row.get("started_at")),
        "claimed": row.get("claimed"),
        "processed": row.get("processed"),
        "failed": row.get("failed"),
        "rejected": row.get("rejected"),
        "detections": row.get("detections"),
        "processing_seconds": row.get("processing_seconds"),
        "success_rate": row.get("success_rate"),
    }


def run_row_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """One catalog ``inference_runs`` row as JSON-safe data (datetimes as ISO-8601 UTC)."""
    out = {
        key: (iso(value) if isinstance(value, datetime) else value)
        for key, value in row.items()
        if key not in ("id", "created_at")
    }
    out["recorded_at"] = iso(row.get("updated_at") or row.get("created_at"))
    out.pop("updated_at", None)
    return out


# ----------------------------------------------------------------------------------- payloads


def dag_status(
    facts: DagFacts, catalog_runs: Iterable[Mapping[str, Any]], *, now: datetime, tz: str = "UTC"
) -> dict[str, Any]:
    """The status of one DAG: Airflow's facts plus its newest successful run in the catalog.

    ``catalog_runs`` are this DAG's ``inference_runs`` rows, newest first (as ``Catalog.runs``).
    """
    today = day_start(now, tz)
    since_24h = now - timedelta(hours=24)
    recent = [r for r in facts.recent_runs if r.when is not None]
    last_24h = [r for r in recent if utc(r.when) >= since_24h]
    finished = [r for r in last_24h if r.state in FINISHED_STATES]
    succeeded = sum(1 for r in finished if r.state == "success")
    states: dict[str, int] = {}
    for run in last_24h:
        key = run.state or "none"
        states[key] = states.get(key, 0) + 1
    last_ok = next((r for r in catalog_runs if r.get("status") == "success"), None)
    return {
        "dag_id": facts.dag_id,
        "kind": getattr(kind_of_dag(facts.dag_id), "name", None),
        "exists": facts.exists,
        "paused": facts.paused,
        "stale": facts.stale,
        "has_import_errors": facts.has_import_errors,
        "next_run": iso(facts.next_dagrun),
        "next_run_create_after": iso(facts.next_dagrun_create_after),
        "last_run": _run_payload(facts.last_run),
        "runs_today": sum(1 for r in recent if utc(r.when) >= today),
        "runs_24h": len(last_24h),
        "states_24h": states,
        "success_rate_24h": round(succeeded / len(finished), 4) if finished else None,
        "last_detection_count": last_ok.get("detections") if last_ok else None,
        "last_inference": _inference_payload(last_ok),
    }


def problems(dags: Iterable[Mapping[str, Any]], stuck: int) -> list[str]:
    """Plain-language things an operator should look at (empty when all is well)."""
    out = []
    for dag in dags:
        name = dag["dag_id"]
        if not dag["exists"]:
            out.append(f"{name} is not in Airflow (not parsed yet, or removed)")
            continue
        if dag["has_import_errors"]:
            out.append(f"{name} has import errors")
        if dag["paused"]:
            out.append(f"{name} is paused")
        last = dag["last_run"]
        if last and last["state"] == "failed":
            out.append(f"{name}: last run {last['run_id']} failed")
        rate = dag["success_rate_24h"]
        if rate is not None and rate < 1:
            out.append(f"{name}: success rate over 24 h is {rate:.0%}")
    if stuck:
        out.append(f"{stuck} observation(s) claimed with an expired lease (stuck claims)")
    return out


def build_status(
    dag_facts: Iterable[DagFacts],
    catalog: CatalogReader,
    *,
    now: datetime | None = None,
    tz: str = "UTC",
    grafana_url: str | None = None,
) -> dict[str, Any]:
    """The ``GET /astrid/status`` payload.

    One entry per AstrID DAG in :data:`~astrid.dag_kinds.DAG_IDS` order (a DAG missing from ``dag_facts`` is
    reported with ``exists: false``), the catalog's observation counts per status and its stuck
    claims. The last detection count comes from the newest successful ``inference_runs`` row
    of the last :data:`MAX_HOURS` hours.
    """
    now = now_utc(now)
    by_id = {f.dag_id: f for f in dag_facts}
    rows = catalog.runs(since=now - timedelta(hours=MAX_HOURS))
    per_dag: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        per_dag.setdefault(row["dag_id"], []).append(row)
    dags = [
        dag_status(
            by_id.get(dag_id, DagFacts(dag_id=dag_id, exists=False)), per_dag.get(dag_id, []), now=now, tz=tz
        )
        for dag_id in DAG_IDS
    ]
    stuck = catalog.stuck_claims(now=now)
    counts = catalog.status_counts()
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "timezone": tz,
        "dags": dags,
        "catalog": {
            "status_counts": counts,
            "observations": sum(counts.values()),
            "stuck_claims": len(stuck),
            "oldest_stuck_lease": iso(stuck[0].get("lease_until")) if stuck else None,
        },
        "problems": problems(dags, len(stuck)),
        "links": {"grafana": safe_http_url(grafana_url)},
    }


def build_runs(
    catalog: CatalogReader, hours: int, *, now: datetime | None = None, dag_id: str | None = None
) -> dict[str, Any]:
    """The ``GET /astrid/runs`` payload: catalog ``inference_runs`` started in the last ``hours``."""
    hours = check_hours(hours)
    now = now_utc(now)
    since = now - timedelta(hours=hours)
    runs = [run_row_payload(r) for r in catalog.runs(since=since, dag_id=dag_id)]
    totals = {
        key: sum(r.get(key) or 0 for r in runs)
        for key in ("claimed", "processed", "failed", "rejected", "detections")
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": iso(now),
        "hours": hours,
        "since": iso(since),
        "count": len(runs),
        "totals": totals,
        "runs": runs,
    }


# ----------------------------------------------------------------------------------- trigger


def max_observations_limit(run_type: str, config: Any) -> int | None:
    """The configured maximum of ``max_observations`` for a run type (the DAG param's maximum).

    ``None`` for validation: its ``dataset_size`` param carries its own bound, checked by
    Airflow's param validation when the run is created.
    """
    setting = _kind(run_type).max_observations_setting
    return None if setting is None else getattr(config, setting)


def trigger_conf(
    run_type: str,
    *,
    max_observations: int | None = None,
    model_version: str | None = None,
    confidence_threshold: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """(dag_id, conf) for a ``POST /astrid/trigger`` request; only the given fields go in ``conf``
    (the DAG's param defaults apply to the rest). Validation runs take ``max_observations`` as
    their ``dataset_size`` and have no ``model_version`` (they score champion and challenger)."""
    dag_id = _kind(run_type).dag_id
    conf: dict[str, Any] = {}
    if run_type == "validation":
        if model_version is not None:
            raise ValueError(
                "model_version does not apply to validation runs (they score champion and challenger)"
            )
        if max_observations is not None:
            conf["dataset_size"] = max_observations
    else:
        if max_observations is not None:
            conf["max_observations"] = max_observations
        if model_version is not None:
            conf["model_version"] = model_version
    if confidence_threshold is not None:
        conf["confidence_threshold"] = confidence_threshold
    return dag_id, conf


def _kind(run_type: str) -> Any:
    if run_type not in RUN_TYPES:
        raise ValueError(f"run_type must be one of {', '.join(RUN_TYPES)}, got {run_type!r}")
    return KINDS[run_type]
