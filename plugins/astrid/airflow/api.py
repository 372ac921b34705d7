"""The AstrID status API: a FastAPI app that Airflow's api-server mounts under ``/astrid``.

Mounted by :mod:`astrid.airflow.plugin` (``fastapi_apps``) and built on first request, so
importing the plugin costs the scheduler and workers nothing.

* ``GET /health``   — unauthenticated container health check: is the catalog DB reachable?
* ``GET /status``   — per AstrID DAG: paused, last/next run, runs today, 24 h success rate, last
  detection count; catalog counts per status and stuck claims.
* ``GET /runs``     — the catalog's inference-run history for the last ``hours`` (1-720).
* ``POST /trigger`` — create a DAG run (realtime, batch or validation) with validated conf.
* ``POST /observations`` — ingest one FITS triplet (as ``astrid ingest``; see the block at the end).
* ``GET /ui``       — the AstrID page shown inside the Airflow UI (static HTML + JS).
* ``POST /maintenance/db-clean`` — `airflow db clean` in the api-server (:mod:`astrid.airflow.api_maintenance`).

Authentication is Airflow's own: the dependency the core API uses (:func:`get_user`: a JWT from
``POST /auth/token`` as ``Authorization: Bearer``, or the UI's ``_token`` cookie), and
authorization goes through the auth manager like the core API's DAG-run endpoints (read access
to the three DAGs' runs for ``/status`` and ``/runs``; create access on the DAG for
``/trigger``). Plugin endpoints are not protected by Airflow unless they do this themselves.

DAG facts are read from Airflow's metadata DB with its ORM models; catalog facts through
:class:`~astrid.airflow.hooks.CatalogHook`. What the payloads say is decided in
:mod:`astrid.status` (no Airflow imports, unit-tested).
"""

import html
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from astrid import status as core
from astrid.config import MAX_COUNT, InferenceSchedulingConfig, load_config
from astrid.dag_kinds import DAG_IDS, KINDS, RUN_TYPES
from astrid.errors import ConfigError, ModelReferenceError
from astrid.model_reference import MAX_LENGTH, parse_model_reference

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
GRAFANA_ENV = "ASTRID_GRAFANA_URL"
MAX_BODY_BYTES = 64 * 1024  # a trigger request is a few hundred bytes
# The page talks only to this origin and may be framed only by it (the Airflow UI).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'self'; base-uri 'self'; form-action 'self'"
)


def grafana_url() -> str:
    return core.safe_http_url(os.environ.get(GRAFANA_ENV))


# ----------------------------------------------------------------------------- dependencies


def get_config() -> InferenceSchedulingConfig:
    try:
        return load_config()
    except ConfigError as exc:  # a deployment error, not the client's: 500 naming the variable
        log.error("AstrID configuration is invalid: %s", exc)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"AstrID configuration: {exc}") from exc


ConfigDep = Annotated[InferenceSchedulingConfig, Depends(get_config)]


def open_catalog() -> Any:
    """The catalog the DAGs use (connection ``astrid_catalog``, else the embedded default)."""
    from astrid.airflow.hooks import CatalogHook

    return CatalogHook().get_conn()


def catalog_opener() -> Callable[[], Any]:
    """Dependency: how to open the catalog (tests override it with a SQLite catalog)."""
    return open_catalog


def get_catalog(opener: Annotated[Callable[[], Any], Depends(catalog_opener)]) -> Any:
    try:
        return opener()
    except Exception as exc:
        log.exception("AstrID catalog unreachable")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"catalog unreachable ({type(exc).__name__})"
        ) from exc


CatalogDep = Annotated[Any, Depends(get_catalog)]


def require_read(request: Request, user: GetUserDep) -> Any:
    """An authenticated user who may read the runs of all three AstrID DAGs (else 401/403)."""
    for dag_id in DAG_IDS:
        requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN, param_dag_id=dag_id)(
            request, user
        )
    return user


ReadUserDep = Annotated[Any, Depends(require_read)]


def query_dag_facts(session: Any, dag_ids: list[str], since: datetime) -> list[core.DagFacts]:
    """DAG facts from Airflow's metadata DB (its ORM models): one query per table, plus the
    newest run of each DAG."""
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun

    models = {m.dag_id: m for m in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids)))}
    columns = (
        DagRun.dag_id,
        DagRun.run_id,
        DagRun.state,
        DagRun.run_type,
        DagRun.run_after,
        DagRun.start_date,
        DagRun.end_date,
        DagRun.logical_date,
    )

    def fact(row: Any) -> core.RunFact:
        return core.RunFact(
            run_id=row.run_id,
            state=_value(row.state),
            run_type=_value(row.run_type),
            run_after=row.run_after,
            start_date=row.start_date,
            end_date=row.end_date,
            logical_date=row.logical_date,
        )

    recent: dict[str, list[core.RunFact]] = {}
    stmt = select(*columns).where(DagRun.dag_id.in_(dag_ids), DagRun.run_after >= since)
    for row in session.execute(stmt.order_by(DagRun.run_after.desc())):
        recent.setdefault(row.dag_id, []).append(fact(row))
    facts = []
    for dag_id in dag_ids:
        model = models.get(dag_id)
        if model is None:
            facts.append(core.DagFacts(dag_id=dag_id, exists=False))
            continue
        last = session.execute(
            select(*columns).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(1)
        ).first()
        facts.append(
            core.DagFacts(
                dag_id=dag_id,
                exists=not model.is_stale,
                paused=bool(model.is_paused),
                stale=bool(model.is_stale),
                has_import_errors=bool(model.has_import_errors),
                next_dagrun=model.next_dagrun,
                next_dagrun_create_after=model.next_dagrun_create_after,
                last_run=fact(last) if last is not None else None,
                recent_runs=tuple(recent.get(dag_id, ())),
            )
        )
    return facts


