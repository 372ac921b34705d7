"""The deployment files stay runnable: compose, Dockerfiles, Astro settings and the MWAA bundle.

No Docker engine is needed: the compose file is validated against the vendored Compose
Specification schema (tests/fixtures/compose-spec.json, see its .SOURCE note) after compose-style
variable interpolation with the .env that scripts/compose-secrets.sh really generates, and
everything it points at (build contexts, bind mounts, monitoring configs, services named in
connections and depends_on) is checked against the repository. What cannot run here (pulling the
images, starting the containers) is checked statically: every image is pinned and not on the list
of images known to be gone, no secret has a default, every published port binds to 127.0.0.1
unless BIND_ADDRESS says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from astrid.config import InferenceSchedulingConfig

REPO = Path(__file__).resolve().parents[2]
COMPOSE_PATH = REPO / "docker-compose.yaml"
SCHEMA_PATH = REPO / "tests" / "fixtures" / "compose-spec.json"
BUNDLE_SCRIPT = REPO / "scripts" / "mwaa-bundle.sh"
MWAA_CONSTRAINT = re.compile(
    r'^--constraint "?https://raw\.githubusercontent\.com/apache/airflow/constraints-3\.3\.1/'
    r'constraints-3\.12\.txt"?$'
)
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")
GPU_QUEUE = getattr(InferenceSchedulingConfig(), "gpu_queue", "gpu")
GPU_POOL = getattr(InferenceSchedulingConfig(), "gpu_pool", "gpu")
# Connections the DAGs need everywhere, and the ones that are legitimately optional.
REQUIRED_CONNECTIONS = {"astrid_catalog", "astrid_storage", "mlflow_default", "smtp_default"}
# astrid_airflow_api: the maintenance DAG's db clean in api mode (Astro)
OPTIONAL_CONNECTIONS = {"slack_webhook_default", "aws_default", "astrid_airflow_api"}
# Files whose ASTRID_* names must all be known to the code.
DEPLOY_FILES = [
    "docker-compose.yaml",
    ".env.example",
    "Dockerfile",
    "Dockerfile.inference",
    "airflow_settings.yaml",
    "mwaa/startup.sh",
    "mwaa/README.md",
    "docs/deploy.md",
    "deploy/helm/values.yaml",
]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$"  # escaped dollar
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-style ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:+alt}``, ``$$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        val = env.get(name)
        if op in (":-", "-"):
            return arg if (val is None or (op == ":-" and val == "")) else val
        if op in (":+", "+"):
            return arg if (val is not None and (op == "+" or val != "")) else ""
        if op in (":?", "?"):
            if val is None or (op == ":?" and val == ""):
                raise KeyError(f"required variable {name} is not set: {arg}")
            return val
        return val or ""

    return _INTERPOLATION.sub(sub, value)


SECRETS_SCRIPT = REPO / "scripts" / "compose-secrets.sh"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped), as compose reads them."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip().strip("'\"")
    return env


def compose_secret_names() -> list[str]:
    """The secrets scripts/compose-secrets.sh manages (its SECRETS array)."""
    block = re.search(r"^SECRETS=\(\n(.*?)^\)", SECRETS_SCRIPT.read_text(), flags=re.M | re.S)
    assert block, "SECRETS=( ... ) not found in compose-secrets.sh"
    return [line.strip().split(":")[0] for line in block.group(1).splitlines() if line.strip()]


def run_secrets(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SECRETS_SCRIPT), *args],
        env={"PATH": os.environ["PATH"], **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def generated_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The .env a new user gets from `scripts/compose-secrets.sh` (run for real)."""
    path = tmp_path_factory.mktemp("compose-env") / ".env"
    proc = run_secrets("init", str(path))
    assert proc.returncode == 0, proc.stderr
    return read_env_file(path)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_PATH.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], generated_env: dict[str, str]) -> dict[str, Any]:
    """The compose model as Docker Compose sees it after `scripts/compose-secrets.sh`: the generated
    secrets, and the defaults for everything else."""
    return interpolate(raw_compose, generated_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def airflow_services(services: Mapping[str, Any]) -> list[str]:
    return sorted(name for name in services if name.startswith("airflow-"))


def environment(service: Mapping[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def one_shot_services(services: Mapping[str, Any]) -> set[str]:
    return {
        dep
        for svc in services.values()
        for dep, cond in depends_on(svc).items()
        if cond == "service_completed_successfully"
    }


def command_tokens(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def mounts(service: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Volumes in long form: {type, source, target, read_only, create_host_path}."""
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            # Docker creates a missing short-syntax bind source as an empty DIRECTORY: never wanted.
            yield {"type": kind, "source": source, "target": target, "create_host_path": False}
        else:
            yield {
                "type": vol["type"],
                "source": vol.get("source"),
                "target": vol["target"],
                "create_host_path": (vol.get("bind") or {}).get("create_host_path", False),
            }


def host_path(source: str) -> Path:
    return (REPO / source).resolve() if not source.startswith("/") else Path(source)


def container_to_host(service: Mapping[str, Any], container_path: str) -> Path | None:
    """Host path behind ``container_path`` through the service's bind mounts (None if not mounted)."""
    target = PurePosixPath(container_path)
    for m in mounts(service):
        if m["type"] != "bind":
            continue
        mount_target = PurePosixPath(m["target"])
        if target == mount_target or mount_target in target.parents:
            return host_path(m["source"]) / target.relative_to(mount_target)
    return None


def shell_script(service: Mapping[str, Any]) -> str:
    """The shell program of a ``bash -c``/``sh -c`` service (from the interpolated model, so
    compose's ``$$`` is already the shell's ``$``)."""
    cmd = service["command"]
    return cmd[-1] if isinstance(cmd, list) else cmd


def known_astrid_variables() -> set[str]:
    """ASTRID_* names the code reads: the config table plus literals in the package source."""
    names = {var for var, _, _ in InferenceSchedulingConfig.env_table()}
    for path in (REPO / "plugins" / "astrid").rglob("*.py"):
        names.update(re.findall(r"\bASTRID_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


# --------------------------------------------------------------------------------------------------
# docker-compose.yaml
# --------------------------------------------------------------------------------------------------

HELM_VALUES = REPO / "deploy" / "helm" / "values.yaml"


def helm_images() -> dict[str, str]:
    """repository:tag of every image the Helm values set (images.<name> and any nested image:)."""
    if not HELM_VALUES.exists():
        return {}
    found: dict[str, str] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("repository"), str) and "tag" in node:
                found[where] = f"{node['repository']}:{node['tag']}" if node["tag"] else node["repository"]
            if isinstance(node.get("image"), str):
                found[f"{where}.image"] = node["image"]
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    values = yaml.safe_load(HELM_VALUES.read_text())
    walk(values, "")
    found["defaultAirflow"] = f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}"
    # `{{ .Values.key }}` in templated fields (extraInitContainers) resolves against the values
    return {
        k: re.sub(r"\{\{ *\.Values\.(\w+) *\}\}", lambda m: str(values[m.group(1)]), v)
        for k, v in found.items()
    }


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message[:300]}" for e in errors)


def test_compose_schema_fixture_is_the_recorded_one() -> None:
    import hashlib

    note = (REPO / "tests" / "fixtures" / "compose-spec.json.SOURCE").read_text()
    digest = hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()
    assert digest in note, "compose-spec.json changed: update compose-spec.json.SOURCE"
    assert "compose-spec/compose-spec" in note


def test_schema_rejects_a_broken_compose_file(compose: dict[str, Any]) -> None:
    """The schema check has teeth: a typo'd key or a bad depends_on condition is an error."""
    schema = json.loads(SCHEMA_PATH.read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    broken["services"]["airflow-scheduler"]["depends_on"]["postgres"]["condition"] = "service_ready"
    messages = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert len(messages) >= 2


def interpolations() -> list[re.Match[str]]:
    return [
        m for m in _INTERPOLATION.finditer(COMPOSE_PATH.read_text().replace("$$", "")) if m.group(0) != "$$"
    ]


def test_secrets_are_required_and_everything_else_has_a_default() -> None:
    secrets = set(compose_secret_names())
    assert len(secrets) >= 8
    required = {m.group("name") for m in interpolations() if m.group("op") == ":?"}
    assert required == secrets, "exactly the generated secrets are required (no default)"
    for m in interpolations():
        name = m.group("name") or m.group("bare")
        if name in secrets:
            assert m.group("op") == ":?", f"{m.group(0)}: a secret must never have a default"
            assert "compose-secrets.sh" in m.group("arg"), f"{m.group(0)}: the error must name the script"
        else:
            assert m.group("op") in (":-", "-"), f"{m.group(0)}: no default (compose fails without .env)"


def test_compose_refuses_to_start_without_secrets(raw_compose: dict[str, Any], generated_env) -> None:
    """A default `docker compose up` with no .env (issue 13.1) stops at interpolation, naming the
    variable and the script; with every secret but one, it still stops."""
    with pytest.raises(KeyError, match=r"POSTGRES_PASSWORD is not set: run scripts/compose-secrets.sh"):
        interpolate(raw_compose, {})
    for name in compose_secret_names():
        partial = {k: v for k, v in generated_env.items() if k != name}
        with pytest.raises(KeyError, match=rf"{name} is not set"):
            interpolate(raw_compose, partial)


URL_BREAKING = "p@ss/word:with#url-chars"  # would break the connection URLs it is embedded in
SECRETISH = re.compile(r"PASSWORD|SECRET|FERNET|JWT|TOKEN|_KEY\b|WEBHOOK", re.I)


def test_no_literal_secret_defaults_anywhere_in_compose(raw_compose: dict[str, Any]) -> None:
    """No shared secret can hide in a default: no `${SECRETISH:-value}`, no literal password in an
    environment entry or connection, no credentials in a URL that are not interpolated."""
    for m in interpolations():
        name = m.group("name") or m.group("bare")
        if SECRETISH.search(name) and m.group("op") in (":-", "-"):
            assert m.group("arg") == "", f"{m.group(0)}: secret-like variable with a default"

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and SECRETISH.search(str(key)) and not str(key).endswith("_FILE"):
                    assert value.strip().startswith("${") or not value.strip(), (
                        f"{where}.{key}: literal {value!r}"
                    )
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str):
            for conn in re.findall(r'"password":\s*"([^"]*)"', node):
                assert conn.startswith("${"), f"{where}: connection password {conn!r} is a literal"
            for cred in re.findall(r"://[^:/@\s]+:([^@\s]+)@", node):
                assert cred.startswith("${"), f"{where}: URL credentials {cred!r} are a literal"

    walk(raw_compose, "compose")


def published_ports(service: Mapping[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports") or []]


def test_every_published_port_binds_to_localhost_unless_told_otherwise(raw_compose: dict[str, Any]) -> None:
    services = raw_compose["services"]
    published = {name: published_ports(svc) for name, svc in services.items() if published_ports(svc)}
    assert {"airflow-apiserver", "grafana", "mlflow", "prometheus", "alertmanager", "mailpit"} <= set(
        published
    )
    for name, ports in published.items():
        for port in ports:
            bind = "MLFLOW_BIND_ADDRESS" if name == "mlflow" else "BIND_ADDRESS"
            assert port.startswith(f"${{{bind}:-127.0.0.1}}:"), f"{name}: {port} is not bound to {bind}"
            assert interpolate(port, {}).startswith("127.0.0.1:"), f"{name}: {port}"
    assert "ports" not in services["statsd-exporter"], "StatsD is internal: nothing outside sends to it"
    # MLflow has no auth: opening the rest of the stack (BIND_ADDRESS=0.0.0.0) never opens MLflow.
    opened = interpolate(services["mlflow"]["ports"][0], {"BIND_ADDRESS": "0.0.0.0"})
    assert opened.startswith("127.0.0.1:")


def test_compose_secrets_script_generates_fresh_strong_secrets(tmp_path: Path, generated_env) -> None:
    from cryptography.fernet import Fernet

    names = compose_secret_names()
    second = tmp_path / "second.env"
    assert run_secrets("init", str(second)).returncode == 0
    other = read_env_file(second)
    values = [generated_env[name] for name in names]
    assert len(set(values)) == len(values), "two secrets share a value"
    for name in names:
        assert len(generated_env[name]) >= 16, name
        assert generated_env[name] != other[name], f"{name}: two installs got the same value"
    Fernet(generated_env["AIRFLOW_FERNET_KEY"].encode())  # a valid key, or this raises
    for name in ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        assert re.fullmatch(r"[A-Za-z0-9]+", generated_env[name]), f"{name} must be URL-safe"
    assert stat.S_IMODE(second.stat().st_mode) == 0o600
    assert other["AIRFLOW_UID"] == str(os.getuid()), "a new .env gets the user's uid"
    # The new .env is .env.example with the slots filled: every documented setting is still there.
    assert "# ASTRID_INFERENCE_DEVICE=auto" in second.read_text()
    assert ".env" in (REPO / ".gitignore").read_text().split(), ".env must never be committed"


def test_compose_secrets_script_keeps_values_and_refuses_placeholders(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("AIRFLOW_UID=1234\nPOSTGRES_PASSWORD=\nGRAFANA_ADMIN_PASSWORD=KeepThisOne1234567\n")
    env.chmod(0o644)
    proc = run_secrets("init", str(env))
    assert proc.returncode == 0, proc.stderr
    values = read_env_file(env)
    assert values["AIRFLOW_UID"] == "1234" and values["GRAFANA_ADMIN_PASSWORD"] == "KeepThisOne1234567"
    assert values["POSTGRES_PASSWORD"] and env.read_text().count("POSTGRES_PASSWORD=") == 1
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert values["GRAFANA_ADMIN_PASSWORD"] not in proc.stdout + proc.stderr, "values are never printed"
    before = env.read_text()
    assert run_secrets("init", str(env)).returncode == 0 and env.read_text() == before, (
        "re-running changes nothing"
    )

    # the old shipped defaults are refused, and the file is left untouched
    weak = tmp_path / "weak.env"
    weak.write_text(
        "POSTGRES_PASSWORD=airflow\nAIRFLOW_ADMIN_PASSWORD=admin\nAIRFLOW_JWT_SECRET=astrid-local-jwt-secret-change-me\n"
    )
    proc = run_secrets("init", str(weak))
    assert proc.returncode == 2
    for name in ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET"):
        assert f"{name} is a known placeholder" in proc.stderr
    assert (
        weak.read_text().startswith("POSTGRES_PASSWORD=airflow\n") and "S3_SECRET_KEY" not in weak.read_text()
    )
    assert not list(tmp_path.glob("weak.env.*")), "no temporary file left behind"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"POSTGRES_PASSWORD": ""}, "POSTGRES_PASSWORD is empty"),
        ({"S3_SECRET_KEY": "minio-secret"}, "S3_SECRET_KEY is a known placeholder"),
        ({"GRAFANA_ADMIN_PASSWORD": "Admin"}, "GRAFANA_ADMIN_PASSWORD is a known placeholder"),
        ({"AIRFLOW_API_SECRET_KEY": "short-secret"}, "AIRFLOW_API_SECRET_KEY is shorter than 16"),
        ({"AIRFLOW_FERNET_KEY": "not-a-fernet-key"}, "AIRFLOW_FERNET_KEY is not a Fernet key"),
        ({"POSTGRES_PASSWORD": URL_BREAKING}, "POSTGRES_PASSWORD may only use"),
        (
            {"AIRFLOW_JWT_SECRET": "please-change-me-soon-0123456789"},
            "AIRFLOW_JWT_SECRET is a known placeholder",
        ),
    ],
)
def test_airflow_init_check_refuses_bad_secrets(
    generated_env, override: dict[str, str], message: str
) -> None:
    secrets = {name: generated_env[name] for name in compose_secret_names()}
    assert run_secrets("check", env=secrets).returncode == 0
    proc = run_secrets("check", env={**secrets, **override})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_airflow_init_checks_secrets_before_anything_else(services: Mapping[str, Any]) -> None:
    init = services["airflow-init"]
    script = shell_script(init).strip().splitlines()
    assert script[:2] == ["set -euo pipefail", "bash /opt/astrid/compose-secrets.sh check"]
    mounted = container_to_host(init, "/opt/astrid/compose-secrets.sh")
    assert mounted == SECRETS_SCRIPT.resolve()
    env = environment(init)
    for name in compose_secret_names():
        assert env.get(name), f"airflow-init cannot check {name}: not in its environment"


# Images that can no longer be pulled (repository deleted or emptied upstream): never reference them.
GONE_IMAGES = {
    "minio/minio": "MinIO deleted its Docker Hub repositories (issue 17.1)",
    "minio/mc": "MinIO deleted its Docker Hub repositories (issue 17.1)",
    "quay.io/minio/minio": "MinIO stopped publishing community images",
    "quay.io/minio/mc": "MinIO stopped publishing community images",
    "bitnami/": "Bitnami moved its free catalog to bitnamilegacy/ and stopped updating it",
}
# A version tag: digits and dots first (16.10, v0.28.1, 2.37.4, 3.3-8), any variant suffix after.
VERSION_TAG = re.compile(r"^v?\d+(\.\d+)+([-._][A-Za-z0-9.-]+)?$|^v?\d+\.\d+-\d+$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_problem(ref: str) -> str | None:
    """Why ``ref`` may not be used (unpinned, `latest`, known gone, malformed digest), or None."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    repo, tag = name.rsplit(":", 1) if ":" in last else (name, "")
    for gone, why in GONE_IMAGES.items():
        if repo == gone or (gone.endswith("/") and repo.startswith(gone)):
            return f"{ref}: {why}"
    if digest and not DIGEST.match(digest):
        return f"{ref}: malformed digest"
    if not tag:
        return f"{ref}: no tag (means latest)"
    if tag == "latest" or not VERSION_TAG.match(tag):
        return f"{ref}: tag {tag!r} is not an exact version"
    return None


def dockerfile_images(path: Path) -> list[str]:
    """FROM references of a Dockerfile with its ARG defaults substituted."""
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    refs = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.M)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref) for ref in refs]


def compose_images(services: Mapping[str, Any]) -> dict[str, str]:
    """Service -> pulled image (services that build their image, or run one built here, excluded)."""
    built = {svc.get("image") for svc in services.values() if svc.get("build")}
    return {n: s["image"] for n, s in services.items() if s.get("image") and s["image"] not in built}


def test_every_image_is_pinned_and_still_pullable(services: Mapping[str, Any]) -> None:
    refs = {f"compose:{n}": ref for n, ref in compose_images(services).items()}
    for dockerfile in ("Dockerfile", "Dockerfile.inference"):
        refs |= {f"{dockerfile}:{i}": ref for i, ref in enumerate(dockerfile_images(REPO / dockerfile))}
    refs |= {f"helm:{where}": ref for where, ref in helm_images().items()}
    assert len(refs) >= 14, refs
    assert {"helm:images.statsd", "helm:images.redis"} <= set(refs), "the Helm values pin their images too"
    problems = [f"{where}: {why}" for where, ref in refs.items() if (why := image_problem(ref))]
    assert not problems, "\n".join(problems)
    assert refs["Dockerfile.inference:0"] == "apache/airflow:3.3.2-python3.12"
    assert refs["compose:s3"].startswith("versity/versitygw:v") and refs["compose:s3-init"].startswith(
        "amazon/aws-cli:"
    )


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("minio/minio:RELEASE.2025-09-07T16-13-09Z", "deleted"),
        ("minio/mc:RELEASE.2025-04-16T18-13-26Z", "deleted"),
        ("bitnami/postgresql:16.4.0", "bitnamilegacy"),
        ("redis", "no tag"),
        ("postgres:latest", "not an exact version"),
        ("grafana/grafana:main", "not an exact version"),
        ("localhost:5000/team/image", "no tag"),
        ("versity/versitygw:v1.8.0@sha256:1234", "malformed digest"),
    ],
)
def test_image_rules_reject_unpinned_and_gone_images(ref: str, why: str) -> None:
    assert why in (image_problem(ref) or ""), ref


def test_build_contexts_and_dockerfiles_exist(services: Mapping[str, Any]) -> None:
    built = {}
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = host_path(build.get("context", "."))
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        built[name] = dockerfile.name
    assert built["airflow-apiserver"] == "Dockerfile"
    assert built["airflow-worker-gpu"] == "Dockerfile.inference"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.inference"])
def test_dockerfile_copy_sources_exist(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        args = [a for a in line.split() if not a.startswith("--")]
        assert "--from" not in line
        for source in args[:-1]:
            assert (REPO / source).exists(), f"{dockerfile}: COPY source {source} is not in the repo"


def test_dockerfiles_pin_the_airflow_we_test() -> None:
    locked = re.search(r"^apache-airflow==(\S+)$", (REPO / "constraints.txt").read_text(), flags=re.M)
    assert locked
    inference = (REPO / "Dockerfile.inference").read_text()
    assert re.search(rf"^ARG AIRFLOW_VERSION={re.escape(locked.group(1))}$", inference, flags=re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[12]$", inference, flags=re.M)
    assert re.search(
        r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", inference, flags=re.M
    )
    assert re.search(r'^CMD \["airflow", "celery", "worker", "-q", "gpu"\]$', inference, flags=re.M)
    astro = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM astrocrpublic\.azurecr\.io/runtime:3\.3-\d+$", astro, flags=re.M)
    # Torch wheel indexes are build args the operator supplies, empty by default.
    for text in (astro, inference):
        assert re.search(r'^ARG TORCH_INDEX_URL=""$', text, flags=re.M)


def test_bind_mounts_point_at_files_in_the_repo(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for m in mounts(svc):
            if m["type"] == "volume":
                assert m["source"] in declared, f"{name}: named volume {m['source']} not declared"
            elif m["type"] == "bind" and not m["create_host_path"]:
                path = host_path(m["source"])
                assert path.exists(), f"{name}: bind source {m['source']} does not exist in the repo"
                if PurePosixPath(m["target"]).suffix in (".yml", ".yaml", ".json", ".conf"):
                    assert path.is_file(), f"{name}: {m['source']} should be a file"


def test_airflow_services_share_dags_plugins_include_logs_config(
    services: Mapping[str, Any], generated_env
) -> None:
    for name in airflow_services(services):
        targets = {m["target"] for m in mounts(services[name])}
        for sub in ("dags", "plugins", "include", "logs", "config"):
            assert f"/usr/local/airflow/{sub}" in targets, f"{name}: no mount for {sub}"
    assert services["airflow-apiserver"]["user"] == f"{generated_env['AIRFLOW_UID']}:0"


def test_statsd_exporter_prometheus_and_grafana_configs_line_up(services: Mapping[str, Any]) -> None:
    statsd = services["statsd-exporter"]
    flags = dict(tok.split("=", 1) for tok in command_tokens(statsd) if "=" in tok)
    mapping = container_to_host(statsd, flags["--statsd.mapping-config"])
    assert mapping is not None and mapping.is_file()
    assert flags["--statsd.listen-udp"].endswith(":9125") and flags["--web.listen-address"].endswith(":9102")

    prom = services["prometheus"]
    flags = dict(tok.split("=", 1) for tok in command_tokens(prom) if "=" in tok)
    config_path = PurePosixPath(flags["--config.file"])
    config_host = container_to_host(prom, str(config_path))
    assert config_host is not None and config_host.is_file()
    config = yaml.safe_load(config_host.read_text()) or {}
    for rule_file in config.get("rule_files") or []:
        rule_path = PurePosixPath(rule_file)
        rule_path = rule_path if rule_path.is_absolute() else config_path.parent / rule_path
        rule_host = container_to_host(prom, str(rule_path))
        assert rule_host is not None and rule_host.is_file(), f"rule file {rule_file} is not mounted"
    targets = [
        target
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for target in static.get("targets") or []
    ]
    assert "statsd-exporter:9102" in targets, f"Prometheus does not scrape statsd-exporter: {targets}"
    for target in targets:
        assert target.split(":")[0] in set(services) | {"localhost", "127.0.0.1"}, target

    grafana = services["grafana"]
    provisioning = container_to_host(grafana, "/etc/grafana/provisioning/datasources")
    assert provisioning is not None
    datasource_files = sorted(provisioning.glob("*.y*ml"))
    assert datasource_files, "no Grafana datasource provisioning file"
    for path in datasource_files:
        for ds in (yaml.safe_load(path.read_text()) or {}).get("datasources") or []:
            if ds.get("url"):
                assert urlsplit(ds["url"]).hostname in services, f"{path.name}: {ds['url']}"
    providers_dir = container_to_host(grafana, "/etc/grafana/provisioning/dashboards")
    assert providers_dir is not None
    provider_files = sorted(providers_dir.glob("*.y*ml"))
    assert provider_files, "no Grafana dashboard provider file"
    for path in provider_files:
        for provider in (yaml.safe_load(path.read_text()) or {}).get("providers") or []:
            dash_dir = container_to_host(grafana, provider["options"]["path"])
            assert dash_dir is not None, f"{path.name}: {provider['options']['path']} is not mounted"
            assert sorted(dash_dir.glob("*.json")), f"no dashboards in {dash_dir}"


COMPOSE_OWN_DEFAULTS = {"ASTRID_INFERENCE_EVENTS_URL": "redis://redis:6379/1"}


def test_astrid_inference_variables_reach_every_airflow_service(raw_compose: dict[str, Any]) -> None:
    table = InferenceSchedulingConfig.env_table()
    services = raw_compose["services"]
    assert len(airflow_services(services)) >= 7
    for name in airflow_services(services):
        env = environment(services[name])
        defaults: dict[str, str] = {}
        for var, _, _ in table:
            value = env.get(var)
            match = re.fullmatch(rf"\$\{{{var}:-(.*)\}}", str(value))
            assert match, f"{name}: {var} must be passed as ${{{var}:-default}}, found {value!r}"
            defaults[var] = match.group(1)
        # The compose defaults are valid and equal to the code's defaults, except where the stack
        # itself decides (its Redis is the host `redis`, not localhost).
        own = {k: v for k, v in defaults.items() if k in COMPOSE_OWN_DEFAULTS}
        assert own == COMPOSE_OWN_DEFAULTS, name
        expected = InferenceSchedulingConfig.from_env(COMPOSE_OWN_DEFAULTS)
        assert InferenceSchedulingConfig.from_env(defaults) == expected, name


def test_no_unknown_astrid_variables_in_deployment_files() -> None:
    known = known_astrid_variables()
    for rel in DEPLOY_FILES:
        path = REPO / rel
        if not path.exists():
            continue
        used = set(re.findall(r"\bASTRID_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
        unknown = sorted(used - known)
        assert not unknown, f"{rel} references ASTRID_ variables the code never reads: {unknown}"


def test_env_example_documents_every_setting(raw_compose: dict[str, Any]) -> None:
    text = (REPO / ".env.example").read_text()
    for var, _, _ in InferenceSchedulingConfig.env_table():
        assert re.search(rf"^#? ?{var}=", text, flags=re.M), f".env.example does not document {var}"
    compose_vars = {
        m.group("name") or m.group("bare")
        for m in _INTERPOLATION.finditer(COMPOSE_PATH.read_text().replace("$$", ""))
        if m.group(0) != "$$"
    }
    for var in sorted(compose_vars - {v for v, _, _ in InferenceSchedulingConfig.env_table()}):
        assert re.search(rf"^#? ?{var}=", text, flags=re.M), f".env.example does not document {var}"


def on_demand_services(services: Mapping[str, Any]) -> set[str]:
    """Services only `docker compose --profile ... run` starts (profile-only, never restarted)."""
    return {name for name, svc in services.items() if svc.get("profiles") and str(svc.get("restart")) == "no"}


def test_every_long_running_service_has_a_healthcheck(services: Mapping[str, Any]) -> None:
    one_shot = one_shot_services(services) | on_demand_services(services)
    assert {"airflow-init", "s3-init"} <= one_shot
    for name, svc in services.items():
        if name in one_shot:
            assert str(svc.get("restart", "no")) == "no", f"{name} runs once: restart must be 'no'"
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_expected_healthchecks(services: Mapping[str, Any]) -> None:
    def check(name: str) -> str:
        return " ".join(services[name]["healthcheck"]["test"])

    assert "pg_isready" in check("postgres")
    assert "redis-cli ping" in check("redis")
    assert "/api/v2/monitor/health" in check("airflow-apiserver")
    assert ":8974/health" in check("airflow-scheduler")
    assert "DagProcessorJob" in check("airflow-dag-processor")
    assert "TriggererJob" in check("airflow-triggerer")
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert "inspect ping" in check(worker)
    assert ":9102/metrics" in check("statsd-exporter")
    assert ":9090/-/healthy" in check("prometheus")
    assert ":3000/api/health" in check("grafana")
    assert ":5000/health" in check("mlflow")
    assert ":9000/health" in check("s3")
    assert ":8025/livez" in check("mailpit")
    assert ":9093/-/healthy" in check("alertmanager")
    assert ":8000/runbook.md" in check("runbooks")


def test_api_server_liveness_does_not_depend_on_the_catalog(services: Mapping[str, Any]) -> None:
    """Issue 17.10: a catalog outage must not mark the api-server unhealthy, since the workers wait
    for it to be healthy. Airflow's liveness only; the AstrID readiness (/astrid/health) stays out of
    every health check that something waits on."""
    api_check = " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "/api/v2/monitor/health" in api_check and "/astrid" not in api_check
    waiting_on_api = [
        n for n, s in services.items() if depends_on(s).get("airflow-apiserver") == "service_healthy"
    ]
    assert "airflow-worker" in waiting_on_api
    for name, svc in services.items():
        check = " ".join((svc.get("healthcheck") or {}).get("test") or [])
        assert "/astrid/" not in check, f"{name}'s health check depends on the AstrID status API"


def test_depends_on_references_real_services_with_matching_conditions(services: Mapping[str, Any]) -> None:
    one_shot = one_shot_services(services)
    for name, svc in services.items():
        for dep, condition in depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy: no check"
            if condition == "service_completed_successfully":
                assert dep in one_shot
            # A service in the default set cannot wait for one that only starts with a profile.
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} depends on profile-only {dep}"

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        for dep in depends_on(services[node]):
            visit(dep, (*path, node))

    for name in services:
        visit(name, ())
    for name in airflow_services(services):
        if name != "airflow-init":
            assert depends_on(services[name]).get("airflow-init") == "service_completed_successfully", name


def test_gpu_worker_reserves_an_nvidia_gpu_and_consumes_the_gpu_queue(services: Mapping[str, Any]) -> None:
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    tokens = command_tokens(gpu)
    assert tokens[:3] == ["airflow", "celery", "worker"]
    queue_flag = next(i for i, t in enumerate(tokens) if t in ("-q", "--queues"))
    assert tokens[queue_flag + 1] == GPU_QUEUE == "gpu"
    # Without the GPU worker the default worker still drains the gpu queue (U-Net on CPU).
    cpu = command_tokens(services["airflow-worker"])
    cpu_queues = cpu[cpu.index("-q") + 1].split(",")
    assert "default" in cpu_queues and GPU_QUEUE in cpu_queues


def test_airflow_common_settings(services: Mapping[str, Any]) -> None:
    s3_init = shell_script(services["s3-init"])
    buckets = set(re.search(r"for bucket in ([a-z0-9. -]+); do", s3_init).group(1).split())
    assert {"observations", "artifacts", "logs"} <= buckets
    for name in airflow_services(services):
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"]
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "true"
        assert env["AIRFLOW__METRICS__STATSD_HOST"] in services
        assert env["AIRFLOW__METRICS__STATSD_PORT"] == "9125"
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "true"
        base = urlsplit(env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"])
        assert base.scheme == "s3" and base.hostname in buckets
        assert f"AIRFLOW_CONN_{env['AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID'].upper()}" in env
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "127.0.0.1:8080:8080" in services["airflow-apiserver"]["ports"]
    init = shell_script(services["airflow-init"])
    assert "airflow db migrate" in init
    assert re.search(r'airflow pools set "\$\{ASTRID_INFERENCE_GPU_POOL\}"', init)


def _connection(value: str) -> dict[str, Any]:
    """A connection from its JSON form, or from its URI form (as Airflow reads either)."""
    if value.lstrip().startswith("{"):
        return json.loads(value)
    parts = urlsplit(value)
    return {"conn_type": parts.scheme, "host": parts.hostname, "port": parts.port}


def test_compose_connections_point_at_compose_services(services: Mapping[str, Any]) -> None:
    env = environment(services["airflow-worker"])
    conns = {
        key.removeprefix("AIRFLOW_CONN_").lower(): _connection(value)
        for key, value in env.items()
        if key.startswith("AIRFLOW_CONN_") and value
    }
    assert REQUIRED_CONNECTIONS | {"aws_default"} <= set(conns)
    events = conns["astrid_events"]
    assert (events["conn_type"], events["host"]) == ("redis", "redis")
    catalog = urlsplit(conns["astrid_catalog"]["extra"]["sqlalchemy_url"])
    assert catalog.hostname == "postgres" and catalog.path == "/astrid"
    storage = conns["astrid_storage"]["extra"]
    assert storage["root"] == "s3://observations" and storage["aws_conn_id"] in conns
    assert urlsplit(conns["aws_default"]["extra"]["endpoint_url"]).hostname == "s3"
    assert conns["aws_default"]["login"] == environment(services["s3"])["ROOT_ACCESS_KEY_ID"]
    assert conns["aws_default"]["password"] == environment(services["s3"])["ROOT_SECRET_ACCESS_KEY"]
    assert urlsplit(conns["mlflow_default"]["extra"]["tracking_uri"]).hostname == "mlflow"
    smtp = conns["smtp_default"]
    assert (smtp["host"], smtp["port"]) == ("mailpit", 1025)
    assert any(str(p).endswith(":1025") for p in services["mailpit"]["ports"])
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__CORE__FERNET_KEY"]
    for conn in conns.values():
        if conn.get("host"):
            assert conn["host"] in services


def test_connection_ids_used_by_the_code_are_known() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "plugins" / "astrid" / "airflow").glob("*.py"))
    used = set(re.findall(r'default_conn_name\s*=\s*"(\w+)"', source))
    used |= set(re.findall(r'\w*conn_id\w*\s*:\s*str\s*=\s*"(\w+)"', source))
    used |= set(re.findall(r'get\("aws_conn_id",\s*"(\w+)"\)', source))
    assert used >= REQUIRED_CONNECTIONS, "the connection-id scan found fewer ids than expected"
    unknown = used - REQUIRED_CONNECTIONS - OPTIONAL_CONNECTIONS
    assert not unknown, f"the code uses connections no deployment file defines: {unknown}"


# --------------------------------------------------------------------------------------------------
# Astro project files
# --------------------------------------------------------------------------------------------------


def test_airflow_settings_has_the_connections_and_pool_the_dags_use() -> None:
    settings = yaml.safe_load((REPO / "airflow_settings.yaml").read_text())["airflow"]
    conns = {c["conn_id"]: c for c in settings["connections"]}
    assert set(conns) >= REQUIRED_CONNECTIONS
    for conn_id, conn in conns.items():
        assert conn["conn_type"], conn_id
        assert isinstance(conn.get("conn_extra") or {}, dict), f"{conn_id}: conn_extra must be a mapping"
    assert conns["astrid_catalog"]["conn_extra"]["sqlalchemy_url"]
    assert conns["astrid_storage"]["conn_extra"]["root"].startswith(("file://", "s3://"))
    assert conns["smtp_default"]["conn_port"] and conns["smtp_default"]["conn_host"]
    pools = {p["pool_name"]: p for p in settings["pools"]}
    assert GPU_POOL in pools and int(pools[GPU_POOL]["pool_slot"]) >= 1
    assert isinstance(settings.get("variables"), list)


def test_astro_project_files() -> None:
    config = yaml.safe_load((REPO / ".astro" / "config.yaml").read_text())
    assert config["project"]["name"] == "astrid"
    for line in (REPO / "packages.txt").read_text().splitlines():
        assert line.strip() and " " not in line.strip() and not line.startswith("#"), line
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".env", "airflow_settings.yaml", ".venv", ".git"} <= ignored
    assert "dags" not in ignored and "plugins" not in ignored and "include" not in ignored


def run_astro_parse_check(dags_folder: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run .astro/test_dag_integrity_default.py with pytest as `astro dev parse` does (own process,
    fresh AIRFLOW_HOME, no metadata DB)."""
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "PYTHONPATH": str(REPO / "plugins"),
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(REPO / ".astro" / "test_dag_integrity_default.py")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_astro_parse_check_passes_on_our_dags(tmp_path: Path) -> None:
    proc = run_astro_parse_check(REPO / "dags", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    n_files = len(list((REPO / "dags").glob("*.py")))
    assert f"{n_files + 1} passed" in proc.stdout, proc.stdout[-2000:]


def test_astro_parse_check_fails_on_a_broken_dag(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    shutil.copytree(REPO / "dags", dags)
    (dags / "astrid_broken.py").write_text(
        "from airflow.sdk import DAG\nfrom astrid.airflow import no_such_module\n"
    )
    (dags / "astrid_empty.py").write_text("from airflow.sdk import DAG  # a DAG file that defines none\n")
    proc = run_astro_parse_check(dags, tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "astrid_broken.py failed to import" in proc.stdout and "no_such_module" in proc.stdout
    assert "astrid_empty.py imports but defines no DAG" in proc.stdout
    assert "2 failed" in proc.stdout


def test_dags_airflowignore_keeps_every_dag_file() -> None:
    file_discovery = pytest.importorskip("airflow._shared.module_loading.file_discovery")
    assert (REPO / "dags" / ".airflowignore").is_file()
    kept = {Path(p).name for p in file_discovery.find_path_from_directory(REPO / "dags", ".airflowignore")}
    for dag_file in (REPO / "dags").glob("*.py"):
        assert dag_file.name in kept, f"dags/.airflowignore hides {dag_file.name}"


# --------------------------------------------------------------------------------------------------
# shell scripts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "scripts/mwaa-bundle.sh",
        "mwaa/startup.sh",
        "scripts/compose-secrets.sh",
        "include/monitoring/alertmanager/run-alertmanager.sh",
    ],
)
def test_shell_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(REPO / script)], check=True)
    if script.startswith("mwaa/"):
        subprocess.run(["sh", "-n", str(REPO / script)], check=True)  # MWAA sources it


def test_inline_compose_scripts_parse(services: Mapping[str, Any]) -> None:
    subprocess.run(["bash", "-n", "-c", shell_script(services["airflow-init"])], check=True)
    subprocess.run(["sh", "-n", "-c", shell_script(services["s3-init"])], check=True)


def test_mwaa_startup_runs_cpu_inference_on_the_default_queue(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "AIRFLOW_HOME": str(tmp_path), "MWAA_AIRFLOW_COMPONENT": "worker"}
    (tmp_path / "plugins" / "include").mkdir(parents=True)
    out = subprocess.run(
        ["bash", "-c", f'. "{REPO / "mwaa" / "startup.sh"}" && env'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert exported["ASTRID_INFERENCE_DEVICE"] == "cpu"
    assert exported["ASTRID_INFERENCE_GPU_QUEUE"] == "default"
    assert exported["ASTRID_MODEL_PATH"] == f"{tmp_path}/plugins/include/models/astrid-unet"
    assert exported["OMP_NUM_THREADS"] == "2"
    assert InferenceSchedulingConfig.from_env(exported).device == "cpu"
    assert (tmp_path / "include").resolve() == (tmp_path / "plugins" / "include").resolve()


# MWAA sends one of these in MWAA_AIRFLOW_COMPONENT; hybrid = scheduler + worker in one container.
# (component, worker thread caps expected, pool creation expected)
MWAA_COMPONENTS = [
    ("webserver", False, False),
    ("scheduler", False, True),
    ("worker", True, False),
    ("hybrid", True, True),
]


def source_startup(
    tmp_path: Path, shell: str, component: str, *, pool_exists: bool = False, stub_fails: bool = False
) -> tuple[dict[str, str], list[str], str]:
    """Source mwaa/startup.sh as MWAA does, with a stub `airflow` first on PATH.

    The stub stands in for the Airflow CLI, which cannot run MWAA's metadata DB here: it records
    its arguments, answers `pools get` as told, and fails every call when told to.
    """
    home = tmp_path / f"home-{shell}-{component}"
    (home / "plugins" / "include").mkdir(parents=True)
    stub_bin = tmp_path / "stub-bin"
    stub_bin.mkdir(exist_ok=True)
    calls = tmp_path / f"calls-{shell}-{component}.log"
    stub = stub_bin / "airflow"
    stub.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$STUB_CALLS"\n'
        '[ "$STUB_FAIL" = 1 ] && exit 1\n'
        'if [ "$1 $2" = "pools get" ]; then [ "$STUB_POOL_EXISTS" = 1 ] && exit 0; exit 1; fi\n'
        "exit 0\n"
    )
    stub.chmod(0o755)
    env = {
        "PATH": f"{stub_bin}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(home),
        "MWAA_AIRFLOW_COMPONENT": component,
        "STUB_CALLS": str(calls),
        "STUB_POOL_EXISTS": "1" if pool_exists else "0",
        "STUB_FAIL": "1" if stub_fails else "0",
    }
    proc = subprocess.run(
        [shell, "-c", f'. "{REPO / "mwaa" / "startup.sh"}" && echo "--- env" && env'],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    messages, _, env_dump = proc.stdout.partition("--- env\n")
    exported = dict(line.split("=", 1) for line in env_dump.splitlines() if "=" in line)
    logged = calls.read_text().splitlines() if calls.exists() else []
    return exported, logged, messages


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize(("component", "thread_caps", "makes_pool"), MWAA_COMPONENTS)
def test_mwaa_startup_branches_per_component(
    tmp_path: Path, shell: str, component: str, thread_caps: bool, makes_pool: bool
) -> None:
    exported, calls, _ = source_startup(tmp_path, shell, component)
    assert exported["ASTRID_INFERENCE_DEVICE"] == "cpu", component
    assert ("OMP_NUM_THREADS" in exported) is thread_caps, component
    if makes_pool:
        assert calls == [f"pools get {GPU_POOL}", f"pools set {GPU_POOL} 2 AstrID U-Net tasks (CPU on MWAA)"]
    else:
        assert calls == [], f"{component} must not touch pools: {calls}"


@pytest.mark.parametrize("component", ["scheduler", "hybrid"])
def test_mwaa_startup_keeps_an_existing_pool_and_survives_cli_failure(tmp_path: Path, component: str) -> None:
    _, calls, _ = source_startup(tmp_path / "exists", "sh", component, pool_exists=True)
    assert calls == [f"pools get {GPU_POOL}"], "an existing pool is left as it is"
    exported, calls, messages = source_startup(tmp_path / "fails", "sh", component, stub_fails=True)
    assert len(calls) == 2 and "could not create pool" in messages
    assert exported["ASTRID_INFERENCE_DEVICE"] == "cpu", "a failed pool call must not stop the script"


def test_mwaa_startup_names_an_unknown_component(tmp_path: Path) -> None:
    _, calls, messages = source_startup(tmp_path, "sh", "api-server")
    assert calls == [] and "unknown MWAA_AIRFLOW_COMPONENT 'api-server'" in messages


# --------------------------------------------------------------------------------------------------
# MWAA bundle
# --------------------------------------------------------------------------------------------------


def run_bundle(out: Path, root: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    script = root / "scripts" / "mwaa-bundle.sh"
    return subprocess.run(
        ["bash", str(script)],
        env={**os.environ, "MWAA_BUNDLE_DIR": str(out), **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mwaa-bundle")
    run_bundle(out)
    return out


def test_makefile_target_runs_the_bundle_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^mwaa-bundle:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe and "scripts/mwaa-bundle.sh" in recipe.group(1)


def test_bundle_has_dags_plugins_requirements_startup(bundle: Path) -> None:
    assert sorted(p.name for p in (bundle / "dags").glob("*.py")) == sorted(
        p.name for p in (REPO / "dags").glob("*.py")
    )
    startup = bundle / "startup.sh"
    assert startup.stat().st_mode & stat.S_IXUSR and os.access(startup, os.X_OK)
    with zipfile.ZipFile(bundle / "plugins.zip") as zf:
        names = set(zf.namelist())
        assert zf.testzip() is None
    assert "astrid/__init__.py" in names and "astrid/config.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or ".egg-info" in n for n in names)
    assert not any(n.startswith(("plugins/", "/")) for n in names), "MWAA wants the package at the zip root"
    for asset in ("expectations", "models"):
        shipped = [p for p in (REPO / "include" / asset).rglob("*") if p.is_file()]
        for path in shipped:
            assert f"include/{path.relative_to(REPO / 'include').as_posix()}" in names


def test_bundle_requirements_are_constrained_and_pinned(bundle: Path) -> None:
    lines = (bundle / "requirements.txt").read_text().splitlines()
    assert MWAA_CONSTRAINT.match(lines[0]), lines[0]
    assert lines[1:], "no requirements"
    for line in lines[1:]:
        assert PIN.match(line), f"not pinned with ==: {line!r}"
    names = [requirement_name(ln) for ln in lines[1:]]
    assert len(names) == len(set(names)), "a package is pinned twice"


def test_mwaa_requirements_cover_the_project_requirements() -> None:
    mwaa = {requirement_name(ln) for ln in (REPO / "mwaa" / "requirements.txt").read_text().splitlines()[1:]}
    for line in (REPO / "requirements.in").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            assert requirement_name(line) in mwaa, f"mwaa/requirements.txt lacks {line.strip()}"


def test_bundle_is_reproducible(bundle: Path, tmp_path: Path) -> None:
    run_bundle(tmp_path)
    assert (tmp_path / "plugins.zip").read_bytes() == (bundle / "plugins.zip").read_bytes()


def test_bundle_airflowignore_loads_only_plugin_modules(tmp_path: Path) -> None:
    """A throwaway project with one AirflowPlugin module: only it survives plugin discovery."""
    file_discovery = pytest.importorskip("airflow._shared.module_loading.file_discovery")
    root = tmp_path / "project"
    for rel in ("scripts/mwaa-bundle.sh", "mwaa/requirements.txt", "mwaa/startup.sh"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    (root / "dags").mkdir()
    (root / "dags" / "example.py").write_text("# a DAG\n")
    pkg = root / "plugins" / "astrid"
    (pkg / "airflow").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("X = 1\n")
    (pkg / "airflow" / "plugin.py").write_text(
        "from airflow.plugins_manager import AirflowPlugin\n\n\nclass AstridPlugin(AirflowPlugin):\n"
        "    name = 'astrid'\n"
    )
    (root / "include" / "models" / "astrid-unet").mkdir(parents=True)
    (root / "include" / "models" / "astrid-unet" / "model_card.json").write_text("{}")
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    (wheelhouse / "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"not a real wheel")
    out = tmp_path / "out"
    run_bundle(out, root=root, MWAA_WHEELHOUSE=str(wheelhouse), PYTHON=shutil.which("python3") or "python3")

    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(out / "plugins.zip") as zf:
        zf.extractall(unpacked)
    kept = {
        Path(p).relative_to(unpacked).as_posix()
        for p in file_discovery.find_path_from_directory(unpacked, ".airflowignore")
        if p.endswith(".py")
    }
    assert kept == {"astrid/airflow/plugin.py"}
    assert (unpacked / "include" / "models" / "astrid-unet" / "model_card.json").is_file()

    lines = (out / "requirements.txt").read_text().splitlines()
    assert MWAA_CONSTRAINT.match(lines[0])
    assert lines[1] == "--find-links /usr/local/airflow/plugins/wheels"
    assert "torch==2.13.0+cpu" in lines
    assert (unpacked / "wheels" / "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").is_file()


def test_bundle_refuses_unpinned_requirements(tmp_path: Path) -> None:
    root = tmp_path / "project"
    for rel in ("scripts/mwaa-bundle.sh", "mwaa/startup.sh"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    (root / "mwaa" / "requirements.txt").write_text(
        (REPO / "mwaa" / "requirements.txt").read_text() + "mlflow>=3\n"
    )
    (root / "dags").mkdir()
    (root / "dags" / "example.py").write_text("")
    (root / "plugins" / "astrid").mkdir(parents=True)
    (root / "plugins" / "astrid" / "__init__.py").write_text("")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_bundle(tmp_path / "out", root=root)
    assert "pinned with ==" in failed.value.stderr


# --------------------------------------------------------------------------------------------------
# Issue 17.4 / 17.7: the airflow-cli service (metadata clean-up) and the UI link settings
# --------------------------------------------------------------------------------------------------


def test_ui_link_settings_reach_every_airflow_service_with_browser_addresses(
    raw_compose: dict[str, Any], services: Mapping[str, Any]
) -> None:
    """ASTRID_GRAFANA_URL (nav entry, AstrID page) and ASTRID_MLFLOW_UI_URL (the infer task's "MLflow
    run" link, stored by the worker when the task finishes) are set on every Airflow service, to the
    host ports a browser uses, never to a compose service name only containers resolve."""
    from astrid.status import safe_http_url

    for name in airflow_services(raw_compose["services"]):
        env = environment(raw_compose["services"][name])
        for var in ("ASTRID_GRAFANA_URL", "ASTRID_MLFLOW_UI_URL"):
            assert re.fullmatch(rf"\$\{{{var}:-http://localhost:[0-9]+.*\}}", str(env.get(var))), (name, var)
    env = environment(services["airflow-worker"])
    grafana, mlflow = urlsplit(env["ASTRID_GRAFANA_URL"]), urlsplit(env["ASTRID_MLFLOW_UI_URL"])
    assert safe_http_url(env["ASTRID_GRAFANA_URL"]) == env["ASTRID_GRAFANA_URL"]
    assert grafana.hostname == mlflow.hostname == "localhost"
    # the ports are the ones compose publishes by default
    assert published_ports(services["grafana"])[0].endswith(f":{grafana.port}:3000")
    assert published_ports(services["mlflow"])[0].endswith(f":{mlflow.port}:5000")
    # the tracking URI stays the container name: the UI URL is what makes the link openable
    tracking = json.loads(env["AIRFLOW_CONN_MLFLOW_DEFAULT"])["extra"]["tracking_uri"]
    assert urlsplit(tracking).hostname == "mlflow" != mlflow.hostname


def test_airflow_cli_service_cleans_the_metadata_db_on_demand(services: Mapping[str, Any]) -> None:
    cli = services["airflow-cli"]
    assert cli["profiles"] == ["cli"] and str(cli["restart"]) == "no"  # never started by `up`
    assert command_tokens(cli) == ["python", "-m", "astrid.maintenance", "db-clean"]
    env = environment(cli)
    assert env["PYTHONPATH"] == "/usr/local/airflow/plugins"
    assert container_to_host(cli, "/usr/local/airflow/plugins/astrid/maintenance.py") == (
        REPO / "plugins" / "astrid" / "maintenance.py"
    )
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")  # it has the DB
    assert depends_on(cli)["airflow-init"] == "service_completed_successfully"
    help_text = subprocess.run(
        [sys.executable, "-m", "astrid.maintenance", "db-clean", "--help"],
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--dry-run" in help_text and "--days" in help_text


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_mwaa_startup_runs_on_arrival_only_with_an_sqs_queue(tmp_path: Path, shell: str) -> None:
    """Without a queue URL, events are off (cron only): the default redis:// URL names nothing on
    MWAA. With one (the line startup.sh shows, uncommented), the DAG listens on SQS."""
    exported, _, _ = source_startup(tmp_path / "none", shell, "scheduler")
    assert exported["ASTRID_INFERENCE_EVENTS_ENABLED"] == "false"
    assert InferenceSchedulingConfig.from_env(exported).events_kind is None
    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/astrid-arrivals"
    text = (REPO / "mwaa" / "startup.sh").read_text()
    assert '# export ASTRID_INFERENCE_EVENTS_URL="https://sqs.' in text
    edited = tmp_path / "startup.sh"
    edited.write_text(
        text.replace(
            '# export ASTRID_INFERENCE_EVENTS_URL="https://sqs.<region>.amazonaws.com/<account>/astrid-arrivals"',
            f'export ASTRID_INFERENCE_EVENTS_URL="{queue}"',
        )
    )
    out = subprocess.run(
        [shell, "-c", f'. "{edited}" && env'],
        env={
            "PATH": os.environ["PATH"],
            "AIRFLOW_HOME": str(tmp_path),
            "MWAA_AIRFLOW_COMPONENT": "webserver",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "ASTRID_INFERENCE_EVENTS_ENABLED" not in env
    config = InferenceSchedulingConfig.from_env(env)
    assert (config.events_kind, config.events_url) == ("sqs", queue)


def test_astro_image_is_cron_only_until_told_and_compose_turns_arrivals_on(compose: dict[str, Any]) -> None:
    """The Astro image has no Redis to listen on: events off in the image; compose (same image)
    sets them on for every Airflow service, with its own Redis and the astrid_events connection."""
    astro = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ENV ASTRID_INFERENCE_EVENTS_ENABLED=false$", astro, flags=re.M)
    airflow = {n: s.get("environment") or {} for n, s in compose["services"].items()}
    airflow = {n: env for n, env in airflow.items() if "AIRFLOW__CORE__EXECUTOR" in env}
    assert {"airflow-apiserver", "airflow-triggerer", "airflow-worker-gpu"} <= set(airflow), sorted(airflow)
    for name, env in airflow.items():
        assert env["ASTRID_INFERENCE_EVENTS_ENABLED"] == "true", name
        assert (
            env["ASTRID_INFERENCE_EVENTS_URL"] == env["AIRFLOW_CONN_ASTRID_EVENTS"] == "redis://redis:6379/1"
        )
