"""deploy/helm/: values for the official Apache Airflow Helm chart, checked without a cluster.

The values are validated with jsonschema against the chart's published values.schema.json
(chart 1.21.0, vendored in tests/fixtures/ with a .SOURCE note), which is what `helm install`
itself checks. The chart is not rendered here: no helm binary is installable on this machine
(neither Debian nor PyPI ships it), so the templates' output (pods, the GPU worker set's
resources) is not verified; docs/deploy.md says so. What the schema cannot see (it accepts any
object as a worker set) is checked directly against what the DAGs and compose use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from astrid.config import InferenceSchedulingConfig

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "tests" / "fixtures" / "airflow-chart-values.schema.json"
VALUES = REPO / "deploy" / "helm" / "values.yaml"
STATSD_VALUES = REPO / "deploy" / "helm" / "values-statsd-mappings.yaml"
MAPPING = REPO / "include" / "monitoring" / "statsd-exporter" / "mapping.yml"
REQUIRED_CONNECTIONS = {"astrid_catalog", "astrid_storage", "mlflow_default", "smtp_default"}
CONFIG = InferenceSchedulingConfig()


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def merged(*docs: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of several -f files: maps merge, everything else is replaced."""
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def test_schema_fixture_is_the_recorded_one() -> None:
    note = (REPO / "tests" / "fixtures" / "airflow-chart-values.schema.json.SOURCE").read_text()
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() in note, "schema changed: update its .SOURCE"
    assert "version 1.21.0" in note and "b90710803a45d015a221b6045295d0dc9ddb964f" in note
    assert "chart 1.21.0" in VALUES.read_text(), "values.yaml names the chart version it was validated for"


def test_values_validate_against_the_chart_schema(validator, values) -> None:
    statsd = yaml.safe_load(STATSD_VALUES.read_text())
    assert not errors(validator, values)
    assert not errors(validator, merged(values, statsd)), "the two -f files together"


@pytest.mark.parametrize(
    ("path", "bad", "message"),
    [
        (("workers", "replica"), 2, "Additional properties are not allowed ('replica' was unexpected)"),
        (("scheduler", "extraInitContainer"), [], "Additional properties are not allowed"),
        (("executor",), "celery", "does not match"),
        (("statsd", "enabled"), "yes", "is not of type 'boolean'"),
        (("createUserJob", "enabled"), "false", "is not of type 'boolean'"),
    ],
)
def test_schema_check_has_teeth(validator, values, path: tuple[str, ...], bad: Any, message: str) -> None:
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    assert any(message in e for e in errors(validator, broken)), errors(validator, broken)


def test_airflow_version_and_image_match_what_ci_tests(values) -> None:
    locked = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.M).group(
        1
    )
    assert values["airflowVersion"] == locked
    assert values["defaultAirflowTag"].startswith(f"{locked}-"), "the tag says which Airflow it carries"
    inference = (REPO / "Dockerfile.inference").read_text()
    assert re.search(rf"AIRFLOW_HOME={re.escape(values['airflowHome'])}\b", inference), (
        "airflowHome = the image's"
    )
    assert values["dags"]["gitSync"]["enabled"] is False and values["dags"]["persistence"]["enabled"] is False
    assert "COPY --chown=airflow:0 dags/" in inference, "DAGs are in the image, as the values assume"


def test_gpu_queue_runs_on_gpu_nodes(values) -> None:
    assert values["executor"] == "CeleryExecutor"
    celery = values["workers"]["celery"]
    assert celery["queue"] == "default"
    (gpu,) = [s for s in celery["sets"] if s["queue"] == CONFIG.gpu_queue]
    assert int(gpu["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert gpu["nodeSelector"], "GPU pods go to GPU nodes"
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["ASTRID_INFERENCE_GPU_QUEUE"] == gpu["queue"]
    InferenceSchedulingConfig.from_env(env)  # every value there is valid


def test_scheduler_creates_the_gpu_pool(values) -> None:
    (init,) = values["scheduler"]["extraInitContainers"]
    pool = {e["name"]: e["value"] for e in values["env"]}["ASTRID_INFERENCE_GPU_POOL"]
    assert init["command"][:4] == ["airflow", "pools", "set", pool] and int(init["command"][4]) >= 1
    (db,) = init["env"]
    assert db["name"] == "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
    assert db["valueFrom"]["secretKeyRef"]["name"] == values["data"]["metadataSecretName"]


def test_connections_and_credentials_come_from_secrets(values) -> None:
    from_secrets = {s["envName"].removeprefix("AIRFLOW_CONN_").lower() for s in values["secret"]}
    assert from_secrets >= REQUIRED_CONNECTIONS
    assert all(s["secretName"] and s["secretKey"] for s in values["secret"])
    assert "optional: true" in values["extraEnvFrom"], "slack/aws connections are optional"
    assert values["data"]["metadataSecretName"] and "metadataConnection" not in values["data"]
    assert values["postgresql"]["enabled"] is False, "no bundled DB with its default password"
    assert values["createUserJob"]["enabled"] is False, "no admin/admin user"
    for key in ("fernetKey", "jwtSecret", "apiSecretKey", "webserverSecretKey"):
        assert key not in values, f"{key}: leave it to the chart (generated per install) or a Secret"
    text = VALUES.read_text().lower()
    assert not re.search(r"^\s*(pass|password|secret_key|fernet_key)\s*:", text, flags=re.M)


def test_statsd_goes_to_the_exporter_with_our_mapping(values) -> None:
    assert values["statsd"]["enabled"] is True
    assert values["config"]["metrics"]["statsd_prefix"] == "airflow", "the prefix our mapping matches"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "helm_statsd_mappings.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    ours = yaml.safe_load(MAPPING.read_text())
    generated = yaml.safe_load(STATSD_VALUES.read_text())["statsd"]["overrideMappings"]
    assert len(generated) == len(ours["mappings"])
    defaults = ours["defaults"]
    for original, copied in zip(ours["mappings"], generated, strict=True):
        assert {k: copied[k] for k in original} == original, "every mapping field is carried over"
        observer = original.get("action") != "drop" and original.get("match_metric_type") in (
            None,
            "observer",
        )
        if observer:
            assert copied.get("observer_type", "") == original.get("observer_type", defaults["observer_type"])
            assert copied.get("histogram_options") == original.get(
                "histogram_options", defaults["histogram_options"]
            )


def test_statsd_generator_refuses_defaults_it_cannot_carry(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import helm_statsd_mappings
    finally:
        sys.path.remove(str(REPO / "scripts"))
    source = tmp_path / "mapping.yml"
    source.write_text("defaults:\n  glob_disable_ordering: true\nmappings: []\n")
    with pytest.raises(ValueError, match="glob_disable_ordering cannot be expressed"):
        helm_statsd_mappings.render(source)
    source.write_text("defaults:\n  parse_dogstatsd_tags: false\nmappings: []\n")
    with pytest.raises(ValueError, match="no per-mapping equivalent"):
        helm_statsd_mappings.render(source)