def _value(value: Any) -> Any:
    return getattr(value, "value", value)


def get_dag_facts(session: SessionDep, config: ConfigDep) -> list[core.DagFacts]:
    since = core.facts_window_start(tz=config.timezone)
    return query_dag_facts(session, list(DAG_IDS), since)


DagFactsDep = Annotated[list[core.DagFacts], Depends(get_dag_facts)]


# ----------------------------------------------------------------------------- models

RunType = Literal[RUN_TYPES]  # realtime, batch, validation: the DAG kinds table's names


class HealthResponse(BaseModel):
    status: Literal["ok"]
    latency_ms: float = Field(description="How long the catalog took to answer, in milliseconds")


class TriggerRequest(BaseModel):
    """A DAG run request. Ranges match the DAGs' params (``astrid.airflow.dag_defaults``); the
    checks that depend on the configuration (the run type's maximum, the model roots) are made by
    :meth:`dag_and_conf`, after the configuration itself has been checked."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "run_type": "realtime",
                    "max_observations": 5,
                    "model_version": "champion",
                    "confidence_threshold": 0.5,
                },
                {"run_type": "validation", "max_observations": 50},
            ]
        },
    )

    run_type: RunType = Field(description=", ".join(f"{name} → {KINDS[name].dag_id}" for name in RUN_TYPES))
    max_observations: Annotated[int | None, Field(strict=True, ge=1, le=MAX_COUNT)] = Field(
        None,
        description="Observations to claim: 1 to the configured maximum for the run type "
        "(ASTRID_INFERENCE_MAX_OBSERVATIONS, ASTRID_INFERENCE_BATCH_MAX_OBSERVATIONS). For validation: "
        "the number of labelled observations (the DAG's dataset_size). Omitted: the DAG's default.",
    )
    model_version: Annotated[str | None, Field(strict=True, min_length=1, max_length=MAX_LENGTH)] = Field(
        None,
        description="champion, challenger, a registry version number, models:/astrid-unet@alias, "
        "models:/astrid-unet/<version>, or the absolute path of a model directory under "
        "ASTRID_INFERENCE_MODEL_ROOTS; not for validation. Omitted: the DAG's default (champion).",
    )
    confidence_threshold: Annotated[float | None, Field(strict=True, gt=0, lt=1, allow_inf_nan=False)] = (
        Field(
            None,
            description="Probability cut for a detection, strictly between 0 and 1. Omitted: the DAG's default.",
        )
    )

    @model_validator(mode="after")
    def _validation_runs_take_no_model(self) -> "TriggerRequest":
        core.trigger_conf(self.run_type, model_version=self.model_version)  # ValueError → 422
        return self

    def dag_and_conf(self, config: InferenceSchedulingConfig) -> tuple[str, dict[str, Any]]:
        """(dag_id, conf); :class:`RequestValidationError` (422 naming the field) for a value the
        configuration refuses."""
        limit = core.max_observations_limit(self.run_type, config)
        if limit is not None and self.max_observations is not None and self.max_observations > limit:
            raise _invalid(
                "max_observations",
                f"max_observations must be at most {limit} for {self.run_type} runs "
                f"(the configured maximum), got {self.max_observations}",
                self.max_observations,
            )
        if self.model_version is not None:
            try:
                parse_model_reference(self.model_version, config.model_root_paths)
            except ModelReferenceError as exc:
                raise _invalid("model_version", str(exc), self.model_version) from None
        return core.trigger_conf(
            self.run_type,
            max_observations=self.max_observations,
            model_version=self.model_version,
            confidence_threshold=self.confidence_threshold,
        )


def _invalid(name: str, message: str, value: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", name), "msg": message, "input": value}]
    )


def _json_safe(value: Any, depth: int = 0) -> Any:
    """An echoed request value that JSON can carry and a log can hold: non-finite floats (which
    Python's json parses from ``NaN``/``Infinity`` but cannot write back) become strings, long
    strings and containers are cut."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _text(value, 200)
    if depth >= 3:
        return "…"
    if isinstance(value, dict):
        return {str(k)[:100]: _json_safe(v, depth + 1) for k, v in list(value.items())[:20]}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value[:20]]
    return _json_safe(str(value), depth)


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, writable as UTF-8 (JSON allows lone surrogates such as
    ``"\ud800"``, which UTF-8 cannot encode: they come back escaped)."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "…"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each refused field, for any input: FastAPI's own handler echoes the input back,
    and a NaN or Infinity in it made the 422 itself fail to encode (a bare 500)."""
    detail = [
        {
            "type": str(error.get("type", "value_error")),
            "loc": [_json_safe(part) for part in error.get("loc", ())],
            "msg": _text(str(error.get("msg", "")), 2000),
            "input": _json_safe(error.get("input")),
        }
        for error in exc.errors()[:50]
    ]
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail})


async def configuration_error(request: Request, exc: ConfigError) -> JSONResponse:
    """A bad ``ASTRID_*`` variable met anywhere in a request: a 500 that names it."""
    log.error("AstrID configuration is invalid: %s", exc)
    return JSONResponse(status_code=500, content={"detail": f"AstrID configuration: {exc}"})


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, before they are read
    into memory (by ``Content-Length`` when given, else while they stream in)."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await JSONResponse(status_code=413, content={"detail": self._message})(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, self._message)
            return message

        await self.app(scope, limited, send)

    @property
    def _message(self) -> str:
        return f"request body larger than {self.limit} bytes"


class TriggerResponse(BaseModel):
    dag_id: str
    run_id: str
    state: str | None
    conf: dict[str, Any]
    run_after: datetime | None
    paused: bool = Field(description="The DAG is paused: the run waits queued until it is unpaused")
    ui_path: str = Field(description="The run's page in the Airflow UI (relative to the base URL)")


# ----------------------------------------------------------------------------- the app


def _fastapi(**kwargs: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load Swagger UI and ReDoc from this server
    (``fastapi-offline`` vendors them): no browser is sent to a CDN, and the docs work offline."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # not installed: no docs pages rather than pages that call a CDN
        log.warning("fastapi-offline is not installed: /astrid/docs is disabled")
        return FastAPI(docs_url=None, redoc_url=None, **kwargs)
    return FastAPIOffline(static_url="/static-docs", **kwargs)


def create_app() -> FastAPI:
    app = _fastapi(
        title="AstrID status API",
        version="1",
        description=(
            "Status, run history and triggering of the AstrID inference DAGs, mounted in the Airflow "
            "api-server under `/astrid`. Everything but `/health` and the page needs Airflow "
            "authentication: `Authorization: Bearer <token from POST /auth/token>` or the Airflow UI's "
            "session cookie. See docs/status-api.md."
        ),
    )

    @app.get(
        "/health",
        response_model=HealthResponse,
        tags=["health"],
        responses={
            503: {
                "description": 'The catalog DB is unreachable: `{"status": "unavailable", "reason": "catalog unreachable"}`'
            }
        },
    )
    def health(opener: Annotated[Callable[[], Any], Depends(catalog_opener)]) -> Any:
        """Container health check (no authentication): 200 when the catalog DB answers a query.

        It says no more than that: schema revisions, versions and error texts are for
        authenticated callers (``/status``) and the api-server log."""
        started = time.monotonic()
        try:
            opener().revision()
        except Exception as exc:
            log.warning("AstrID health: catalog unreachable: %s", exc, exc_info=True)
            return JSONResponse(
                status_code=503,
                headers={"Cache-Control": "no-store"},
                content={"status": "unavailable", "reason": "catalog unreachable"},
            )
        latency = round((time.monotonic() - started) * 1000, 1)
        return JSONResponse(
            headers={"Cache-Control": "no-store"}, content={"status": "ok", "latency_ms": latency}
        )

    @app.get(
        "/status",
        tags=["status"],
        responses={
            401: {"description": "Not authenticated"},
            403: {"description": "Forbidden"},
            503: {"description": "Catalog unreachable"},
        },
    )
    def get_status(
        _user: ReadUserDep, facts: DagFactsDep, catalog: CatalogDep, config: ConfigDep
    ) -> dict[str, Any]:
        """Per AstrID DAG: paused, last run (id, state, end), next run, runs today, success rate
        over 24 h, last detection count; the catalog's observations per status and stuck claims."""
        return core.build_status(facts, catalog, tz=config.timezone, grafana_url=grafana_url())

    @app.get(
        "/runs",
        tags=["status"],
        responses={401: {"description": "Not authenticated"}, 403: {"description": "Forbidden"}},
    )
    def get_runs(
        _user: ReadUserDep,
        catalog: CatalogDep,
        hours: Annotated[
            int, Query(ge=core.MIN_HOURS, le=core.MAX_HOURS, description="How far back, in hours (1-720)")
        ] = 24,
        run_type: Annotated[RunType | None, Query(description="Only this run type's DAG")] = None,
    ) -> dict[str, Any]:
        """Inference runs recorded in the catalog (``inference_runs``) started in the last ``hours``,
        newest first, with totals."""
        dag_id = KINDS[run_type].dag_id if run_type else None
        return core.build_runs(catalog, hours, dag_id=dag_id)

    @app.post(
        "/trigger",
        response_model=TriggerResponse,
        tags=["trigger"],
        dependencies=[Depends(action_logging(event="astrid_trigger"))],
        responses={
            401: {"description": "Not authenticated"},
            403: {"description": "Forbidden"},
            404: {"description": "DAG not in Airflow"},
            400: {"description": "DAG has import errors"},
            409: {"description": "Run already exists"},
            413: {"description": "Request body too large"},
            500: {"description": "AstrID configuration invalid (the detail names the variable)"},
        },
    )
    def trigger(
        body: TriggerRequest, request: Request, user: GetUserDep, config: ConfigDep, session: SessionDep
    ) -> Any:
        """Create a manual DAG run with the given conf, through Airflow's own trigger code path
        (``airflow.api.common.trigger_dag``; params validated against the DAG's params)."""
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound, DagRunAlreadyExists, ParamValidationError
        from airflow.models.dag import DagModel
        from airflow.utils.types import DagRunTriggeredByType

        dag_id, conf = body.dag_and_conf(config)
        requires_access_dag(method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=dag_id)(
            request, user
        )
        model = session.scalar(select(DagModel).where(DagModel.dag_id == dag_id, ~DagModel.is_stale))
        if model is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"DAG {dag_id!r} is not in Airflow (not parsed yet?)"
            )
        if model.has_import_errors:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"DAG {dag_id!r} has import errors")
        triggered_by = (
            DagRunTriggeredByType.UI if request.headers.get("referer") else DagRunTriggeredByType.REST_API
        )
        try:
            run = trigger_dag(
                dag_id,
                triggered_by=triggered_by,
                triggering_user_name=user.get_name(),
                conf=conf,
                session=session,
            )
        except DagNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        except DagRunAlreadyExists as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except ParamValidationError as exc:  # the DAG's own params refused the conf
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        if run is None:
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"no run created for {dag_id!r}")
        log.info("AstrID trigger: %s %s by %s conf=%s", dag_id, run.run_id, user.get_name(), conf)
        return TriggerResponse(
            dag_id=dag_id,
            run_id=run.run_id,
            state=_value(run.state),
            conf=conf,
            run_after=run.run_after,
            paused=bool(model.is_paused),
            ui_path=f"/dags/{dag_id}/runs/{run.run_id}",
        )

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("ui")

    @app.get("/ui", response_class=HTMLResponse, tags=["page"])
    def page() -> HTMLResponse:
        """The AstrID page (static; its data comes from /status with the caller's credentials)."""
        text = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        text = text.replace("{{GRAFANA_URL}}", html.escape(grafana_url(), quote=True))
        return HTMLResponse(text, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_observation_routes(app)
    add_detection_routes(app)
    from astrid.airflow.api_maintenance import add_maintenance_routes

    add_maintenance_routes(app)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ConfigError, configuration_error)
    app.add_middleware(BodyLimit)
    return app


