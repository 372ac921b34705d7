"""Security: secrets only from connections/env/secrets backends and never in the repo or the logs;
models loaded without pickle; FITS reads bounded before anything is read; registry and catalog
errors that never print a password.

API input validation and authentication of the status API are tested in
tests/unit/test_status_api.py and tests/integration/test_plugin_browser.py (docs/reliability.md).
"""

from __future__ import annotations

import json
import pickle
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Secrets never in the logs (a real run under airflow standalone)


@pytest.mark.standalone
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_connection_passwords_never_reach_logs_metadata_or_emails(secret_standalone, killed_and_cleared_run):
    """The standalone got every secret from ``AIRFLOW_CONN_*`` connections: the PostgreSQL catalog's
    password (with '/', '@' and ':' in it), the SMTP password (the sink *requires* AUTH), an AWS
    secret key. After a realtime run with a killed and retried task, a cleared re-run and an SLA
    email sent through SMTP AUTH, none of the passwords (nor their URL-quoted forms) appears in
    any task, scheduler, triggerer or dag-processor log, in standalone's stdout, in the Airflow
    metadata DB, the MLflow store, or the email."""
    instance = secret_standalone["instance"]
    sink = secret_standalone["sink"]
    assert killed_and_cleared_run["first"]["run"]["state"] == "success"  # the catalog password worked
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not sink.messages:
        time.sleep(1)
    assert sink.messages, f"no SLA email arrived; auth attempts {sink.auth}: {instance.log_tail()}"
    assert sink.auth and all(sink.auth), sink.auth  # the SMTP password from the connection was used
    assert "SLA missed: astrid_realtime_inference" in sink.messages[0]["Subject"]

    files = [p for p in (instance.home / "logs").rglob("*") if p.is_file()]
    task_logs = [p for p in files if "task_id=infer" in str(p)]
    assert len(task_logs) >= 2, files  # the killed try and its retry (and the cleared re-run) logged
    files += [instance.home / "standalone.log", instance.home / "airflow.db", instance.home / "mlflow.db"]
    blobs = {str(p): p.read_bytes() for p in files if p.exists()}
    blobs["email"] = b"\n".join(m.as_bytes() for m in sink.messages)
    assert sum(len(b) for b in blobs.values()) > 100_000  # there is something to search
    for name, password in secret_standalone["passwords"].items():
        needles = {password.encode()}
        for blob_name, blob in blobs.items():
            for needle in needles:
                assert needle not in blob, f"{name} password found in {blob_name}"
    assert b"task_id=infer" in b"".join(str(p).encode() for p in task_logs)


# ----------------------------------------------------------------------------------------------
# Secrets never in the repository

PLACEHOLDERS = {
    "airflow",
    "admin",
    "minio",
    "minio-secret",
    "changeme",
    "change-me",
    "example",
    "postgres",
    "password",
    "secret",
    "xxxx",
    "t000/b000/xxxx",
    "",
}
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?([A-Za-z0-9/+]{40})\b", re.I),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "Slack token or webhook": re.compile(
        r"\bxox[abpr]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{20,}"
    ),
    "Fernet key": re.compile(r"FERNET_KEY\s*[=:]\s*['\"]?[A-Za-z0-9_-]{43}="),
}
PASSWORD_ASSIGNMENT = re.compile(
    r"(?:password|passwd|secret|token|api_key)[\"']?\s*[=:]\s*[\"']([^\"'\s$]{4,})[\"']", re.I
)
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^:/\s@\"']+:([^@/\s\"'$]+)@", re.I)
# documented stand-ins (AWS's own example key id, the JWT/API secrets .env.example tells you to change)
ALLOWED = {"AKIAIOSFODNN7EXAMPLE", "astrid-local-jwt-secret-change-me", "astrid-local-api-secret-change-me"}
# fake credentials that tests need as literals, per file
ALLOWED_IN = {
    "tests/conftest.py": {"testing"},  # moto's conventional dummy AWS credentials
    "tests/unit/test_imaging_storage.py": {"testing"},
    "tests/unit/test_db_clean.py": {"testing"},  # dummy AWS credentials for a local fake MWAA
    "tests/unit/test_config.py": {"hunter2"},  # a fake password the test checks is redacted
    "tests/unit/test_status_api.py": {"s3cret"},  # a fake password the test checks is redacted
}


