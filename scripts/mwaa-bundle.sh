#!/usr/bin/env bash
# Build the Amazon MWAA upload set (`make mwaa-bundle`):
#
#   $MWAA_BUNDLE_DIR/            (default: ./mwaa-bundle)
#     dags/                      dags/*.py + dags/.airflowignore        -> s3://<bucket>/dags/
#     plugins.zip                astrid/ package + include/ assets     -> s3://<bucket>/plugins.zip
#     requirements.txt           --constraint line for Airflow 3.3.1 / Python 3.12, then name==version
#     startup.sh                 mwaa/startup.sh (executable)          -> s3://<bucket>/startup.sh
#
# plugins.zip carries include/models (U-Net weights + model card) and include/expectations next to
# the package, so code and the model it was tested with change together (one S3 object version);
# mwaa/startup.sh points the package at them. The zip is reproducible (sorted entries, fixed
# timestamps): rebuilding unchanged sources gives identical bytes, so MWAA only restarts for real
# changes. Optional: MWAA_WHEELHOUSE=<dir of .whl files> ships those wheels inside plugins.zip
# (e.g. a CPU-only torch wheel) and adds a --find-links line for them. docs/deploy.md has the rest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${MWAA_BUNDLE_DIR:-${ROOT}/mwaa-bundle}"
WHEELHOUSE="${MWAA_WHEELHOUSE:-}"
if [[ -n "${PYTHON:-}" ]]; then
  PY="${PYTHON}"
elif [[ -x "${ROOT}/.venv/bin/python" ]]; then
  PY="${ROOT}/.venv/bin/python"
else
  PY="python3"
fi

MWAA_AIRFLOW_VERSION="3.3.1"
MWAA_PYTHON_VERSION="3.12"

die() { echo "mwaa-bundle: $*" >&2; exit 1; }

[[ -f "${ROOT}/mwaa/requirements.txt" ]] || die "missing mwaa/requirements.txt"
[[ -f "${ROOT}/mwaa/startup.sh" ]] || die "missing mwaa/startup.sh"
[[ -f "${ROOT}/plugins/astrid/__init__.py" ]] || die "missing plugins/astrid/__init__.py"
compgen -G "${ROOT}/dags/*.py" >/dev/null || die "no DAG files in dags/"
if [[ -n "${WHEELHOUSE}" ]]; then
  [[ -d "${WHEELHOUSE}" ]] || die "MWAA_WHEELHOUSE=${WHEELHOUSE} is not a directory"
  compgen -G "${WHEELHOUSE}/*.whl" >/dev/null || die "no .whl files in MWAA_WHEELHOUSE=${WHEELHOUSE}"
fi

mkdir -p "${OUT}"
OUT="$(cd "${OUT}" && pwd)"
# Replace only what this script writes; never wipe a directory the caller pointed us at.
rm -rf "${OUT}/dags" "${OUT}/plugins.zip" "${OUT}/requirements.txt" "${OUT}/startup.sh"
mkdir -p "${OUT}/dags"