# ----------------------------------------------------------------------------- POST /observations
# Ingestion over HTTP: the same validation as `astrid ingest` (astrid.ingest), behind Airflow's
# auth like /trigger (an ingested observation makes the realtime DAG run: the caller needs create
# access to its runs). Files are read only under the storage root or ASTRID_INFERENCE_INGEST_ROOTS.


class ObservationRequest(BaseModel):
    """One triplet to register. Paths are relative to the storage root, or absolute URIs/paths
    under it or under an ``ASTRID_INFERENCE_INGEST_ROOTS`` root."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "science": "incoming/2026-12-01/m31_sci.fits",
                    "reference": "incoming/2026-12-01/m31_ref.fits",
                    "difference": "incoming/2026-12-01/m31_diff.fits",
                    "id": "m31-2026-12-01-0042",
                    "meta": {"night": "2026-12-01", "seeing": 1.1},
                }
            ]
        },
    )

    science: Annotated[str, Field(min_length=1, max_length=2048)]
    reference: Annotated[str, Field(min_length=1, max_length=2048)]
    difference: Annotated[str | None, Field(min_length=1, max_length=2048)] = Field(
        None,
        description="Omitted: AstrID aligns, PSF-matches and subtracts science and reference "
        "(unless subtract is false)",
    )
    subtract: bool | None = Field(
        None,
        description="Without a difference: subtract now (true) or register 'ingested' for the DAGs' "
        "subtract task (false); omitted: ASTRID_INFERENCE_INGEST_SUBTRACT",
    )
    id: Annotated[str | None, Field(max_length=128)] = Field(
        None, description="Observation id; omitted: <science file stem>-<content hash>"
    )
    meta: Annotated[dict[str, str | int | float], Field(max_length=32)] = Field(default_factory=dict)
    wcs: bool = Field(True, description="false: the frames have no WCS; accept them (no RA/Dec)")
    mode: Literal["copy", "reference"] | None = Field(
        None,
        description="copy into the storage root, or reference in place (default: ASTRID_INFERENCE_INGEST_MODE)",
    )


class ObservationResponse(BaseModel):
    observation_id: int
    id: str
    created: bool = Field(description="false: the same files were already registered (this is that one)")
    status: str
    content_hash: str
    arrived_at: datetime | None
    uris: dict[str, str]
    announced: bool = Field(description="the arrival message was published")
    problems: list[str]


def open_storage() -> Any:
    """The storage root the DAGs use (connection ``astrid_storage``, else the embedded default)."""
    from astrid.airflow.hooks import ObservationStorageHook

    return ObservationStorageHook().get_conn()


def storage_opener() -> Callable[[], Any]:
    """Dependency: how to open the storage root (tests override it)."""
    return open_storage


def require_ingest(request: Request, user: GetUserDep) -> Any:
    requires_access_dag(
        method="POST", access_entity=DagAccessEntity.RUN, param_dag_id=KINDS["realtime"].dag_id
    )(request, user)
    return user


def ingest_observation(
    body: ObservationRequest,
    catalog: Any,
    storage: Any,
    config: InferenceSchedulingConfig,
) -> Any:
    import sqlalchemy.exc

    from astrid.errors import IngestError
    from astrid.events import doorbell
    from astrid.ingest import Ingestor, IngestRequest
    from astrid.storage import StorageRoot

    try:
        ingestor = Ingestor(
            catalog,
            storage,
            mode=body.mode or config.ingest_mode,
            max_side=config.max_image_side,
            doorbell=doorbell(config),
            sources=[StorageRoot.from_uri(uri) for uri in config.ingest_root_uris],
            subtract=config.ingest_subtract,
        )
        result = ingestor.ingest(
            IngestRequest(
                science=body.science,
                reference=body.reference,
                difference=body.difference,
                name=body.id,
                meta=body.meta,
                require_wcs=body.wcs,
                subtract=body.subtract,
            )
        )
    except IngestError as exc:
        field = exc.field or "body"
        code = (
            status.HTTP_409_CONFLICT
            if exc.conflict
            else status.HTTP_503_SERVICE_UNAVAILABLE  # the storage root refused the copy
            if field == "storage"
            else status.HTTP_422_UNPROCESSABLE_CONTENT
        )
        loc = ["body", field] if field in ObservationRequest.model_fields else ["body"]
        raise HTTPException(code, [{"loc": loc, "msg": str(exc), "type": "ingest"}]) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:  # the registration failed: its copies are removed
        log.exception("AstrID ingest: the catalog refused the registration")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"catalog unreachable ({type(exc).__name__})"
        ) from None
    log.info(
        "AstrID ingest: observation %s %s (created=%s)", result.observation_id, result.name, result.created
    )
    return JSONResponse(
        status_code=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        content=ObservationResponse(**result.to_json()).model_dump(mode="json"),
    )


def add_observation_routes(app: FastAPI) -> None:
    @app.post(
        "/observations",
        response_model=ObservationResponse,
        status_code=status.HTTP_201_CREATED,
        tags=["ingest"],
        dependencies=[Depends(action_logging(event="astrid_ingest"))],
        responses={
            200: {"description": "The same files were already registered: that observation"},
            401: {"description": "Not authenticated"},
            403: {"description": "Forbidden"},
            409: {"description": "The id is taken by other files"},
            422: {"description": "A file or field was refused (named in detail[].loc)"},
            503: {"description": "Catalog or storage unreachable"},
        },
    )
    def post_observation(
        body: ObservationRequest,
        _user: Annotated[Any, Depends(require_ingest)],
        catalog: CatalogDep,
        opener: Annotated[Callable[[], Any], Depends(storage_opener)],
        config: ConfigDep,
    ) -> Any:
        """Register one science/reference(/difference) triplet, exactly as `astrid ingest` does:
        validated before anything is registered, idempotent by content, then announced to the
        realtime DAG. 201 when new, 200 when the same files were already registered."""
        try:
            storage = opener()
        except Exception as exc:
            log.exception("AstrID storage root unavailable")
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, f"storage unreachable ({type(exc).__name__})"
            ) from exc
        return ingest_observation(body, catalog, storage, config)


# ----------------------------------------------------------------------------- detections (issue 16)
# What the detector found, for people (the AstrID page's drill-down) and for tools (CSV, VOTable):
# GET /detections (filters, cone search, pages, exports), one detection, its stamps, the
# observations of a run, an observation with its whole frame. Read access like /status. Files are
# found by id through the catalog and the storage root (astrid.storage refuses URIs outside it):
# a client never names a path. The core (queries, cone geometry, exports) is astrid.detections.

DETECTION_FORMATS = {"json": "application/json", "csv": "text/csv", "votable": "application/x-votable+xml"}
STAMP_TYPES = {"png": "image/png", "fits": "application/fits"}
FRAME_SIDE = 1024  # px: the longer side of an observation's frame image at most


class _Kept:
    """The last ``size`` values computed, by key (thread-safe: endpoints run in a thread pool).
    What it keeps is immutable in storage (a run's stamps, an observation's frame)."""

    def __init__(self, size: int) -> None:
        self.size, self._values, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            self._values[key] = value
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


_FRAMES = _Kept(8)  # (uri, kind) -> (png, factor, height, width)
_STRIPS = _Kept(16)  # stamp strip URI -> decoded PNG


class DetectionOut(BaseModel):
    """One detection. Sky positions in degrees (ICRS, from the frame's WCS); pixels 0-based."""

    id: int
    observation_id: int
    observation: str = Field(description="observation name")
    run_id: str = Field(description="run that stored it: <dag id>:<dag run id> for DAG runs")
    model_version: str
    mjd: float | None = Field(description="observation start, MJD (UTC) [d]")
    filter: str | None
    x: float = Field(description="0-based column [pix]")
    y: float = Field(description="0-based row [pix]")
    ra: float | None = Field(description="right ascension [deg]; null without a WCS")
    dec: float | None = Field(description="declination [deg]; null without a WCS")
    score: float = Field(description="U-Net transient probability")
    flux: float | None = Field(
        description="aperture flux (r = 3 px) on the difference image, its units (ADU)"
    )
    flux_err: float | None = Field(description="1σ error of flux")
    snr: float | None = Field(description="flux / flux_err")
    mag: float | None = Field(
        description="AB magnitude of the aperture flux [mag]; null without a zero point"
    )
    mag_err: float | None = Field(description="1σ error of mag [mag]")
    separation: float | None = Field(None, description="distance from the cone's centre [arcsec]")
    created_at: str | None = Field(description="when it was stored (ISO 8601, UTC)")
    has_stamp: bool
    stamp_png: str | None = Field(description="its stamps as PNG, relative to /astrid/")
    stamp_fits: str | None = Field(description="its stamps as FITS with the WCS, relative to /astrid/")


class DetectionPage(BaseModel):
    count: int = Field(description="detections on this page")
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")
    detections: list[DetectionOut]


class RunObservation(BaseModel):
    id: int
    name: str
    mjd: float | None
    filter: str | None
    status: str
    ra_center: float | None
    dec_center: float | None
    model_version: str
    detections: int
    best_score: float | None


class ObservationView(BaseModel):
    id: int
    name: str
    mjd: float | None
    filter: str | None
    status: str
    width: int | None = Field(description="frame width [pix]; null when its file is not readable")
    height: int | None = Field(description="frame height [pix]")
    frame_png: str | None = Field(description="the whole frame, downsampled, relative to /astrid/")
    frame_factor: int | None = Field(
        description="frame pixel (x, y) is PNG pixel ((x + 0.5) / f, rows - (y + 0.5) / f)"
    )
    detections: list[DetectionOut]


def _query_error(name: str, message: str, value: Any) -> HTTPException:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"type": "value_error", "loc": ["query", name], "msg": message, "input": value}],
    )


