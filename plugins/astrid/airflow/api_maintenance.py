"""``POST /astrid/maintenance/db-clean``: Airflow's metadata clean-up, run inside the api-server.

Airflow 3 tasks cannot reach the metadata DB on Astro or MWAA (and the task runner blocks Airflow's
ORM in every task process), so ``airflow db clean`` cannot run as a task there. The api-server can:
this endpoint calls the function behind the CLI command, :func:`airflow.utils.db_cleanup.run_cleanup`
(archive tables skipped, no prompt), and the maintenance DAG's ``db_clean`` task calls the endpoint
(``ASTRID_INFERENCE_DB_CLEAN=api``). Astronomer documents this plugin + HTTP API approach for
Airflow 3 ("Clean up the Airflow metadata database using Dags", docs/deploy.md).

Deleting metadata is an Airflow-wide, irreversible change: the caller must be allowed to delete
every DAG's runs and to change Airflow's configuration (simple auth manager: role ``op`` or
``admin``), and the cut-off must be at least :data:`astrid.maintenance.MIN_AGE` old. Each call is
recorded in Airflow's audit log (event ``astrid_db_clean``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    requires_access_configuration,
    requires_access_dag,
)
from airflow.api_fastapi.logging.decorators import action_logging
from fastapi import Depends, FastAPI, HTTPException, Request, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from astrid.maintenance import API_PATH, MIN_AGE

log = logging.getLogger(__name__)


class DbCleanRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"clean_before_timestamp": "2026-11-01T00:00:00+00:00"}]},
    )

    clean_before_timestamp: Annotated[
        AwareDatetime, Field(description="Rows older than this go (with a timezone; at least 1 day ago)")
    ]
    dry_run: bool = Field(False, description="Count only; delete nothing")
    tables: list[str] | None = Field(
        None, max_length=64, description="Only these tables (the names `airflow db clean -t` takes)"
    )
    batch_size: int | None = Field(None, ge=1, le=1_000_000, description="Rows per delete transaction")

    @field_validator("clean_before_timestamp")
    @classmethod
    def _old_enough(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC) - MIN_AGE:
            raise ValueError(
                f"must be at least {MIN_AGE.days} day old: the clean-up never touches recent runs"
            )
        return value

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, value: list[str] | None) -> list[str] | None:
        from airflow.utils.db_cleanup import config_dict

        unknown = sorted(set(value or ()) - set(config_dict))
        if unknown:
            raise ValueError(f"unknown tables {unknown}: use {sorted(config_dict)}")
        return value


class DbCleanResponse(BaseModel):
    clean_before_timestamp: datetime
    dry_run: bool
    older_rows_before: dict[str, int] = Field(description="Per table: rows older than the cut-off, before")
    older_rows_after: dict[str, int] = Field(
        description="Per table: rows older than the cut-off left (each DAG's latest run is always kept)"
    )
    seconds: float


def require_clean(request: Request, user: GetUserDep) -> Any:
    """Delete access to the runs of every DAG and write access to the configuration (else 401/403)."""
    requires_access_dag(method="DELETE", access_entity=DagAccessEntity.RUN)(request, user)
    requires_access_configuration(method="PUT")(request, user)
    return user


def older_rows(before: datetime, tables: list[str] | None) -> dict[str, int]:
    """Rows older than ``before`` in each table the clean-up covers (that exists in this DB).

    A report only, read with ``db_cleanup``'s own table configuration (a private helper of
    Airflow's): if that changes shape in another Airflow version, the counts are left out and the
    clean-up still runs."""
    from sqlalchemy import func, inspect, select

    try:
        from airflow.utils.db_cleanup import _effective_table_names
        from airflow.utils.session import create_session

        _, configs = _effective_table_names(table_names=tables)
        counts: dict[str, int] = {}
        with create_session() as session:
            existing = set(inspect(session.get_bind()).get_table_names())
            for name, config in sorted(configs.items()):
                if name in existing:
                    query = select(func.count()).select_from(config.orm_model)
                    counts[name] = session.scalar(query.where(config.recency_column < before)) or 0
        return counts
    except Exception:
        log.warning("AstrID db clean: could not count the rows older than %s", before, exc_info=True)
        return {}


def add_maintenance_routes(app: FastAPI) -> None:
    @app.post(
        f"/{API_PATH}",
        response_model=DbCleanResponse,
        tags=["maintenance"],
        dependencies=[Depends(action_logging(event="astrid_db_clean"))],
        responses={
            401: {"description": "Not authenticated"},
            403: {"description": "Forbidden: needs delete access to all DAG runs and configuration write"},
            422: {"description": "Invalid request (a cut-off less than a day old, an unknown table)"},
            500: {"description": "The clean-up failed on a table (the detail names it)"},
        },
    )
    def db_clean(body: DbCleanRequest, user: Annotated[Any, Depends(require_clean)]) -> Any:
        """`airflow db clean --skip-archive --yes` in the api-server, which has the metadata DB."""
        from airflow.utils.db_cleanup import run_cleanup

        before = body.clean_before_timestamp
        started = time.monotonic()
        counted = older_rows(before, body.tables)
        try:
            run_cleanup(
                clean_before_timestamp=before,
                table_names=body.tables,
                dry_run=body.dry_run,
                confirm=False,
                skip_archive=True,
                batch_size=body.batch_size,
                error_on_cleanup_failure=True,
            )
        except RuntimeError as exc:  # a table failed; the others were cleaned
            log.error("AstrID db clean by %s failed: %s", user.get_name(), exc)
            raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, str(exc)) from exc
        left = older_rows(before, body.tables)
        seconds = round(time.monotonic() - started, 3)
        log.info(
            "AstrID db clean by %s before %s (dry run: %s): %s -> %s in %.1f s",
            user.get_name(),
            before.isoformat(),
            body.dry_run,
            counted,
            left,
            seconds,
        )
        return DbCleanResponse(
            clean_before_timestamp=before,
            dry_run=body.dry_run,
            older_rows_before=counted,
            older_rows_after=left,
            seconds=seconds,
        )