def _allowed(value: str, path: str = "") -> bool:
    v = value.strip().lower()
    return (
        value in ALLOWED
        or value in ALLOWED_IN.get(path, ())
        or v in PLACEHOLDERS
        or v.startswith(("${", "<", "{", "%("))
        or "change-me" in v
    )


def test_no_secrets_committed():
    """Every tracked text file: no private keys, cloud keys or tokens, no literal passwords in
    assignments or URLs beyond the documented local-development placeholders (``airflow``,
    ``minio-secret``, ``${VAR:-default}`` ...). Tests' own throw-away passwords are generated at
    run time, never committed."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    findings = []
    for rel in filter(None, files.decode().split("\0")):
        path = REPO / rel
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary (weights, images)
        text = data.decode("utf-8", "replace")
        for what, pattern in SECRET_PATTERNS.items():
            for m in pattern.finditer(text):
                if m.group(0) not in ALLOWED:
                    findings.append(f"{rel}: {what}: {m.group(0)[:24]}…")
        for pattern in (PASSWORD_ASSIGNMENT, URL_CREDENTIALS):
            for m in pattern.finditer(text):
                if not _allowed(m.group(1), rel):
                    findings.append(f"{rel}: {m.group(0)[:60]!r}")
    assert not findings, "possible secrets committed:\n" + "\n".join(findings)


def test_the_secret_scan_finds_what_it_looks_for():
    """The scanner is not vacuous: planted examples of each kind are found."""
    planted = [
        "-----BEGIN RSA " + "PRIVATE KEY-----",
        "AKIA" + "Z7Q2WXYV3ABCDEFG",
        "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"[::-1],
        'password: "' + "hunter2-prod" + '"',
        "postgresql://astrid:" + "Tr0ub4dor" + "@db:5432/astrid",
    ]
    for text in planted:
        hit = any(p.search(text) for p in SECRET_PATTERNS.values()) or any(
            not _allowed(m.group(1)) for p in (PASSWORD_ASSIGNMENT, URL_CREDENTIALS) for m in p.finditer(text)
        )
        assert hit, text


# ----------------------------------------------------------------------------------------------
# Error messages never print a password


def test_registry_and_catalog_errors_never_print_the_password(tmp_path):
    """An unreachable registry URI with credentials, a catalog URL with a password that cannot
    connect, and a catalog connection password with URL-special characters: the errors and reprs
    name the host, never the password; the special characters cannot turn into a host name."""
    import sqlalchemy as sa

    from astrid.catalog import Catalog
    from astrid.errors import ModelError
    from astrid.registry import ModelRegistry
    from tests.integration.standalone import free_port

    port, password = free_port(), "s3cr3t-" + secrets.token_hex(6)  # generated: nothing committed
    with pytest.raises(ModelError, match=rf"127\.0\.0\.1:{port} is unreachable") as info:
        ModelRegistry(f"http://mlflow-user:{password}@127.0.0.1:{port}")
    assert password not in str(info.value) and "mlflow-user" not in str(info.value)

    catalog = Catalog(f"postgresql+psycopg2://postgres:{password}@127.0.0.1:1/astrid")
    assert password not in repr(catalog)
    with pytest.raises(sa.exc.OperationalError) as failed:
        catalog.migrate()
    assert password not in str(failed.value)
    catalog.dispose()

    from unittest import mock

    from astrid.airflow.hooks import CatalogHook

    special = password + "/@:#?"
    conn = mock.Mock(
        conn_type="postgres",
        login="astrid",
        password=special,
        host="db.internal",
        port=5432,
        schema="astrid",
        extra_dejson={},
    )
    with mock.patch(
        "astrid.airflow.hooks.connection_or_none", return_value=conn
    ):  # stands in for the Connection lookup
        url = sa.make_url(CatalogHook().url)
    assert (url.host, url.username, url.password, url.database) == (
        "db.internal",
        "astrid",
        special,
        "astrid",
    )


# ----------------------------------------------------------------------------------------------
# Models are loaded without pickle


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_model(directory: Path, blob: bytes) -> Path:
    """A model directory whose weights file is ``blob`` and whose card matches it (sha256 included):
    the attacker controls both files."""
    import hashlib

    from astrid.paths import shipped_model_path

    shutil.copytree(shipped_model_path(), directory)
    (directory / "model.safetensors").write_bytes(blob)
    card = json.loads((directory / "model_card.json").read_text())
    card["sha256"] = hashlib.sha256(blob).hexdigest()
    (directory / "model_card.json").write_text(json.dumps(card))
    return directory


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickle_disguised_as_safetensors_is_refused_without_running_code(tmp_path, kind):
    """A ``model.safetensors`` that is really a pickle (or a ``torch.save`` archive, which is a
    pickle in a zip) with a matching card: ``load_model`` and ``ModelRegistry.register`` refuse it
    with ModelError and the payload never runs. The payload is live: unpickling it in a throwaway
    child process does create the marker."""
    import torch

    from astrid.errors import ModelError
    from astrid.ml.weights import load_model
    from astrid.registry import ModelRegistry

    marker = tmp_path / f"pwned-{kind.replace('.', '-')}"
    if kind == "pickle":
        blob = pickle.dumps({"weight": _Payload(str(marker))})
    else:
        path = tmp_path / "evil.pt"
        torch.save({"weight": _Payload(str(marker))}, path)
        blob = path.read_bytes()
    model = _evil_model(tmp_path / "evil-model", blob)

    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_model(model)
    registry = ModelRegistry(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    with pytest.raises(ModelError):
        registry.register(model, alias="champion")
    assert registry.alias_version("champion") is None
    assert not marker.exists()

    # the payload is real: a process that *does* unpickle it runs the code
    probe = tmp_path / "probe.bin"
    if kind == "pickle":
        probe.write_bytes(blob)
        loader = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    else:
        shutil.copy(tmp_path / "evil.pt", probe)
        loader = "import torch, sys; torch.load(sys.argv[1], weights_only=False)"
    subprocess.run(
        [sys.executable, "-c", loader, str(probe)],
        cwd=Path(__file__).parent,
        check=False,
        capture_output=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert marker.exists()


def test_no_code_path_deserialises_pickles():
    """No pickle-based loader anywhere in the shipped code: torch.load, pickle/cloudpickle/dill/
    joblib loads, numpy allow_pickle, mlflow pyfunc/pytorch model loading."""
    forbidden = re.compile(
        r"torch\.load\(|pickle\.loads?\(|cloudpickle|\bdill\b|joblib\.load|allow_pickle\s*=\s*True"
        r"|mlflow\.(?:pyfunc|pytorch)\.load_model|pandas\.read_pickle|\.read_pickle\("
    )
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for root in ("plugins", "dags", "include")
        for p in (REPO / root).rglob("*.py")
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if forbidden.search(line)
    ]
    assert hits == []


# ----------------------------------------------------------------------------------------------
# FITS reads are bounded


def test_fits_reads_are_bounded_before_anything_is_read(tmp_path):
    """Hostile FITS files cost a ``stat`` and a header, never memory: a 2 880-byte file declaring
    a 200 000 × 200 000 float64 image (320 GB), the same header gzip-compressed, and a sparse 64 GiB
    file are refused with FitsError naming the file and the limit, with under 20 MB allocated."""
    import gzip
    import tracemalloc

    import numpy as np
    from astropy.io import fits

    from astrid.errors import FitsError
    from astrid.imaging.fits import load_triplet, write_image

    good = tmp_path / "good.fits"
    write_image(good, np.ones((64, 64), dtype=np.float32))
    header = fits.Header()
    header.update(SIMPLE=True, BITPIX=-64, NAXIS=2, NAXIS1=200_000, NAXIS2=200_000)
    huge = tmp_path / "declared-huge.fits"
    huge.write_bytes(header.tostring().encode())
    huge_gz = tmp_path / "declared-huge.fits.gz"
    huge_gz.write_bytes(gzip.compress(header.tostring().encode() + bytes(2880 * 10)))
    sparse = tmp_path / "sparse.fits"
    with sparse.open("wb") as fh:
        fh.write(header.tostring().encode())
        fh.truncate(64 * 2**30)  # 64 GiB apparent size, no disk used

    cases = [
        (huge, "larger than max_side=8192"),
        (huge_gz, "larger than max_side=8192"),
        (sparse, "more than a 8192×8192 frame can need"),
    ]
    for path, message in cases:
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(FitsError) as info:
            load_triplet(path, good, max_side=8192)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert message in str(info.value) and path.name in str(info.value), str(info.value)
        assert peak < 20 * 2**20, (path.name, peak)
        assert time.perf_counter() - started < 5
