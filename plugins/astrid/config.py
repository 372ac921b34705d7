"""Scheduling configuration: defaults, ``ASTRID_*`` environment overrides, validation.

One frozen dataclass holds every knob. Each field names its environment variable in its
metadata, so the env table in the README, the parser and the error messages cannot drift apart.
Invalid values raise :class:`~astrid.errors.ConfigError` naming the variable and the bad value,
at DAG-parse time, so a typo in a deployment shows up as an import error in the Airflow UI
instead of a silently different schedule.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astrid.dag_kinds import dag_kind
from astrid.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEVICES = ("auto", "cpu", "cuda")


def _env(name: str, doc: str, **kwargs: Any) -> Any:
    return field(metadata={"env": name, "doc": doc}, **kwargs)


@dataclass(frozen=True)
class InferenceSchedulingConfig:
    """Everything the three DAGs, the operators and the alerts read from configuration."""

    realtime_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_REALTIME", "cron for realtime inference", default="*/15 * * * *"
    )
    realtime_enabled: bool = _env(
        "ASTRID_INFERENCE_REALTIME_ENABLED", "false: DAG exists, no schedule", default=True
    )
    realtime_max_observations: int = _env(
        "ASTRID_INFERENCE_MAX_OBSERVATIONS", "observations claimed per realtime run", default=10
    )
    batch_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_BATCH", "cron for the nightly batch", default="0 2 * * *"
    )
    batch_enabled: bool = _env(
        "ASTRID_INFERENCE_BATCH_ENABLED", "false: DAG exists, no schedule", default=True
    )
    batch_max_observations: int = _env(
        "ASTRID_INFERENCE_BATCH_MAX_OBSERVATIONS", "observations claimed per batch run", default=100
    )
    batch_chunk_size: int = _env(
        "ASTRID_INFERENCE_BATCH_CHUNK_SIZE", "observations per mapped batch task", default=10
    )
    validation_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_VALIDATION", "cron for weekly model validation", default="0 4 * * 0"
    )
    validation_enabled: bool = _env(
        "ASTRID_INFERENCE_VALIDATION_ENABLED", "false: DAG exists, no schedule", default=True
    )
    validation_dataset_size: int = _env(
        "ASTRID_INFERENCE_VALIDATION_DATASET_SIZE", "labelled observations per validation", default=50
    )
    timezone: str = _env("ASTRID_INFERENCE_TIMEZONE", "IANA timezone of the schedules", default="UTC")
    log_level: str = _env(
        "ASTRID_INFERENCE_LOG_LEVEL", "DEBUG, INFO, WARNING, ERROR or CRITICAL", default="INFO"
    )
    log_retention_days: int = _env(
        "ASTRID_INFERENCE_LOG_RETENTION_DAYS", "days of task logs and metadata kept", default=30
    )
    log_rotation_mb: int = _env(
        "ASTRID_INFERENCE_LOG_ROTATION_MB", "size at which local log files rotate", default=100
    )
    monitoring_enabled: bool = _env(
        "ASTRID_INFERENCE_MONITORING_ENABLED", "emit astrid.* StatsD metrics", default=True
    )
    alert_on_failure: bool = _env(
        "ASTRID_INFERENCE_ALERT_ON_FAILURE", "email/webhook when a task fails for good", default=True
    )
    performance_tracking: bool = _env(
        "ASTRID_INFERENCE_PERFORMANCE_TRACKING", "log runs and metrics to MLflow", default=True
    )
    model_uri: str = _env(
        "ASTRID_INFERENCE_MODEL_URI",
        "models:/astrid-unet@champion, a version or a path",
        default="models:/astrid-unet@champion",
    )
    confidence_threshold: float = _env(
        "ASTRID_INFERENCE_CONFIDENCE_THRESHOLD", "probability cut for a detection (0-1)", default=0.5
    )
    star_residual_vetting: str = _env(
        "ASTRID_INFERENCE_STAR_RESIDUAL_VETTING",
        "candidates on stars must exceed the frame's star residual by this many σ: card (the model "
        "card's calibrated level), off, or a number such as 2.5",
        default="card",
    )
    inference_batch_size: int = _env("ASTRID_INFERENCE_BATCH_SIZE", "tiles per forward pass", default=8)
    device: str = _env("ASTRID_INFERENCE_DEVICE", "auto, cpu or cuda", default="auto")
    gpu_pool: str = _env(
        "ASTRID_INFERENCE_GPU_POOL", "Airflow pool capping concurrent U-Net tasks", default="gpu"
    )
    gpu_queue: str = _env(
        "ASTRID_INFERENCE_GPU_QUEUE", "executor queue of U-Net tasks (default on MWAA)", default="gpu"
    )
    lease_minutes: int = _env(
        "ASTRID_INFERENCE_LEASE_MINUTES", "claim lease; expired claims are claimable again", default=30
    )
    max_attempts: int = _env(
        "ASTRID_INFERENCE_MAX_ATTEMPTS", "failures before an observation is left failed", default=3
    )
    max_image_side: int = _env(
        "ASTRID_INFERENCE_MAX_IMAGE_SIDE", "largest accepted frame side in pixels", default=8192
    )
    realtime_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES",
        "SLA: realtime run late after (fractions allowed)",
        default=10.0,
    )
    batch_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_BATCH_DEADLINE_MINUTES", "SLA: batch run late after", default=120.0
    )
    validation_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_VALIDATION_DEADLINE_MINUTES", "SLA: validation late after", default=180.0
    )
    alert_email: str = _env(
        "ASTRID_INFERENCE_ALERT_EMAIL",
        "recipients of alert emails (comma separated)",
        default="astrid-oncall@example.org",
    )
    alert_cooldown_minutes: int = _env(
        "ASTRID_INFERENCE_ALERT_COOLDOWN_MINUTES", "same alert suppressed for", default=60
    )
    min_success_rate: float = _env(
        "ASTRID_INFERENCE_MIN_SUCCESS_RATE", "degradation alert below this run success rate", default=0.9
    )
    zero_detection_runs: int = _env(
        "ASTRID_INFERENCE_ZERO_DETECTION_RUNS", "alert after this many realtime runs with none", default=4
    )
    min_validation_f1: float = _env(
        "ASTRID_INFERENCE_MIN_VALIDATION_F1", "champion below this F1 is rolled back", default=0.8
    )
    max_memory_percent: float = _env(
        "ASTRID_INFERENCE_MAX_MEMORY_PERCENT", "pre-flight: skip run above this host memory use", default=95.0
    )
    max_load_per_cpu: float = _env(
        "ASTRID_INFERENCE_MAX_LOAD_PER_CPU", "pre-flight: skip run above this 1-min load per CPU", default=8.0
    )
    max_gpu_memory_percent: float = _env(
        "ASTRID_INFERENCE_MAX_GPU_MEMORY_PERCENT",
        "pre-flight: skip run above this GPU memory use",
        default=95.0,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _validate(f.name, f.metadata["env"], getattr(self, f.name))
        # validated case-insensitively (so errors show the value as given), stored upper-case
        object.__setattr__(self, "log_level", self.log_level.upper())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceSchedulingConfig:
        """Defaults overridden by any ``ASTRID_INFERENCE_*`` variable that is set."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.metadata["env"], raw.strip(), type(f.default))
        return cls(**values)

    def schedule(self, kind: str) -> str | None:
        """Cron of a DAG kind (:mod:`astrid.dag_kinds`); ``None`` (manual only) when disabled."""
        row = dag_kind(kind)
        return getattr(self, row.schedule_setting) if getattr(self, row.enabled_setting) else None

    def deadline_minutes(self, kind: str) -> float:
        return getattr(self, dag_kind(kind).deadline_setting)

    @property
    def vetting_level(self) -> float | str | None:
        """``"card"``, ``None`` (off) or a z level: what ``InferenceEngine.analyse(min_excess=)`` takes."""
        return parse_vetting("ASTRID_INFERENCE_STAR_RESIDUAL_VETTING", self.star_residual_vetting)

    @property
    def alert_recipients(self) -> list[str]:
        return [a.strip() for a in self.alert_email.split(",") if a.strip()]

    @classmethod
    def env_table(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) rows: the README's configuration table is generated from this."""
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(cls)]


