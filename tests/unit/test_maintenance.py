"""Log retention: old files go, recent ones stay, emptied folders are removed."""

from __future__ import annotations

import os
import time

from astrid.maintenance import prune_logs


def _touch(path, age_days: float, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - age_days * 86400
    os.utime(path, (t, t))


def test_prune_logs_applies_retention(tmp_path):
    old = tmp_path / "dag_id=a" / "run_id=old" / "task_id=t" / "attempt=1.log"
    recent = tmp_path / "dag_id=a" / "run_id=new" / "task_id=t" / "attempt=1.log"
    _touch(old, 31, size=100)
    _touch(recent, 29)
    report = prune_logs(tmp_path, 30)
    assert not old.exists() and recent.exists()
    assert report.files_removed == 1 and report.bytes_removed == 100
    assert not (tmp_path / "dag_id=a" / "run_id=old").exists()
    assert report.dirs_removed == 2  # task_id=t and run_id=old
    assert tmp_path.exists()


def test_dry_run_and_missing_root(tmp_path):
    old = tmp_path / "x.log"
    _touch(old, 100)
    assert prune_logs(tmp_path, 30, dry_run=True).files_removed == 1
    assert old.exists()
    assert prune_logs(tmp_path / "missing", 30).files_removed == 0
