"""Housekeeping: apply ``log_retention_days`` to task log files and to Airflow's metadata rows.

Task logs grow by a few MB a day per DAG; without retention a worker's disk fills and every task
on it fails. Remote logging (S3) has its own lifecycle rules; this prunes the local copies.

Metadata rows: ``airflow db clean`` needs the metadata DB, which Airflow 3 tasks cannot reach on
Astro or MWAA. So the maintenance DAG cleans the way the platform allows
(``ASTRID_INFERENCE_DB_CLEAN``, :func:`resolve_db_clean_mode`): through the AstrID plugin in the
api-server (Astronomer's documented approach), through MWAA's CLI endpoint (AWS's), as a
subprocess where the worker has the DB (compose, Helm, a laptop), or not at all, saying what to
run instead. ``python -m astrid.maintenance db-clean`` is that command (the compose ``airflow-cli``
service runs it).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astrid.config import DB_CLEAN_MODES as MODES

ACTIVE_MODES = ("api", "mwaa", "cli")
API_PATH = "maintenance/db-clean"  # under the plugin's /astrid mount
MIN_AGE = timedelta(days=1)  # the newest cut-off the endpoint accepts: never today's runs


@dataclass
class PruneReport:
    files_removed: int
    bytes_removed: int
    dirs_removed: int


def prune_logs(
    root: Path, older_than_days: float, *, now: float | None = None, dry_run: bool = False
) -> PruneReport:
    """Delete files under ``root`` last modified more than ``older_than_days`` ago, then empty dirs."""
    now = time.time() if now is None else now
    cutoff = now - older_than_days * 86400
    report = PruneReport(0, 0, 0)
    root = Path(root)
    if not root.is_dir():
        return report
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if stat.st_mtime < cutoff:
                report.files_removed += 1
                report.bytes_removed += stat.st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
        directory = Path(dirpath)
        if directory != root and not dry_run and not any(directory.iterdir()):
            directory.rmdir()
            report.dirs_removed += 1
    return report


# ------------------------------------------------------------------------------------------------
# metadata DB clean-up (`airflow db clean`)


def clean_before(retention_days: float, *, now: datetime | None = None) -> datetime:
    """The cut-off: rows older than ``retention_days`` go."""
    return (now or datetime.now(UTC)) - timedelta(days=float(retention_days))


def db_clean_args(before: datetime, *, dry_run: bool = False) -> list[str]:
    """``airflow`` CLI arguments of the clean-up (without the program): archive tables skipped,
    no prompt. The one spelling of the command, for the subprocess, MWAA's CLI endpoint and the
    compose ``airflow-cli`` service."""
    args = ["db", "clean", "--clean-before-timestamp", before.isoformat(), "--skip-archive", "--yes"]
    return [*args, "--dry-run"] if dry_run else args


def resolve_db_clean_mode(mode: str, environ: Mapping[str, str] | None = None) -> str:
    """``auto`` → the platform's mechanism; any other mode is kept.

    MWAA sets ``MWAA_AIRFLOW_COMPONENT`` in every container → ``mwaa``. Astro sets
    ``ASTRONOMER_ENVIRONMENT`` (``local`` under ``astro dev`` and the compose stack, whose
    containers have the metadata DB) → ``api`` on Astro itself. Everything else (compose, Helm,
    a laptop) → ``cli``, which skips when the worker cannot reach the DB.
    """
    environ = os.environ if environ is None else environ
    if mode not in MODES:
        raise ValueError(f"unknown db clean mode {mode!r}: one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if environ.get("MWAA_AIRFLOW_COMPONENT"):
        return "mwaa"
    astro = environ.get("ASTRONOMER_ENVIRONMENT", "")
    if astro and astro != "local":
        return "api"
    return "cli"


def platform_of(environ: Mapping[str, str] | None = None) -> str:
    """``mwaa``, ``astro`` or ``other``: whose instructions a skip message gives."""
    environ = os.environ if environ is None else environ
    if environ.get("MWAA_AIRFLOW_COMPONENT"):
        return "mwaa"
    if environ.get("ASTRONOMER_ENVIRONMENT", "") not in ("", "local"):
        return "astro"
    return "other"


def instead(platform: str) -> str:
    """What to run instead when the maintenance DAG does not clean (docs/deploy.md, "Metadata clean-up")."""
    if platform == "mwaa":
        return (
            "on MWAA use ASTRID_INFERENCE_DB_CLEAN=mwaa with ASTRID_INFERENCE_MWAA_ENVIRONMENT=<environment> "
            "(the execution role needs airflow:CreateCliToken), or run `airflow db clean` through the MWAA "
            "CLI endpoint yourself (aws mwaa create-cli-token)"
        )
    if platform == "astro":
        return (
            "on Astro use ASTRID_INFERENCE_DB_CLEAN=api and the Airflow connection astrid_airflow_api "
            "(password: a Deployment API token with the Deployment Admin role)"
        )
    return (
        "run `docker compose --profile cli run --rm airflow-cli` (compose), or "
        "`python -m astrid.maintenance db-clean` / `airflow db clean` where the metadata DB is reachable"
    )


def decode_mwaa_cli(payload: Mapping[str, str]) -> tuple[str, str]:
    """MWAA's ``/aws_mwaa/cli`` answer: base64 ``stdout`` and ``stderr`` → text."""

    def text(key: str) -> str:
        raw = payload.get(key) or ""
        return base64.b64decode(raw).decode("utf-8", "replace") if raw else ""

    return text("stdout"), text("stderr")


def airflow_program() -> str:
    """The ``airflow`` next to this interpreter (a venv), else the one on ``PATH``."""
    beside = Path(sys.executable).with_name("airflow")
    return str(beside) if beside.exists() else (shutil.which("airflow") or "airflow")


def run_airflow(args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([airflow_program(), *args], capture_output=True, text=True, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m astrid.maintenance db-clean [--days N] [--dry-run]``: `airflow db clean` with the
    configured retention, where the metadata DB is reachable (the compose ``airflow-cli`` service)."""
    parser = argparse.ArgumentParser(prog="python -m astrid.maintenance")
    sub = parser.add_subparsers(dest="command", required=True)
    clean = sub.add_parser("db-clean", help="airflow db clean with ASTRID_INFERENCE_LOG_RETENTION_DAYS")
    clean.add_argument("--days", type=float, default=None, help="retention (default: the configured one)")
    clean.add_argument("--dry-run", action="store_true")
    options = parser.parse_args(argv)
    if options.days is None:
        from astrid.config import load_config

        options.days = load_config().log_retention_days
    if not options.days >= 1:
        parser.error("--days must be at least 1")
    args = db_clean_args(clean_before(options.days), dry_run=options.dry_run)
    print("airflow " + " ".join(args), flush=True)
    return subprocess.call([airflow_program(), *args])


if __name__ == "__main__":
    raise SystemExit(main())
