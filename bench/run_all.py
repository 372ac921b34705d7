"""``make bench``: every benchmark in turn, each writing its section of docs/benchmarks.md.

The quick ones first (DAG parse, vetting, inference), then the ones that start a real
``airflow standalone`` (end to end, the simulated-day load test). A failing benchmark stops the
run with its exit status; the sections already written stay.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ("dag_parse.py", "vetting.py", "inference.py", "e2e.py", "load.py")


def main() -> int:
    for script in ORDER:
        print(f"== bench/{script} --write", flush=True)
        rc = subprocess.call([sys.executable, str(BENCH / script), "--write"], cwd=BENCH.parent)
        if rc:
            print(f"bench/{script} failed with exit status {rc}", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
