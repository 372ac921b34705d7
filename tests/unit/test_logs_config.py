"""ASTRID_INFERENCE_LOG_LEVEL / _LOG_ROTATION_MB / ASTRID_LOG_FILE as applied by astrid.logs.

Their effect on behaviour is in tests/dags/test_config_effects.py; this covers the edges: a bad
value names the variable (and does not break `import astrid`), re-applying never stacks handlers,
and `{pid}` gives each process its own rotating file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from astrid.errors import ConfigError
from astrid.logs import apply_logging_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def restore():
    yield
    apply_logging_config({})


def file_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger("astrid").handlers if getattr(h, "astrid_log_file", False)]


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_LOG_LEVEL='loud'"):
        apply_logging_config({"ASTRID_INFERENCE_LOG_LEVEL": "loud"})
    with pytest.raises(
        ConfigError, match="ASTRID_INFERENCE_LOG_ROTATION_MB=0 is out of range: it must be at least 1"
    ):
        apply_logging_config({"ASTRID_INFERENCE_LOG_ROTATION_MB": "0"})


def test_a_bad_value_does_not_break_importing_the_package() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import astrid, logging; print(logging.getLogger('astrid').level)"],
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins"), "ASTRID_INFERENCE_LOG_LEVEL": "loud"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "0", proc.stderr
    assert "ASTRID_INFERENCE_LOG_LEVEL='loud'" in proc.stderr, "the problem is reported, not swallowed"


def test_level_applies_only_when_set() -> None:
    apply_logging_config({"ASTRID_INFERENCE_LOG_LEVEL": "debug"})
    assert logging.getLogger("astrid").level == logging.DEBUG
    apply_logging_config({})
    assert logging.getLogger("astrid").level == logging.NOTSET, "unset: the host's logging decides"


def test_log_file_per_process_rotates_and_is_never_stacked(tmp_path: Path) -> None:
    env = {
        "ASTRID_LOG_FILE": str(tmp_path / "logs" / "astrid-{pid}.jsonl"),
        "ASTRID_INFERENCE_LOG_ROTATION_MB": "2",
    }
    apply_logging_config(env)
    apply_logging_config(env)
    (handler,) = file_handlers()
    assert handler.maxBytes == 2 * 1024 * 1024 and handler.backupCount >= 1
    assert Path(handler.baseFilename).name == f"astrid-{os.getpid()}.jsonl"
    apply_logging_config({})
    assert not file_handlers()
