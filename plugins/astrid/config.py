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
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astrid.dag_kinds import dag_kind
from astrid.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEVICES = ("auto", "cpu", "cuda")
# how the maintenance DAG cleans the metadata DB (astrid.maintenance.resolve_db_clean_mode)
DB_CLEAN_MODES = ("auto", "api", "mwaa", "cli", "external", "off")
# Airflow's own presets (airflow.utils.dates.cron_presets): anything else must be a 5-field cron
CRON_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
WEEK_MINUTES = 7 * 24 * 60
MAX_COUNT = 100_000  # observations per run or chunk: the bound of every such count


class Rule(NamedTuple):
    """The values a setting accepts: ``check(env, value)`` raises :class:`ConfigError` naming the
    variable, the value and the fix; ``text`` is the "allowed" column of docs/configuration.md.
    (A NamedTuple, not a dataclass: the DAG files build the configuration at every parse.)"""

    check: Callable[[str, Any], None]
    text: str
    hi: float | None = None  # the largest value allowed, for a number


def _env(name: str, doc: str, rule: Rule, **kwargs: Any) -> Any:
    return field(metadata={"env": name, "doc": doc, "rule": rule}, **kwargs)


def _between(lo: float, hi: float, *, open_lo: bool = False, unit: str = "") -> Rule:
    """A number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``): every number has both bounds, so
    no value can overflow a ``timedelta``, a SQL ``LIMIT`` or a retry count deep inside."""

    def check(env: str, value: float) -> None:
        if (value <= lo if open_lo else value < lo) or value > hi:
            low = f"greater than {lo:g}" if open_lo else f"at least {lo:g}"
            raise ConfigError(f"{env}={value!r} is out of range: it must be {low} and at most {hi:g}{unit}")

    return Rule(check, f"{'(' if open_lo else '['}{lo:g}, {hi:g}]{unit}", hi)


def _check_cron(env: str, value: str) -> None:
    from croniter import CroniterBadDateError, croniter  # small; imported lazily to keep DAG parse fast

    example = "e.g. '*/15 * * * *' (minute hour day-of-month month day-of-week) or @daily"
    if value.startswith("@"):
        if value not in CRON_PRESETS:
            raise ConfigError(
                f"{env}={value!r} is not a schedule preset: use one of {', '.join(CRON_PRESETS)}"
            )
        return
    if len(value.split()) != 5:
        raise ConfigError(
            f"{env}={value!r} has {len(value.split())} fields, not 5: AstrID schedules are minute-level "
            f"crons without a seconds or year field ({example})"
        )
    if not croniter.is_valid(value):
        raise ConfigError(f"{env}={value!r} is not a valid cron expression ({example})")
    try:
        croniter(value, datetime(2025, 1, 1)).get_next(datetime)
    except CroniterBadDateError:  # e.g. '0 0 31 2 *': valid syntax, but no such date
        raise ConfigError(
            f"{env}={value!r} never fires (no date matches its day and month fields): fix the cron"
        ) from None


