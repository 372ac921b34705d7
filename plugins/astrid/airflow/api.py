"""The AstrID status API: a FastAPI app that Airflow's api-server mounts under ``/astrid``.

Mounted by :mod:`astrid.airflow.plugin` (``fastapi_apps``) and built on first request, so
importing the plugin costs the scheduler and workers nothing.

* ``GET /health``   — unauthenticated container health check: is the catalog DB reachable?
* ``GET /status``   — per AstrID DAG: paused, last/next run, runs today, 24 h success rate, last
  detection count; catalog counts per status and stuck claims.
* ``GET /runs``     — the catalog's inference-run history for the last ``hours`` (1-720).
* ``POST /trigger`` — create a DAG run (realtime, batch or validation) with validated conf.
* ``GET /ui``       — the AstrID page shown inside the Airflow UI (static HTML + JS).

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
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
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

    run_type: RunType = Field(
        description=", ".join(f"{kind.name} → {kind.dag_id}" for kind in KINDS.values())
    )
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
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ConfigError, configuration_error)
    app.add_middleware(BodyLimit)
    return app