def _with_links(row: dict[str, Any]) -> dict[str, Any]:
    link = f"detections/{row['id']}/stamp" if row.get("has_stamp") else None
    row = {k: v for k, v in row.items() if k != "stamp_uri"}
    return {**row, "stamp_png": link and f"{link}.png", "stamp_fits": link and f"{link}.fits"}


def _storage(opener: Callable[[], Any]) -> Any:
    try:
        return opener()
    except Exception as exc:
        log.exception("AstrID storage root unavailable")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"storage unreachable ({type(exc).__name__})"
        ) from exc


def _stamp(storage: Any, stamp_uri: str, kind: str, what: str) -> bytes:
    """One detection's stamps out of its observation's files (found through the storage root,
    which refuses URIs outside it); 404 when refused, absent or unreadable."""
    from astrid.errors import StorageError
    from astrid.stamps import detection_fits, detection_png, split_stamp_uri

    try:
        prefix, index = split_stamp_uri(stamp_uri)
        path = storage.resolve(f"{prefix}.{kind}")
        if kind == "png":
            return detection_png(_strip(path, f"{prefix}.png"), index)
        with path.open("rb") as fh:
            return detection_fits(fh, index)
    except (StorageError, ValueError) as exc:
        log.error("AstrID: %s: the catalog's stamp_uri %r is refused: %s", what, stamp_uri, exc)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} are not available") from None
    except (FileNotFoundError, IndexError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} are not in storage (deleted?)") from None
    except OSError as exc:
        log.error("AstrID: %s: %s", what, exc)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} are not readable") from None