def _parse(env: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{env}={raw!r} is not a boolean: use true or false")
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not math.isfinite(value):  # "nan" would pass every "> 0" check
            raise ConfigError(f"{env}={raw!r} is not a finite number")
        return value
    return raw


def _check_cron(env: str, value: str) -> None:
    from croniter import croniter  # small; imported lazily to keep DAG parse fast

    if not croniter.is_valid(value):
        raise ConfigError(f"{env}={value!r} is not a valid cron expression (e.g. '*/15 * * * *')")


def _check_timezone(env: str, value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory: IsADirectoryError
        raise ConfigError(
            f"{env}={value!r} is not a known IANA timezone (e.g. 'UTC', 'America/Santiago')"
        ) from None


def _positive(env: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{env}={value!r} must be greater than 0")


def _fraction(env: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{env}={value!r} must lie between 0 and 1")


def _percent(env: str, value: float) -> None:
    if not 0.0 < value <= 100.0:
        raise ConfigError(f"{env}={value!r} must be a percentage in (0, 100]")


def parse_vetting(name: str, value: str) -> float | str | None:
    """A star-residual vetting setting: ``"card"``, ``"off"`` (→ ``None``) or a positive z level."""
    word = value.strip().lower()
    if word in ("card", "off"):
        return None if word == "off" else "card"
    try:
        level = float(word)
    except ValueError:
        level = math.nan
    if not (math.isfinite(level) and level > 0):
        raise ConfigError(f"{name}={value!r} must be card, off or a positive number of σ (e.g. 2.5)")
    return level


def _vetting(env: str, value: str) -> None:
    parse_vetting(env, value)


def _one_of(choices: tuple[str, ...], fold: Callable[[str], str] = str) -> Callable[[str, str], None]:
    def check(env: str, value: str) -> None:
        if fold(value) not in choices:
            raise ConfigError(f"{env}={value!r} is not one of {', '.join(choices)}")

    return check


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "timezone": _check_timezone,
    "log_level": _one_of(LOG_LEVELS, fold=str.upper),
    "device": _one_of(DEVICES),
    "confidence_threshold": _fraction,
    "star_residual_vetting": _vetting,
    "min_success_rate": _fraction,
    "min_validation_f1": _fraction,
    "max_memory_percent": _percent,
    "max_gpu_memory_percent": _percent,
}


def _validate(name: str, env: str, value: Any) -> None:
    if name.endswith("_schedule"):
        _check_cron(env, value)
    elif name in _CHECKS:
        _CHECKS[name](env, value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _positive(env, value)


def load_config() -> InferenceSchedulingConfig:
    """The configuration in force for this process (environment read each call: cheap, testable)."""
    return InferenceSchedulingConfig.from_env()


def configuration_markdown() -> str:
    """docs/configuration.md, generated from the dataclass (a test checks the file is current)."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable read by `astrid.config.InferenceSchedulingConfig`.",
        "Invalid values fail DAG parsing with a message naming the variable and the value.",
        "Generated by `python -m astrid.config > docs/configuration.md`; do not edit by hand.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{env}` | `{default}` | {doc} |" for env, default, doc in InferenceSchedulingConfig.env_table()
    ]
    lines += [
        "",
        "Connections (Airflow): `astrid_catalog` (extra `sqlalchemy_url`, or a postgres connection),",
        "`astrid_storage` (extra `root`: `file://…` or `s3://bucket/prefix`, plus `aws_conn_id`),",
        "`mlflow_default` (tracking URI), `smtp_default`, optional `slack_webhook_default`.",
        "Without them: `ASTRID_CATALOG_URL`, `ASTRID_STORAGE_ROOT`, `MLFLOW_TRACKING_URI`, then the",
        "embedded defaults under `AIRFLOW_HOME/astrid/`. `ASTRID_MODEL_PATH` overrides the shipped model.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(configuration_markdown(), end="")
