"""requirements.txt is the lock's exact pins (generated), and the lock installs on Python 3.12.

The Astro Runtime image installs requirements.txt at build with no constraints file, so every line
must be an exact pin, equal to constraints.txt (what CI installs). scripts/lock_requirements.py
generates it from requirements.in; these tests run that script for real, on the repository and on
copies with a planted drift. The Python 3.12 check asks PyPI (pip's resolver, metadata only) and
is marked `network`: SKIP_NETWORK_TESTS=1 skips it on a machine without PyPI, and it says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCK_SCRIPT = REPO / "scripts" / "lock_requirements.py"
AIRFLOW_ITSELF = {"apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            found[canonical(name)] = version
    return found


def run_lock(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "lock_requirements.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The files the lock script reads and writes, in a throwaway project."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(LOCK_SCRIPT, tmp_path / "scripts")
    for name in ("requirements.in", "requirements.txt", "constraints.txt"):
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def test_requirements_txt_is_current() -> None:
    proc = run_lock(REPO, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_line_is_an_exact_pin_equal_to_the_lock() -> None:
    lines = [
        ln for ln in (REPO / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*", ln) for ln in lines), lines
    required, locked = pins(REPO / "requirements.txt"), pins(REPO / "constraints.txt")
    assert len(required) == len(lines), "a package appears twice"
    for name, version in required.items():
        assert locked.get(name) == version, f"{name}=={version} differs from constraints.txt"
    direct = [
        canonical(ln.strip())
        for ln in (REPO / "requirements.in").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert set(direct) <= set(required), "every direct dependency is pinned"
    assert required["torch"] == "2.13.0"
    assert not AIRFLOW_ITSELF & set(required), "Airflow itself comes with the Runtime image"
    # what they pull in is pinned too, not left to the day of the build
    assert {"boto3", "numpy", "pandas", "fsspec"} <= set(required)


def test_setup_installs_torch_first_then_the_pinned_files() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1).splitlines()
    assert '"torch==2.13.0"' in recipe[1], "torch first, pinned, so nothing pulls a multi-GB CUDA build"
    assert "-r requirements-dev.txt -c constraints.txt" in recipe[2]
    assert "-r requirements.txt" in (REPO / "requirements-dev.txt").read_text().splitlines()
    assert re.search(
        r"^requirements: .*\n\t\$\(BIN\)/python scripts/lock_requirements.py$", makefile, flags=re.M
    )


def test_a_new_dependency_without_regenerating_is_drift(project_copy: Path) -> None:
    with (project_copy / "requirements.in").open("a") as fh:
        fh.write("redis\n")  # installed and locked (a dev dependency), not in requirements.txt
    proc = run_lock(project_copy, "--check")
    assert proc.returncode == 1
    assert "requirements.txt is stale: run `make requirements`" in proc.stderr and "+redis==" in proc.stderr
    assert run_lock(project_copy).returncode == 0, "regenerating fixes it"
    assert run_lock(project_copy, "--check").returncode == 0
    assert pins(project_copy / "requirements.txt")["redis"] == pins(REPO / "constraints.txt")["redis"]


def test_a_hand_edit_of_requirements_txt_is_drift(project_copy: Path) -> None:
    text = (project_copy / "requirements.txt").read_text()
    (project_copy / "requirements.txt").write_text(text.replace("mlflow==", "mlflow>=", 1))
    proc = run_lock(project_copy, "--check")
    assert proc.returncode == 1 and "-mlflow>=" in proc.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("requirements.in", "mlflow>=3\n"), "names only here; versions go in constraints.txt"),
        (("constraints.txt", None), "is not pinned in constraints.txt: add name==version"),
        (("constraints.txt", "mlflow==0.1.0"), "mlflow: installed 3.17.2 but constraints.txt pins 0.1.0"),
    ],
)
def test_inconsistent_inputs_are_refused_with_the_fix(project_copy: Path, edit: tuple, message: str) -> None:
    name, change = edit
    path = project_copy / name
    if name == "requirements.in":
        path.write_text(path.read_text() + change)
    elif change is None:  # drop a transitive dependency's pin
        path.write_text(re.sub(r"^boto3==.*\n", "", path.read_text(), flags=re.M))
    else:
        path.write_text(re.sub(r"^mlflow==.*$", change, path.read_text(), flags=re.M))
    before = (project_copy / "requirements.txt").read_text()
    proc = run_lock(project_copy)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert (project_copy / "requirements.txt").read_text() == before, "nothing written on error"


def test_the_closure_is_the_same_on_python_311_and_312() -> None:
    """The suite's venv (3.11) installs the same set the images (3.12) get."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import lock_requirements as lock
    finally:
        sys.path.remove(str(REPO / "scripts"))
    target = dict(lock.TARGET)
    try:
        on_312 = lock.render()
        lock.TARGET.update(
            python_version="3.11", python_full_version="3.11.9", implementation_version="3.11.9"
        )
        assert lock.render() == on_312
    finally:
        lock.TARGET.clear()
        lock.TARGET.update(target)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SKIP_NETWORK_TESTS") == "1", reason="SKIP_NETWORK_TESTS=1: needs PyPI")
def test_the_lock_resolves_to_python_312_wheels() -> None:
    """Astro Runtime 3.x and MWAA 3.3.1 run Python 3.12: every pinned runtime package (and Airflow)
    must have a CPython 3.12 manylinux wheel at the locked version. Needs PyPI; on failure the
    output says whether pip could not reach it."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_py312_wheels.py")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "resolve to Python 3.12 wheels at the locked versions" in proc.stdout