def _strip(path: Any, key: str) -> Any:
    """An observation's stamp strip (PIL image), decoded once: a gallery asks for every row."""

    def decode() -> Any:
        from PIL import Image

        with path.open("rb") as fh:
            image = Image.open(fh)
            image.load()
        return image

    return _STRIPS.get(key, decode)


def _frame(storage: Any, observation: dict[str, Any], kind: str) -> tuple[bytes, int, int, int]:
    """(PNG, factor, height, width) of an observation's whole frame; the last few are kept."""
    from astrid.errors import FitsError
    from astrid.imaging.fits import ReadLimits, read_image
    from astrid.stamps import overview

    uri = observation["science_uri"] if kind == "science" else observation["difference_uri"]
    if not uri:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"observation {observation['id']} has no {kind} image")

    def render() -> tuple[bytes, int, int, int]:
        from astrid.errors import StorageError

        try:
            data, _header = read_image(
                storage.resolve(uri), kind, limits=ReadLimits.from_config(load_config())
            )
        except (FitsError, StorageError) as exc:
            log.error("AstrID frame of observation %s: %s", observation["id"], exc)
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the {kind} image is not readable") from None
        png, factor = overview(data, FRAME_SIDE)
        return png, factor, *data.shape

    return _FRAMES.get((uri, kind), render)