# --- dags/ -------------------------------------------------------------------------------------
cp "${ROOT}"/dags/*.py "${OUT}/dags/"
if [[ -f "${ROOT}/dags/.airflowignore" ]]; then
  cp "${ROOT}/dags/.airflowignore" "${OUT}/dags/"
fi

# --- startup.sh --------------------------------------------------------------------------------
install -m 0755 "${ROOT}/mwaa/startup.sh" "${OUT}/startup.sh"

# --- requirements.txt + plugins.zip ------------------------------------------------------------
"${PY}" - "${ROOT}" "${OUT}" "${MWAA_AIRFLOW_VERSION}" "${MWAA_PYTHON_VERSION}" "${WHEELHOUSE}" <<'PY'
import re
import sys
import zipfile
from pathlib import Path

root, out, airflow_version, python_version, wheelhouse = sys.argv[1:6]
root, out = Path(root), Path(out)

# requirements.txt: checked, not trusted. MWAA forces its own constraints when the file has no
# --constraint line, and an unpinned line can resolve differently on every worker start.
constraint_re = re.compile(
    r'^--constraint "?https://raw\.githubusercontent\.com/apache/airflow/constraints-'
    + re.escape(airflow_version) + r"/constraints-" + re.escape(python_version) + r'\.txt"?$'
)
pin_re = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
lines = [ln.strip() for ln in (root / "mwaa" / "requirements.txt").read_text().splitlines()]
lines = [ln for ln in lines if ln and not ln.startswith("#")]
if not lines or not constraint_re.match(lines[0]):
    sys.exit(f"mwaa/requirements.txt must start with the --constraint line for Airflow "
             f"{airflow_version} / Python {python_version}; found {lines[:1]}")
bad = [ln for ln in lines[1:] if not pin_re.match(ln)]
if bad:
    sys.exit(f"mwaa/requirements.txt: every requirement must be pinned with ==; not: {bad}")

wheels = sorted(Path(wheelhouse).glob("*.whl")) if wheelhouse else []
if wheels:
    lines.insert(1, "--find-links /usr/local/airflow/plugins/wheels")
    for wheel in wheels:  # pin the shipped build exactly (e.g. torch==2.13.0+cpu)
        dist, version = wheel.name.split("-")[:2]
        name = dist.replace("_", "-").lower()
        for i, ln in enumerate(lines):
            if "==" in ln and ln.split("==")[0].replace("_", "-").lower() == name:
                lines[i] = f"{ln.split('==')[0]}=={version}"
(out / "requirements.txt").write_text("\n".join(lines) + "\n")

# plugins.zip
EPOCH = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def files_under(base: Path):
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if path.is_dir() or any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.suffix in SKIP_SUFFIXES or path.name.startswith(".DS_Store"):
            continue
        yield path


entries: dict[str, bytes] = {}
package = root / "plugins" / "astrid"
for path in files_under(package):
    entries[f"astrid/{path.relative_to(package).as_posix()}"] = path.read_bytes()
for asset in ("models", "expectations"):
    base = root / "include" / asset
    if not base.is_dir() or not any(files_under(base)):
        print(f"mwaa-bundle: warning: include/{asset} is empty; not shipped", file=sys.stderr)
        continue
    for path in files_under(base):
        entries[f"include/{asset}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
for wheel in wheels:
    entries[f"wheels/{wheel.name}"] = wheel.read_bytes()

# Airflow imports EVERY .py file under the plugins folder as a top-level module while looking for
# plugins. Only the modules that define an AirflowPlugin should be loaded that way; the rest of
# the package is imported normally (plugins/ is on sys.path).
plugin_modules = sorted(
    name for name, data in entries.items()
    if name.endswith(".py") and re.search(rb"class\s+\w+\s*\(\s*AirflowPlugin\s*\)", data)
)
ignore = [
    "# Generated by scripts/mwaa-bundle.sh (glob syntax). Airflow loads every .py file under",
    "# plugins/ as a module while looking for plugins: keep that to the AirflowPlugin modules.",
    "astrid/**/*.py",
    *(f"!{name}" for name in plugin_modules),
    "include/",
    "wheels/",
]
entries[".airflowignore"] = ("\n".join(ignore) + "\n").encode()
if not plugin_modules:
    print("mwaa-bundle: warning: no AirflowPlugin class found in plugins/astrid", file=sys.stderr)

with zipfile.ZipFile(out / "plugins.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for name in sorted(entries):
        info = zipfile.ZipInfo(name, date_time=EPOCH)
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, entries[name])
print(f"plugins.zip: {len(entries)} files ({len(plugin_modules)} plugin module(s): "
      f"{', '.join(plugin_modules) or 'none'})")
PY

echo "MWAA bundle (Airflow ${MWAA_AIRFLOW_VERSION}, Python ${MWAA_PYTHON_VERSION}) in ${OUT}:"
(cd "${OUT}" && find . -maxdepth 2 -type f | sort | sed 's|^\./|  |')
cat <<EOF
Upload (versioned bucket), then point the environment at the new object versions:
  aws s3 sync --delete "${OUT}/dags" "s3://\$MWAA_BUCKET/dags"
  aws s3 cp "${OUT}/plugins.zip" "s3://\$MWAA_BUCKET/plugins.zip"
  aws s3 cp "${OUT}/requirements.txt" "s3://\$MWAA_BUCKET/requirements.txt"
  aws s3 cp "${OUT}/startup.sh" "s3://\$MWAA_BUCKET/startup.sh"
EOF
