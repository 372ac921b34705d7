"""Check that the lock (constraints.txt) installs on Python 3.12 from wheels alone. Needs PyPI.

    python scripts/check_py312_wheels.py     # `make check-py312`; CI runs it via the test suite

Astro Runtime 3.x and MWAA 3.3.1 run CPython 3.12 on Linux x86_64; the test suite runs on 3.11.
This asks pip to resolve what the images install (requirements.txt and apache-airflow at the
locked version) under constraints.txt for CPython 3.12 / manylinux x86_64, wheels only, without
installing anything (`pip install --dry-run --report`: pip fetches each wheel's metadata, not the
wheels). It fails when a pinned version has no 3.12 wheel, when 3.12 needs a package the lock does
not pin, or when 3.12 would get a different version than the lock.

Outside the lock by design: the CUDA wheels that PyPI's torch 2.13.0 (the CUDA build) pulls in on
Linux (nvidia-*, cuda-*, triton) and setuptools. The lock was made with the CPU torch, which has
none of them; torch pins most of them exactly itself. They are listed, not failed.

What this does NOT show: that the code behaves the same on 3.12 (the suite runs on 3.11), nor
anything about aarch64 (Apple silicon `astro dev`), which is not checked. docs/deploy.md says so.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from lock_requirements import read_constraints  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

PYTHON = "3.12"
# manylinux_2_17 (= manylinux2014) .. _2_34: glibc of the Debian/Ubuntu bases the images use.
TORCH_CUDA_COMPANIONS = re.compile(r"^(nvidia-.*|cuda-.*|triton|setuptools)$")
PLATFORMS = [f"manylinux_2_{v}_x86_64" for v in range(34, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]


def pip_command(report: Path, target: Path) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), "--target", str(target)]
    cmd += ["--python-version", PYTHON, "--implementation", "cp", "--abi", f"cp{PYTHON.replace('.', '')}"]
    cmd += ["--only-binary=:all:"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    airflow = read_constraints(ROOT / "constraints.txt")["apache-airflow"]
    cmd += [
        "-r",
        str(ROOT / "requirements.txt"),
        f"apache-airflow=={airflow[1]}",
        "-c",
        str(ROOT / "constraints.txt"),
    ]
    return cmd


def problems(report: dict, pins: dict[str, tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(problems, packages outside the lock that torch's CUDA wheel brings)."""
    found, companions = [], []
    resolved = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
    for name, item in sorted(resolved.items()):
        version = item["metadata"]["version"]
        url = item.get("download_info", {}).get("url", "")
        wheel = url.rsplit("/", 1)[-1]
        if name not in pins and TORCH_CUDA_COMPANIONS.match(name):
            companions.append(f"{name}=={version}")
        elif name not in pins:
            found.append(f"{name}=={version}: needed on Python {PYTHON} but not pinned in constraints.txt")
        elif Version(version).public != Version(pins[name][1]).public:
            found.append(f"{name}: Python {PYTHON} resolves {version}, the lock pins {pins[name][1]}")
        if not wheel.endswith(".whl"):
            found.append(f"{name}=={version}: no wheel ({wheel})")
        elif not re.search(r"-(py3|py2\.py3|cp3\d*|cp312)-(none|abi3|cp312)-", wheel):
            found.append(f"{name}=={version}: wheel {wheel} is not for CPython {PYTHON}")
    return found, companions


def main() -> int:
    pins = read_constraints(ROOT / "constraints.txt")
    with tempfile.TemporaryDirectory(prefix="py312-check-") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.run(pip_command(report_path, Path(tmp) / "target"), capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(
                line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Location")
            )
            print(
                f"check_py312_wheels: pip could not resolve the lock for Python {PYTHON} (needs PyPI):\n{tail[-4000:]}"
            )
            return 1
        report = json.loads(report_path.read_text())
    found, companions = problems(report, pins)
    if found:
        print(
            "check_py312_wheels: the lock does not install on Python 3.12 as pinned:\n  " + "\n  ".join(found)
        )
        return 1
    locked = len(report["install"]) - len(companions)
    print(f"check_py312_wheels: {locked} packages resolve to Python {PYTHON} wheels at the locked versions")
    print(f"  outside the lock, from torch's CUDA wheel: {', '.join(companions) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