def _check_timezone(env: str, value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory: IsADirectoryError
        raise ConfigError(
            f"{env}={value!r} is not a known IANA timezone (e.g. 'UTC', 'America/Santiago')"
        ) from None


def parse_vetting(name: str, value: str) -> float | str | None:
    """A star-residual vetting setting: ``"card"``, ``"off"`` (→ ``None``) or a positive z level."""
    word = value.strip().lower()
    if word in ("card", "off"):
        return None if word == "off" else "card"
    level = float(word) if _FLOAT.fullmatch(word) else math.nan
    if not (math.isfinite(level) and 0 < level <= 100):
        raise ConfigError(f"{name}={value!r} must be card, off or a number of σ in (0, 100] (e.g. 2.5)")
    return level


def _one_of(choices: tuple[str, ...], fold: Callable[[str], str] = str) -> Rule:
    def check(env: str, value: str) -> None:
        if fold(value) not in choices:
            raise ConfigError(f"{env}={value!r} is not one of {', '.join(choices)}")

    return Rule(check, ", ".join(choices))


# an address as SMTP servers accept it: no spaces, quotes, angle brackets or control characters
# (a CR/LF would inject mail headers); a host name of letters, digits, dots and hyphens
_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _check_emails(env: str, value: str) -> None:
    addresses = [a.strip() for a in value.split(",") if a.strip()]  # a stray comma is harmless
    if not addresses:
        raise ConfigError(f"{env}={value!r} lists no address: give comma-separated addresses")
    for address in addresses:
        if not _EMAIL.fullmatch(address) or ".." in address:
            raise ConfigError(
                f"{env}={value!r}: {address!r} is not an email address (name@host, comma-separated, "
                "no display names or spaces)"
            )


def _airflow_name(what: str) -> Rule:
    """Pool and queue names: what Airflow's metadata columns (256 characters) and Celery accept."""

    def check(env: str, value: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,256}", value):
            raise ConfigError(
                f"{env}={value!r} is not a valid {what} name: use 1-256 letters, digits, '_', '.' or '-'"
            )

    return Rule(check, "letters, digits, `_.-`")


def _check_model_roots(env: str, value: str) -> None:
    for entry in value.split(os.pathsep):
        if not entry.strip():
            raise ConfigError(f"{env}={value!r} has an empty entry: separate directories with '{os.pathsep}'")
        if any(unicodedata.category(c) in ("Cc", "Cf") for c in entry):
            raise ConfigError(f"{env}={value!r} contains control characters")
        if _root_path(entry) == Path(_root_path(entry).anchor):
            raise ConfigError(
                f"{env}={value!r}: {entry!r} is the filesystem root, which would let a trigger load any "
                "file on the worker: name the directories that hold models"
            )


def model_root_paths(roots: str) -> tuple[Path, ...]:
    """``ASTRID_INFERENCE_MODEL_ROOTS`` as absolute, symlink-free paths; ``""`` → none."""
    return tuple(_root_path(entry) for entry in roots.split(os.pathsep) if entry.strip())


def _root_path(entry: str) -> Path:
    """A model root as an absolute, symlink-free path; relative entries are under the project."""
    from astrid.paths import REPO_ROOT

    return (REPO_ROOT / entry.strip()).resolve()


def _check_vetting(env: str, value: str) -> None:
    parse_vetting(env, value)


_SQS_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?/[0-9]+/[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_REDIS_URL = re.compile(r"^rediss?://[^\s/]+(/[0-9]{1,2})?$")


def _events_url(env: str, value: str) -> None:
    value = value.strip()
    if not (_REDIS_URL.match(value) or _SQS_URL.match(value)):
        raise ConfigError(
            f"{env}={_shown(value)} is neither a Redis URL (redis://host:6379/0) nor an SQS queue URL "
            "(https://sqs.<region>.amazonaws.com/<account>/<queue>)"
        )


def _shown(value: str) -> str:
    """A URL for an error message, its password masked."""
    return repr(re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", value))


def _channel(env: str, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", value):
        raise ConfigError(f"{env}={value!r} must be 1-128 letters, digits or . _ : -")


def _ingest_roots(env: str, value: str) -> None:
    for root in (r.strip() for r in value.split(",")):
        if root and not re.match(r"^(file://|s3://[a-z0-9][a-z0-9.-]{1,62}|/)", root):
            raise ConfigError(f"{env}: {root!r} is not a file://, s3://bucket or absolute-path root")


def _fits_keyword(env: str, value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,8}", value):
        raise ConfigError(
            f"{env}={value!r} is not a FITS keyword: 1-8 letters, digits, '_' or '-' (e.g. MAGZP)"
        )


def _mwaa_name(env: str, value: str) -> None:
    if value and not re.fullmatch(r"[A-Za-z][0-9A-Za-z_-]{0,79}", value):
        raise ConfigError(
            f"{env}={value!r} is not an MWAA environment name: a letter, then up to 79 of letters, digits, '-' or '_'"
        )


_BOOL = Rule(lambda env, value: None, "true, false (or 1/0, yes/no, on/off)")
_COUNT = _between(1, MAX_COUNT)
_FRACTION = _between(0, 1)
_PERCENT = _between(0, 100, open_lo=True)
_DEADLINE = _between(0, WEEK_MINUTES, open_lo=True)
_PIXEL_SCALE = _between(0, 3600, open_lo=True, unit="″/pixel")
_CRON = Rule(_check_cron, f"5-field cron that fires, or {', '.join(CRON_PRESETS)}")


@dataclass(frozen=True)
class InferenceSchedulingConfig:
    """Everything the DAGs, the operators and the alerts read from configuration."""

    realtime_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_REALTIME", "cron for realtime inference", _CRON, default="*/15 * * * *"
    )
    realtime_enabled: bool = _env(
        "ASTRID_INFERENCE_REALTIME_ENABLED", "false: DAG exists, no schedule", _BOOL, default=True
    )
    realtime_max_observations: int = _env(
        "ASTRID_INFERENCE_MAX_OBSERVATIONS", "observations claimed per realtime run", _COUNT, default=10
    )
    batch_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_BATCH", "cron for the nightly batch", _CRON, default="0 2 * * *"
    )
    batch_enabled: bool = _env(
        "ASTRID_INFERENCE_BATCH_ENABLED", "false: DAG exists, no schedule", _BOOL, default=True
    )
    batch_max_observations: int = _env(
        "ASTRID_INFERENCE_BATCH_MAX_OBSERVATIONS", "observations claimed per batch run", _COUNT, default=100
    )
    batch_chunk_size: int = _env(
        "ASTRID_INFERENCE_BATCH_CHUNK_SIZE", "observations per mapped batch task", _COUNT, default=10
    )
    validation_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_VALIDATION", "cron for weekly model validation", _CRON, default="0 4 * * 0"
    )
    validation_enabled: bool = _env(
        "ASTRID_INFERENCE_VALIDATION_ENABLED", "false: DAG exists, no schedule", _BOOL, default=True
    )
    validation_dataset_size: int = _env(
        "ASTRID_INFERENCE_VALIDATION_DATASET_SIZE",
        "labelled observations per validation (the DAG param allows up to 1000)",
        _between(1, 1000),
        default=50,
    )
    timezone: str = _env(
        "ASTRID_INFERENCE_TIMEZONE",
        "IANA timezone of the schedules",
        Rule(_check_timezone, "IANA name"),
        default="UTC",
    )
    validation_candidates: int = _env(
        "ASTRID_INFERENCE_VALIDATION_CANDIDATES",
        "latest registry versions scored against the champion besides the challenger (0: the challenger only)",
        _between(0, 100),
        default=3,
    )
    training_enabled: bool = _env(
        "ASTRID_INFERENCE_TRAINING_ENABLED",
        "false: the training DAG runs only when triggered (not on drift/degradation)",
        _BOOL,
        default=True,
    )
    training_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_TRAINING_DEADLINE_MINUTES", "SLA: training run late after", _DEADLINE, default=600.0
    )
    training_cpu_epochs: int = _env(
        "ASTRID_INFERENCE_TRAINING_CPU_EPOCHS",
        "epochs of the bounded CPU recipe (without CUDA; with it: the shipped recipe)",
        _between(1, 1000),
        default=8,
    )
    training_cpu_observations: int = _env(
        "ASTRID_INFERENCE_TRAINING_CPU_OBSERVATIONS",
        "synthetic frames of the bounded CPU recipe",
        _between(1, 10_000),
        default=80,
    )
    training_labelled: int = _env(
        "ASTRID_INFERENCE_TRAINING_LABELLED",
        "labelled catalog observations trained on (those past the validation set)",
        _between(0, MAX_COUNT),
        default=200,
    )
    drift_schedule: str = _env(
        "ASTRID_INFERENCE_SCHEDULE_DRIFT", "cron for the nightly drift check", _CRON, default="30 5 * * *"
    )
    drift_enabled: bool = _env(
        "ASTRID_INFERENCE_DRIFT_ENABLED", "false: DAG exists, no schedule", _BOOL, default=True
    )
    drift_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_DRIFT_DEADLINE_MINUTES", "SLA: drift check late after", _DEADLINE, default=60.0
    )
    drift_window_hours: float = _env(
        "ASTRID_INFERENCE_DRIFT_WINDOW_HOURS",
        "recent window compared with the reference",
        _between(0, 24 * 90, open_lo=True, unit=" h"),
        default=24.0,
    )
    drift_reference_hours: float = _env(
        "ASTRID_INFERENCE_DRIFT_REFERENCE_HOURS",
        "the champion's reference window: its first hours of serving",
        _between(0, 24 * 365, open_lo=True, unit=" h"),
        default=168.0,
    )
    drift_min_samples: int = _env(
        "ASTRID_INFERENCE_DRIFT_MIN_SAMPLES",
        "fewer values than this in either window: that statistic is not tested",
        _between(2, MAX_COUNT),
        default=30,
    )
    drift_threshold: float = _env(
        "ASTRID_INFERENCE_DRIFT_THRESHOLD",
        "KS distance D at which a statistic has drifted (0.2 ≈ a shift of half a σ)",
        _between(0, 1, open_lo=True),
        default=0.2,
    )
    drift_p_value: float = _env(
        "ASTRID_INFERENCE_DRIFT_P_VALUE",
        "drift also needs the KS test significant at this level (Bonferroni over the statistics)",
        _between(0, 1, open_lo=True),
        default=0.01,
    )
    serving_enabled: bool = _env(
        "ASTRID_INFERENCE_SERVING_ENABLED",
        "false: a new serving model is not warmed and reprocessed automatically",
        _BOOL,
        default=True,
    )
    serving_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_SERVING_DEADLINE_MINUTES",
        "SLA: warm-up + reprocessing late after",
        _DEADLINE,
        default=120.0,
    )
    reprocess_hours: float = _env(
        "ASTRID_INFERENCE_REPROCESS_HOURS",
        "after a promotion/rollback, reprocess observations of the last hours",
        _between(0, 24 * 90, open_lo=True, unit=" h"),
        default=24.0,
    )
    reprocess_max_observations: int = _env(
        "ASTRID_INFERENCE_REPROCESS_MAX_OBSERVATIONS",
        "at most this many observations reprocessed per serving-model change",
        _COUNT,
        default=500,
    )
    log_level: str = _env(
        "ASTRID_INFERENCE_LOG_LEVEL",
        "level of AstrID's task log lines",
        _one_of(LOG_LEVELS, fold=str.upper),
        default="INFO",
    )
    log_retention_days: int = _env(
        "ASTRID_INFERENCE_LOG_RETENTION_DAYS",
        "days of task logs and metadata kept",
        _between(1, 3650),
        default=30,
    )
    log_rotation_mb: int = _env(
        "ASTRID_INFERENCE_LOG_ROTATION_MB",
        "size at which local log files rotate",
        _between(1, 100_000),
        default=100,
    )
    monitoring_enabled: bool = _env(
        "ASTRID_INFERENCE_MONITORING_ENABLED", "emit astrid.* StatsD metrics", _BOOL, default=True
    )
    alert_on_failure: bool = _env(
        "ASTRID_INFERENCE_ALERT_ON_FAILURE", "email/webhook when a task fails for good", _BOOL, default=True
    )
    performance_tracking: bool = _env(
        "ASTRID_INFERENCE_PERFORMANCE_TRACKING", "log runs and metrics to MLflow", _BOOL, default=True
    )
    model_roots: str = _env(
        "ASTRID_INFERENCE_MODEL_ROOTS",
        f"directories ('{os.pathsep}'-separated; relative ones are under the project directory) that a "
        "model path given as model_version or ASTRID_INFERENCE_MODEL_URI must lie under",
        Rule(_check_model_roots, "directories, not `/`"),
        default="include/models",
    )
    model_uri: str = _env(
        "ASTRID_INFERENCE_MODEL_URI",
        "the model runs use unless triggered with model_version",
        Rule(
            lambda env, value: None,
            "champion, challenger, a version, models:/astrid-unet@alias or /N, "
            "or a path under the model roots",
        ),
        default="models:/astrid-unet@champion",
    )
    confidence_threshold: float = _env(
        "ASTRID_INFERENCE_CONFIDENCE_THRESHOLD",
        "probability cut for a detection",
        Rule(lambda env, value: check_threshold(env, value, ConfigError), "(0, 1)"),
        default=0.5,
    )
    star_residual_vetting: str = _env(
        "ASTRID_INFERENCE_STAR_RESIDUAL_VETTING",
        "candidates on stars must exceed the frame's star residual by this many σ: card (the model "
        "card's calibrated level), off, or a number such as 2.5",
        Rule(_check_vetting, "card, off or (0, 100]"),
        default="card",
    )
    inference_batch_size: int = _env(
        "ASTRID_INFERENCE_BATCH_SIZE", "tiles per forward pass", _between(1, 1024), default=8
    )
    device: str = _env("ASTRID_INFERENCE_DEVICE", "where the U-Net runs", _one_of(DEVICES), default="auto")
    gpu_pool: str = _env(
        "ASTRID_INFERENCE_GPU_POOL",
        "Airflow pool capping concurrent U-Net tasks",
        _airflow_name("pool"),
        default="gpu",
    )
    gpu_queue: str = _env(
        "ASTRID_INFERENCE_GPU_QUEUE",
        "executor queue of U-Net tasks (default on MWAA)",
        _airflow_name("queue"),
        default="gpu",
    )
    lease_minutes: int = _env(
        "ASTRID_INFERENCE_LEASE_MINUTES",
        "claim lease; expired claims are claimable again",
        _between(1, WEEK_MINUTES),
        default=30,
    )
    max_attempts: int = _env(
        "ASTRID_INFERENCE_MAX_ATTEMPTS",
        "failures before an observation is left failed",
        _between(1, 100),
        default=3,
    )
    max_image_side: int = _env(
        "ASTRID_INFERENCE_MAX_IMAGE_SIDE",
        "largest accepted frame side in pixels",
        _between(64, 65_536),
        default=8192,
    )
    max_header_cards: int = _env(
        "ASTRID_INFERENCE_MAX_HEADER_CARDS",
        "largest FITS header accepted, in 80-byte cards, counted over the headers before the image "
        "(10000 cards = 800 kB); checked before astropy parses it",
        _between(36, 1_000_000),
        default=10_000,
    )
    min_pixel_scale_arcsec: float = _env(
        "ASTRID_INFERENCE_MIN_PIXEL_SCALE",
        "smallest plausible WCS pixel scale (arcsec/pixel); below it RA/Dec are not trusted",
        _PIXEL_SCALE,
        default=0.01,
    )
    max_pixel_scale_arcsec: float = _env(
        "ASTRID_INFERENCE_MAX_PIXEL_SCALE",
        "largest plausible WCS pixel scale (arcsec/pixel); above it RA/Dec are not trusted",
        _PIXEL_SCALE,
        default=60.0,
    )
    realtime_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES",
        "SLA: realtime run late after (fractions allowed)",
        _DEADLINE,
        default=10.0,
    )
    batch_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_BATCH_DEADLINE_MINUTES", "SLA: batch run late after", _DEADLINE, default=120.0
    )
    validation_deadline_minutes: float = _env(
        "ASTRID_INFERENCE_VALIDATION_DEADLINE_MINUTES", "SLA: validation late after", _DEADLINE, default=180.0
    )
    alert_email: str = _env(
        "ASTRID_INFERENCE_ALERT_EMAIL",
        "recipients of alert emails (comma separated)",
        Rule(_check_emails, "name@host, …"),
        default="astrid-oncall@example.org",
    )
    alert_cooldown_minutes: int = _env(
        "ASTRID_INFERENCE_ALERT_COOLDOWN_MINUTES",
        "same alert suppressed for",
        _between(1, WEEK_MINUTES),
        default=60,
    )
    min_success_rate: float = _env(
        "ASTRID_INFERENCE_MIN_SUCCESS_RATE",
        "degradation alert below this run success rate",
        _FRACTION,
        default=0.9,
    )
    zero_detection_runs: int = _env(
        "ASTRID_INFERENCE_ZERO_DETECTION_RUNS",
        "alert after this many realtime runs with none",
        _between(1, 1000),
        default=4,
    )
    min_validation_f1: float = _env(
        "ASTRID_INFERENCE_MIN_VALIDATION_F1", "champion below this F1 is rolled back", _FRACTION, default=0.8
    )
    max_memory_percent: float = _env(
        "ASTRID_INFERENCE_MAX_MEMORY_PERCENT",
        "pre-flight: skip run above this host memory use",
        _PERCENT,
        default=95.0,
    )
    max_load_per_cpu: float = _env(
        "ASTRID_INFERENCE_MAX_LOAD_PER_CPU",
        "pre-flight: skip run above this 1-min load per CPU",
        _between(0, 1000, open_lo=True),
        default=8.0,
    )
    max_gpu_memory_percent: float = _env(
        "ASTRID_INFERENCE_MAX_GPU_MEMORY_PERCENT",
        "pre-flight: skip run above this GPU memory use",
        _PERCENT,
        default=95.0,
    )
    # -- arrival: ingestion and the "observation arrived" doorbell (astrid.ingest, astrid.events)
    ingest_mode: str = _env(
        "ASTRID_INFERENCE_INGEST_MODE",
        "copy (files copied into the storage root: immutable, the default) or reference (registered "
        "in place; they must already lie under the storage root)",
        _one_of(("copy", "reference")),
        default="copy",
    )
    ingest_roots: str = _env(
        "ASTRID_INFERENCE_INGEST_ROOTS",
        "extra roots (comma separated file:// or s3:// URIs) POST /astrid/observations may read "
        "from, besides the storage root; the CLI reads any path its user can",
        Rule(_ingest_roots, "file://, s3://bucket or absolute paths, comma separated; empty: none"),
        default="",
    )
    ingest_subtract: bool = _env(
        "ASTRID_INFERENCE_INGEST_SUBTRACT",
        "an ingest without a difference image aligns, PSF-matches and subtracts the pair at once "
        "(preprocessed; a pair that gives no honest difference is refused); false: it is registered "
        "ingested and the DAGs' subtract task does it",
        _BOOL,
        default=True,
    )
    events_enabled: bool = _env(
        "ASTRID_INFERENCE_EVENTS_ENABLED",
        "publish an observation-arrived message after each ingest and run the realtime DAG on it "
        "(false: cron only)",
        _BOOL,
        default=True,
    )
    events_url: str = _env(
        "ASTRID_INFERENCE_EVENTS_URL",
        "where arrivals are published: redis://host:port/db (pub/sub) or an SQS queue URL; the "
        "triggerer listens through the Airflow connection astrid_events (same Redis) or aws_default (SQS)",
        Rule(_events_url, "redis://host:port/db or an SQS queue URL"),
        default="redis://127.0.0.1:6379/0",
    )
    events_channel: str = _env(
        "ASTRID_INFERENCE_EVENTS_CHANNEL",
        "Redis pub/sub channel of arrivals",
        Rule(_channel, "1-128 of letters, digits, `._:-`"),
        default="astrid.observations",
    )
    events_poll_seconds: float = _env(
        "ASTRID_INFERENCE_EVENTS_POLL_SECONDS",
        "pause between the redis trigger's polls for an arrival message (the provider's default is "
        "60 s): 0.5 s waits < 1 s for ~0.2 % of a core, measured in docs/benchmarks.md (Arrival latency); "
        "on SQS (long polling) the pause after an empty receive, at least 1 s",
        _between(0.05, 60, unit=" s"),
        default=0.5,
    )
    zeropoint_key: str = _env(
        "ASTRID_INFERENCE_ZEROPOINT_KEY",
        "science-header keyword of the AB zero point, tried before MAGZP, PHOTZP and MAGZPT",
        Rule(_fits_keyword, "a FITS keyword (1-8 of letters, digits, `_-`); empty: the standard ones"),
        default="",
    )
    stamps_enabled: bool = _env(
        "ASTRID_INFERENCE_STAMPS_ENABLED",
        "write science/reference/difference/probability cutouts of each detection (PNG + FITS)",
        _BOOL,
        default=True,
    )
    stamps_max_per_observation: int = _env(
        "ASTRID_INFERENCE_STAMPS_MAX_PER_OBSERVATION",
        "stamps for at most this many detections per observation (highest scores first)",
        _COUNT,
        default=200,
    )
    # -- maintenance: how the maintenance DAG cleans Airflow's metadata DB (astrid.maintenance)
    db_clean: str = _env(
        "ASTRID_INFERENCE_DB_CLEAN",
        "how the maintenance DAG runs `airflow db clean`: auto (by platform), api (the AstrID plugin in "
        "the api-server), mwaa (MWAA's CLI endpoint), cli (a subprocess; needs metadata-DB access), "
        "external or off (the task skips, naming what to run instead); docs/deploy.md",
        _one_of(DB_CLEAN_MODES),
        default="auto",
    )
    mwaa_environment: str = _env(
        "ASTRID_INFERENCE_MWAA_ENVIRONMENT",
        "name of the MWAA environment whose CLI endpoint db_clean uses (mwaa mode; empty: the task skips)",
        Rule(_mwaa_name, "an MWAA environment name; empty: none"),
        default="",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            given = getattr(self, f.name)
            if type(given) is type(f.default) and given == f.default:
                # a default is code, not input: tests check every default against its rule
                # (test_config.py), and skipping the checks here (cron parsing above all) keeps
                # ~5 ms off every DAG file's parse
                continue
            value = _typed(f.metadata["env"], given, type(f.default), empty_ok=f.default == "")
            object.__setattr__(self, f.name, value)
            f.metadata["rule"].check(f.metadata["env"], value)
        object.__setattr__(self, "events_url", self.events_url.strip())
        # validated case-insensitively (so errors show the value as given), stored upper-case
        object.__setattr__(self, "log_level", self.log_level.upper())
        self._check_together()

    def _check_together(self) -> None:
        env = {f.name: f.metadata["env"] for f in fields(self)}
        if self.min_pixel_scale_arcsec >= self.max_pixel_scale_arcsec:
            raise ConfigError(
                f"{env['min_pixel_scale_arcsec']}={self.min_pixel_scale_arcsec!r} must be smaller than "
                f"{env['max_pixel_scale_arcsec']}={self.max_pixel_scale_arcsec!r}"
            )
        from astrid.model_reference import ModelReferenceError, parse_model_reference

        try:
            parse_model_reference(self.model_uri, self.model_root_paths, what=env["model_uri"])
        except ModelReferenceError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InferenceSchedulingConfig:
        """Defaults overridden by any ``ASTRID_INFERENCE_*`` variable that is set.

        A variable set to an empty string is an error, not the default: a deployment that
        templates ``VAR=${UNSET}`` should hear about it instead of silently running on defaults.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            env = f.metadata["env"]
            raw = environ.get(env)
            if raw is None:
                continue
            if raw.strip() == "" and f.default == "":  # empty is this setting's default: "none"
                continue
            if raw.strip() == "":
                raise ConfigError(
                    f"{env} is set but empty: unset it to use the default ({f.default}) or give a value"
                )
            value = _parse(env, raw.strip(), type(f.default))
            try:
                f.metadata["rule"].check(env, value)
            except ConfigError as exc:
                shown = str(value).lower() if isinstance(value, bool) else repr(value)
                raise ConfigError(
                    str(exc) if shown in (raw, repr(raw)) else f"{exc} (it is set to {raw!r})"
                ) from None
            values[f.name] = value
        return cls(**values)

    def schedule(self, kind: str) -> str | None:
        """Cron of a DAG kind (:mod:`astrid.dag_kinds`); ``None`` (manual only) when disabled, or
        when the kind is scheduled on Assets (see :meth:`enabled`)."""
        row = dag_kind(kind)
        if row.schedule_setting is None or not self.enabled(kind):
            return None
        return getattr(self, row.schedule_setting)

    def enabled(self, kind: str) -> bool:
        """The kind's switch: scheduled (cron or Assets) when true, manual only when false."""
        return bool(getattr(self, dag_kind(kind).enabled_setting))

    def deadline_minutes(self, kind: str) -> float:
        return getattr(self, dag_kind(kind).deadline_setting)

    @property
    def vetting_level(self) -> float | str | None:
        """``"card"``, ``None`` (off) or a z level: what ``InferenceEngine.analyse(min_excess=)`` takes."""
        return parse_vetting("ASTRID_INFERENCE_STAR_RESIDUAL_VETTING", self.star_residual_vetting)

    @property
    def events_kind(self) -> str | None:
        """``"redis"``, ``"sqs"``, or ``None`` when events are switched off."""
        if not self.events_enabled:
            return None
        return "redis" if self.events_url.startswith(("redis://", "rediss://")) else "sqs"

    @property
    def ingest_root_uris(self) -> list[str]:
        return [r.strip() for r in self.ingest_roots.split(",") if r.strip()]

    @property
    def alert_recipients(self) -> list[str]:
        return [a.strip() for a in self.alert_email.split(",") if a.strip()]

    @property
    def model_root_paths(self) -> tuple[Path, ...]:
        """The model roots as absolute, symlink-free directories (see :mod:`astrid.model_reference`)."""
        return model_root_paths(self.model_roots)

    @property
    def fits_limits(self) -> dict[str, float]:
        """What a FITS read accepts besides the frame side: ``astrid.imaging.fits.ReadLimits``'s
        other fields (a plain dict: the DAG files hand it to the operators without importing astropy)."""
        return {
            "max_header_cards": self.max_header_cards,
            "min_pixel_scale": self.min_pixel_scale_arcsec,
            "max_pixel_scale": self.max_pixel_scale_arcsec,
        }

    @classmethod
    def env_table(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) rows: the README's configuration table is generated from this."""
        return [(f.metadata["env"], str(f.default), f.metadata["doc"]) for f in fields(cls)]

    @classmethod
    def allowed(cls, env: str) -> str:
        """The "allowed" column of docs/configuration.md for one variable."""
        return next(f.metadata["rule"].text for f in fields(cls) if f.metadata["env"] == env)


def check_threshold(name: str, value: Any, error: type[Exception] = ValueError) -> float:
    """A detection threshold: a finite probability strictly between 0 and 1.

    0 would turn the whole frame into one detection and 1 (or more, or NaN) finds nothing, so
    both ends are refused wherever a threshold enters: configuration, trigger, CLI, model card.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{name}={value!r} is not a number: give a probability between 0 and 1, e.g. 0.5")
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise error(f"{name}={value!r} must lie strictly between 0 and 1 (e.g. 0.5)")
    return float(value)


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?")


def _parse(env: str, raw: str, kind: type) -> Any:
    """The typed value of an environment string. Numbers are ASCII decimals only: ``int()`` and
    ``float()`` would also take ``1_000``, full-width digits, ``nan`` and ``infinity``."""
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{env}={raw!r} is not a boolean: use true or false")
    if kind is int:
        if not _INT.fullmatch(raw):
            raise ConfigError(f"{env}={raw!r} is not an integer: write it in digits, e.g. 30")
        return int(raw)
    if kind is float:
        if not _FLOAT.fullmatch(raw):
            raise ConfigError(f"{env}={raw!r} is not a number: write it in digits, e.g. 2.5")
        value = float(raw)
        if not math.isfinite(value):
            raise ConfigError(f"{env}={raw!r} is not a finite number")
        return value + 0.0  # -0 → 0
    return raw


def _typed(env: str, value: Any, kind: type, *, empty_ok: bool = False) -> Any:
    """Constructor arguments get the types the environment parser gives (no bool for an int)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"{env}={value!r} must be a {kind.__name__}, not a {type(value).__name__}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{env}={value!r} is not a finite number")
    if kind is str and not value.strip() and not empty_ok:
        raise ConfigError(f"{env} is empty: unset it to use the default or give a value")
    return value