def _observation(catalog: Any, observation_id: int) -> dict[str, Any]:
    from astrid.errors import CatalogError

    try:
        return catalog.get(observation_id)
    except CatalogError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no observation {observation_id}") from None


DetectionId = Annotated[int, PathParam(ge=1, le=2**62, description="detection id")]
ObservationId = Annotated[int, PathParam(ge=1, le=2**62, description="observation id")]
StorageOpenerDep = Annotated[Callable[[], Any], Depends(storage_opener)]
_READ_ERRORS = {
    401: {"description": "Not authenticated"},
    403: {"description": "Forbidden"},
    404: {"description": "Not found"},
    503: {"description": "Catalog or storage unreachable"},
}


def add_detection_routes(app: FastAPI) -> None:
    from astrid import detections as found

    @app.get(
        "/detections",
        response_model=DetectionPage,
        tags=["detections"],
        responses={
            200: {
                "description": "A page of detections: JSON, CSV or a VOTable (units, UCDs)",
                "content": {DETECTION_FORMATS["csv"]: {}, DETECTION_FORMATS["votable"]: {}},
            },
            422: {"description": "A parameter was refused (named in detail[].loc)"},
            **{k: v for k, v in _READ_ERRORS.items() if k != 404},
        },
    )
    def list_detections(
        request: Request,
        _user: ReadUserDep,
        catalog: CatalogDep,
        run_id: Annotated[
            str | None,
            Query(min_length=1, max_length=300, description="<dag id>:<dag run id> (or a CLI run id)"),
        ] = None,
        observation_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
        model_version: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+-]+$")
        ] = None,
        min_score: Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False)] = None,
        start: Annotated[
            datetime | None, Query(description="observed at or after (ISO 8601; no zone = UTC)")
        ] = None,
        end: Annotated[
            datetime | None, Query(description="observed before (ISO 8601; no zone = UTC)")
        ] = None,
        ra: Annotated[
            float | None, Query(ge=0, le=360, allow_inf_nan=False, description="cone centre RA [deg]")
        ] = None,
        dec: Annotated[
            float | None, Query(ge=-90, le=90, allow_inf_nan=False, description="cone centre Dec [deg]")
        ] = None,
        radius: Annotated[
            float | None,
            Query(gt=0, le=found.MAX_RADIUS, allow_inf_nan=False, description="cone radius [deg]"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=found.MAX_LIMIT)] = 100,
        offset: Annotated[int, Query(ge=0, le=found.MAX_OFFSET)] = 0,
        format: Annotated[
            Literal["json", "csv", "votable"], Query(description="json, csv or votable")
        ] = "json",
    ) -> Any:
        """Detections, highest score first, filtered by run, observation, model version, minimum
        score and observation time (``start`` ≤ MJD-OBS < ``end``), optionally inside a cone
        (``ra``, ``dec``, ``radius`` in degrees: all three or none). Pages of ``limit`` from
        ``offset``; ``next_offset`` (JSON) or a ``Link: rel="next"`` header (CSV, VOTable) says
        where the next page starts."""
        cone = (ra, dec, radius)
        if any(v is not None for v in cone) and any(v is None for v in cone):
            missing = [n for n, v in zip(("ra", "dec", "radius"), cone, strict=True) if v is None]
            raise _query_error(missing[0], "a cone search needs ra, dec and radius together", None)
        mjd_from = found.mjd(start) if start else None
        mjd_to = found.mjd(end) if end else None
        if mjd_from is not None and mjd_to is not None and mjd_to <= mjd_from:
            raise _query_error("end", "end must be after start", str(end))
        query = found.DetectionQuery(
            run_id=run_id,
            observation_id=observation_id,
            model_version=model_version,
            min_score=min_score,
            mjd_from=mjd_from,
            mjd_to=mjd_to,
            cone=found.Cone(ra, dec, radius) if ra is not None else None,
            limit=limit,
            offset=offset,
        )
        page = found.search(catalog, query)
        if format == "json":
            rows = [_with_links(r) for r in page.rows]
            return {
                "count": len(rows),
                "offset": page.offset,
                "limit": page.limit,
                "next_offset": page.next_offset,
                "detections": rows,
            }
        headers = {
            "Content-Disposition": f'attachment; filename="astrid-detections.{"xml" if format == "votable" else "csv"}"'
        }
        if page.next_offset is not None:
            following = urlencode({**request.query_params, "offset": page.next_offset})
            headers["Link"] = f'<detections?{following}>; rel="next"'
        if format == "csv":
            return Response(found.to_csv(page.rows), media_type=DETECTION_FORMATS["csv"], headers=headers)
        body = found.to_votable(page.rows, f"AstrID detections ({_describe(query)})")
        return Response(body, media_type=DETECTION_FORMATS["votable"], headers=headers)

    @app.get(
        "/detections/{detection_id}", response_model=DetectionOut, tags=["detections"], responses=_READ_ERRORS
    )
    def get_detection(detection_id: DetectionId, _user: ReadUserDep, catalog: CatalogDep) -> Any:
        """One detection."""
        row = found.detection(catalog, detection_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {detection_id}")
        return _with_links(row)

    @app.get(
        "/detections/{detection_id}/stamp.{kind}",
        tags=["detections"],
        response_class=Response,
        responses={200: {"content": {t: {} for t in STAMP_TYPES.values()}}, **_READ_ERRORS},
    )
    def get_stamp(
        detection_id: DetectionId,
        kind: Literal["png", "fits"],
        _user: ReadUserDep,
        catalog: CatalogDep,
        opener: StorageOpenerDep,
    ) -> Response:
        """The detection's stamps (science, reference, difference, probability): one PNG strip,
        or a FITS file with one image extension each, carrying the stamp's WCS."""
        row = found.detection(catalog, detection_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no detection {detection_id}")
        if not row["stamp_uri"]:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"detection {detection_id} has no stamps")
        body = _stamp(_storage(opener), row["stamp_uri"], kind, f"the stamps of detection {detection_id}")
        headers = {"Cache-Control": "private, max-age=86400"}
        if kind == "fits":
            headers["Content-Disposition"] = f'attachment; filename="astrid-detection-{detection_id}.fits"'
        return Response(body, media_type=STAMP_TYPES[kind], headers=headers)

    @app.get(
        "/observations", response_model=list[RunObservation], tags=["detections"], responses=_READ_ERRORS
    )
    def list_run_observations(
        _user: ReadUserDep,
        catalog: CatalogDep,
        run_id: Annotated[str, Query(min_length=1, max_length=300, description="<dag id>:<dag run id>")],
    ) -> Any:
        """The observations a run processed, with the detections it found in each."""
        return found.run_observations(catalog, run_id)

    @app.get(
        "/observations/{observation_id}",
        response_model=ObservationView,
        tags=["detections"],
        responses=_READ_ERRORS,
    )
    def get_observation(
        observation_id: ObservationId,
        _user: ReadUserDep,
        catalog: CatalogDep,
        opener: StorageOpenerDep,
        model_version: Annotated[
            str | None, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/+-]+$")
        ] = None,
    ) -> Any:
        """An observation, its frame's size and image, and its detections (one model version's, or
        all)."""
        obs = _observation(catalog, observation_id)
        try:
            _png, factor, height, width = _frame(_storage(opener), obs, "science")
        except HTTPException:  # its files are gone or unreadable: the detections still stand
            factor = height = width = None
        page = found.search(
            catalog,
            found.DetectionQuery(
                observation_id=observation_id, model_version=model_version, limit=found.MAX_LIMIT
            ),
        )
        return {
            **{k: obs[k] for k in ("id", "name", "mjd", "filter")},
            "status": getattr(obs["status"], "value", obs["status"]),
            "width": width,
            "height": height,
            "frame_png": f"observations/{observation_id}/frame.png" if factor else None,
            "frame_factor": factor,
            "detections": [_with_links(r) for r in page.rows],
        }

    @app.get(
        "/observations/{observation_id}/frame.png",
        tags=["detections"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **_READ_ERRORS},
    )
    def get_frame(
        observation_id: ObservationId,
        _user: ReadUserDep,
        catalog: CatalogDep,
        opener: StorageOpenerDep,
        kind: Annotated[Literal["science", "difference"], Query()] = "science",
    ) -> Response:
        """The observation's whole frame, block-averaged to at most 1024 px a side."""
        png, *_ = _frame(_storage(opener), _observation(catalog, observation_id), kind)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


def _describe(query: Any) -> str:
    parts = [
        f"{k}={v}" for k, v in vars(query).items() if v is not None and k not in ("limit", "offset", "cone")
    ]
    if query.cone is not None:
        parts.append(f"cone ra={query.cone.ra} dec={query.cone.dec} radius={query.cone.radius} deg")
    return ", ".join(parts) or "all"
