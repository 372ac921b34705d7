"""Housekeeping: apply ``log_retention_days`` to task log files (metadata rows: `airflow db clean`).

Task logs grow by a few MB a day per DAG; without retention a worker's disk fills and every task
on it fails. Remote logging (S3) has its own lifecycle rules; this prunes the local copies.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


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