def load_config() -> InferenceSchedulingConfig:
    """The configuration in force for this process (environment read each call: cheap, testable)."""
    return InferenceSchedulingConfig.from_env()


def configuration_markdown() -> str:
    """docs/configuration.md, generated from the dataclass (a test checks the file is current)."""
    lines = [
        "# Configuration",
        "",
        "Every setting is an environment variable read by `astrid.config.InferenceSchedulingConfig`.",
        "Invalid values fail DAG parsing with a message naming the variable, the value and the fix.",
        "Every number is bounded (the *allowed* column); a variable set to an empty string is an",
        "error, not the default: unset it to get the default.",
        "Generated by `python -m astrid.config > docs/configuration.md`; do not edit by hand.",
        "",
        "| variable | default | allowed | meaning |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{env}` | `{default}` | {InferenceSchedulingConfig.allowed(env)} | {doc} |"
        for env, default, doc in InferenceSchedulingConfig.env_table()
    ]
    lines += [
        "",
        "Connections (Airflow): `astrid_catalog` (extra `sqlalchemy_url`, or a postgres connection),",
        "`astrid_storage` (extra `root`: `file://…` or `s3://bucket/prefix`, plus `aws_conn_id`),",
        "`mlflow_default` (tracking URI), `smtp_default`, optional `slack_webhook_default`;",
        "for arrivals, `astrid_events` (the triggerer's Redis: the same server as",
        "`ASTRID_INFERENCE_EVENTS_URL`; `make up` and compose build it from that variable) or",
        '`aws_default` (SQS). See docs/deploy.md, "Arrivals: runs on ingest".',
        "Without them: `ASTRID_CATALOG_URL`, `ASTRID_STORAGE_ROOT`, `MLFLOW_TRACKING_URI`, then the",
        "embedded defaults under `AIRFLOW_HOME/astrid/`. `ASTRID_MODEL_PATH` overrides the shipped model.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(configuration_markdown(), end="")
