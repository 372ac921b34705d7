"""Structured (JSON) log lines, the same inside Airflow task logs, the CLI and notebooks.

Each event is one JSON object on one line, so the people grepping task logs at 3 AM (or a log
shipper feeding Loki/CloudWatch) can filter on ``run_id``, ``dag_id``, ``observation_id`` and
durations without regexes. Airflow captures the ``astrid`` logger into the task log; outside
Airflow it goes wherever logging is configured.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

logger = logging.getLogger("astrid")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def log_event(
    event: str, *, level: int = logging.INFO, exc: BaseException | None = None, **fields: Any
) -> dict:
    """Log ``event`` with ``fields`` as one JSON line; returns the record (handy in tests)."""
    record: dict[str, Any] = {"event": event, "ts": datetime.now(UTC).isoformat(timespec="milliseconds")}
    record.update({k: v for k, v in fields.items() if v is not None})
    if exc is not None:
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = "".join(traceback.format_exception(exc))
        level = max(level, logging.ERROR)
    logger.log(level, "%s", json.dumps(record, default=_default, sort_keys=False))
    return record


@contextmanager
def timed(event: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Log ``<event>.start`` and ``<event>.end`` with ``duration_s``; ``<event>.error`` on failure.

    The yielded dict can be filled with more fields to report at the end (counts, ids...).
    """
    extra: dict[str, Any] = {}
    start = perf_counter()
    log_event(f"{event}.start", **fields)
    try:
        yield extra
    except BaseException as exc:
        log_event(f"{event}.error", exc=exc, duration_s=round(perf_counter() - start, 3), **fields, **extra)
        raise
    log_event(f"{event}.end", duration_s=round(perf_counter() - start, 3), **fields, **extra)
