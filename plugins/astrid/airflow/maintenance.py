"""Housekeeping operators: metadata DB clean-up and task-log retention (the maintenance DAG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator


class DbCleanOperator(BaseOperator):
    """`airflow db clean` for metadata rows older than the retention (archive tables dropped)."""

    template_fields: Sequence[str] = ("retention_days",)

    def __init__(self, *, retention_days: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days = retention_days

    def execute(self, context: Any) -> str:
        import subprocess
        import sys
        from datetime import UTC, datetime, timedelta
        from pathlib import Path

        before = (datetime.now(UTC) - timedelta(days=float(self.retention_days))).isoformat()
        airflow = Path(sys.executable).with_name("airflow")
        command = [
            str(airflow) if airflow.exists() else "airflow",
            "db",
            "clean",
            "--clean-before-timestamp",
            before,
            "--skip-archive",
            "--yes",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        self.log.info("%s\n%s", " ".join(command), done.stdout[-4000:])
        if done.returncode != 0:
            raise RuntimeError(f"airflow db clean failed ({done.returncode}): {done.stderr[-2000:]}")
        return before


class PruneTaskLogsOperator(BaseOperator):
    """Delete local task log files older than the retention (see :func:`astrid.maintenance.prune_logs`)."""

    template_fields: Sequence[str] = ("retention_days", "log_folder")

    def __init__(self, *, retention_days: int | str, log_folder: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days, self.log_folder = retention_days, log_folder

    def execute(self, context: Any) -> dict[str, int]:
        from dataclasses import asdict
        from pathlib import Path

        from airflow.sdk.configuration import conf

        from astrid.logs import log_event
        from astrid.maintenance import prune_logs

        folder = Path(self.log_folder or conf.get("logging", "base_log_folder"))
        report = prune_logs(folder, float(self.retention_days))
        log_event("maintenance.prune_logs", run_id=context["run_id"], folder=str(folder), **asdict(report))
        return asdict(report)
