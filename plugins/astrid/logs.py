"""Structured (JSON) log lines, the same inside Airflow task logs, the CLI and notebooks.

Each event is one JSON object on one line, so the people grepping task logs at 3 AM (or a log
shipper feeding Loki/CloudWatch) can filter on ``run_id``, ``dag_id``, ``observation_id`` and
durations without regexes. Airflow captures the ``astrid`` logger into the task log; outside
Airflow it goes wherever logging is configured.

Two settings apply to the ``astrid`` logger (and so to every ``astrid.*`` module's logger), in
every process that imports the package (``astrid/__init__`` calls :func:`apply_logging_config`):

- ``ASTRID_INFERENCE_LOG_LEVEL``: the logger's level. Unset, the logger follows the host's
  logging (Airflow's ``[logging] logging_level``, or the CLI's ``--verbose``).
- ``ASTRID_INFERENCE_LOG_ROTATION_MB``: when ``ASTRID_LOG_FILE`` names a local file, the JSON lines
  also go there, rotated at this size with :data:`ROTATED_FILES_KEPT` old files kept. Python's
  rotating handler is per process: put ``{pid}`` (and ``{hostname}``) in the path when several
  processes log (``ASTRID_LOG_FILE=/var/log/astrid/{hostname}-{pid}.jsonl``).
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

logger = logging.getLogger("astrid")

LOG_LEVEL_ENV = "ASTRID_INFERENCE_LOG_LEVEL"
LOG_ROTATION_ENV = "ASTRID_INFERENCE_LOG_ROTATION_MB"
LOG_FILE_ENV = "ASTRID_LOG_FILE"
ROTATED_FILES_KEPT = 5


def apply_logging_config(environ: Mapping[str, str] | None = None) -> None:
    """Apply ``ASTRID_INFERENCE_LOG_LEVEL`` / ``_LOG_ROTATION_MB`` (+ ``ASTRID_LOG_FILE``) to the
    ``astrid`` logger. Values are parsed and validated by :class:`astrid.config.InferenceSchedulingConfig`
    (a bad one raises :class:`~astrid.errors.ConfigError` naming the variable)."""
    environ = os.environ if environ is None else environ
    knobs = {k: environ[k] for k in (LOG_LEVEL_ENV, LOG_ROTATION_ENV) if environ.get(k, "").strip()}
    target = (environ.get(LOG_FILE_ENV) or "").strip()
    for handler in [h for h in logger.handlers if getattr(h, "astrid_log_file", False)]:
        logger.removeHandler(handler)
        handler.close()
    if not knobs and not target:  # nothing to apply: keep `import astrid` cheap (no config parse)
        logger.setLevel(logging.NOTSET)
        return
    from astrid.config import InferenceSchedulingConfig

    config = InferenceSchedulingConfig.from_env(knobs)
    logger.setLevel(config.log_level if LOG_LEVEL_ENV in knobs else logging.NOTSET)
    if target:
        import socket
        from logging.handlers import RotatingFileHandler

        path = Path(target.replace("{pid}", str(os.getpid())).replace("{hostname}", socket.gethostname()))
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(
            path,
            maxBytes=config.log_rotation_mb * 1024 * 1024,
            backupCount=ROTATED_FILES_KEPT,
            encoding="utf-8",
        )
        handler.astrid_log_file = True  # re-applying replaces this handler instead of adding one
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _apply_at_import() -> None:
    """Called by ``astrid/__init__``: a bad value must not make ``import astrid`` fail (the DAG
    files' ``load_config()`` reports it, naming the variable); it is logged and ignored here."""
    try:
        apply_logging_config()
    except Exception as exc:  # ConfigError, or an unwritable ASTRID_LOG_FILE
        logging.getLogger("astrid").warning("logging settings not applied: %s", exc)


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
