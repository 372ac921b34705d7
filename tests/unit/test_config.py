"""astrid.config.InferenceSchedulingConfig: defaults, every ASTRID_INFERENCE_* override, validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest

from astrid.config import InferenceSchedulingConfig, load_config
from astrid.errors import ConfigError

Config = InferenceSchedulingConfig
FIELDS = {f.name: f for f in fields(Config)}
ENV = {name: f.metadata["env"] for name, f in FIELDS.items()}

DEFAULTS = {
    "realtime_schedule": "*/15 * * * *",
    "realtime_enabled": True,
    "realtime_max_observations": 10,
    "batch_schedule": "0 2 * * *",
    "batch_enabled": True,
    "batch_max_observations": 100,
    "batch_chunk_size": 10,
    "validation_schedule": "0 4 * * 0",
    "validation_enabled": True,
    "validation_dataset_size": 50,
    "timezone": "UTC",
    "log_level": "INFO",
    "log_retention_days": 30,
    "log_rotation_mb": 100,
    "monitoring_enabled": True,
    "alert_on_failure": True,
    "performance_tracking": True,
    "model_uri": "models:/astrid-unet@champion",
    "confidence_threshold": 0.5,
    "inference_batch_size": 8,
    "device": "auto",
    "lease_minutes": 30,
    "max_attempts": 3,
    "max_image_side": 8192,
    "realtime_deadline_minutes": 10,
    "batch_deadline_minutes": 120,
    "validation_deadline_minutes": 180,
    "alert_email": "astrid-oncall@example.org",
    "alert_cooldown_minutes": 60,
    "min_success_rate": 0.9,
    "zero_detection_runs": 4,
    "min_validation_f1": 0.8,
    "max_memory_percent": 95.0,
    "max_load_per_cpu": 8.0,
    "max_gpu_memory_percent": 95.0,
    "ingest_mode": "copy",
    "ingest_roots": "",
    "events_enabled": True,
    "events_url": "redis://127.0.0.1:6379/0",
    "events_channel": "astrid.observations",
    "events_poll_seconds": 0.5,
    "zeropoint_key": "",
    "stamps_enabled": True,
    "stamps_max_per_observation": 200,
    "validation_candidates": 3,
    "training_enabled": True,
    "drift_schedule": "30 5 * * *",
    "drift_threshold": 0.2,
    "drift_p_value": 0.01,
    "reprocess_hours": 24.0,
}

# (raw env value, parsed value) for fields whose values are constrained; the rest get a generic
# override by type in _override(), so a newly added field is covered automatically.
OVERRIDES = {
    "realtime_schedule": ("*/5 * * * *", "*/5 * * * *"),
    "batch_schedule": ("30 1 * * 1-5", "30 1 * * 1-5"),
    "validation_schedule": ("@weekly", "@weekly"),
    "timezone": ("America/Santiago", "America/Santiago"),
    "log_level": ("debug", "DEBUG"),
    "device": ("cuda", "cuda"),
    "model_uri": ("/opt/models/astrid-unet", "/opt/models/astrid-unet"),
    "alert_email": ("a@example.org, b@example.org", "a@example.org, b@example.org"),
    "confidence_threshold": ("0.35", 0.35),
    "min_success_rate": ("1", 1.0),
    "min_validation_f1": ("0", 0.0),
    "max_memory_percent": ("100", 100.0),
    "max_gpu_memory_percent": ("12.5", 12.5),
    "max_load_per_cpu": ("1.5", 1.5),
    "star_residual_vetting": ("off", "off"),
    "ingest_mode": ("reference", "reference"),
    "ingest_roots": (
        "s3://drop-bucket/incoming, file:///data/in",
        "s3://drop-bucket/incoming, file:///data/in",
    ),
    "events_url": (
        "https://sqs.eu-west-1.amazonaws.com/123456789012/astrid-arrivals",
        "https://sqs.eu-west-1.amazonaws.com/123456789012/astrid-arrivals",
    ),
    "events_channel": ("astrid.test", "astrid.test"),
    "events_poll_seconds": ("0.25", 0.25),
    "zeropoint_key": ("ZP_AB", "ZP_AB"),
    "drift_schedule": ("0 6 * * *", "0 6 * * *"),
    "drift_threshold": ("0.3", 0.3),
    "drift_p_value": ("0.05", 0.05),
}


def _override(name: str) -> tuple[str, object]:
    if name in OVERRIDES:
        return OVERRIDES[name]
    default = FIELDS[name].default
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return "2.5", 2.5
    return "custom-value", "custom-value"


def test_defaults():
    config = Config()
    assert Config.from_env({}) == config
    for name, value in DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.alert_recipients == ["astrid-oncall@example.org"]
    assert config.schedule("realtime") == "*/15 * * * *"
    assert config.schedule("batch") == "0 2 * * *"
    assert config.schedule("validation") == "0 4 * * 0"
    assert config.deadline_minutes("batch") == 120
    with pytest.raises(FrozenInstanceError):
        config.lease_minutes = 1  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_env_override(name):
    raw, expected = _override(name)
    assert expected != FIELDS[name].default, f"{name}: the override must differ from the default"
    config = Config.from_env({ENV[name]: raw})
    assert getattr(config, name) == expected
    assert type(getattr(config, name)) is type(FIELDS[name].default)
    untouched = {n: getattr(config, n) for n in FIELDS if n != name}
    assert untouched == {n: getattr(Config(), n) for n in untouched}


def test_all_overrides_at_once_and_whitespace():
    environ = {ENV[name]: f"  {_override(name)[0]}  " for name in FIELDS}
    config = Config.from_env(environ)
    for name in FIELDS:
        assert getattr(config, name) == _override(name)[1], name


def test_empty_variable_means_default():
    assert Config.from_env({ENV["lease_minutes"]: "", ENV["timezone"]: "   "}) == Config()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("On", True), ("0", False), ("False", False), ("no", False)],
)
def test_booleans(raw, expected):
    assert Config.from_env({ENV["batch_enabled"]: raw}).batch_enabled is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        # invalid cron
        ("realtime_schedule", "every 5 minutes"),
        ("batch_schedule", "61 * * * *"),
        ("validation_schedule", "* * * *"),
        # negative / zero / non-numeric counts
        ("realtime_max_observations", "-5"),
        ("batch_max_observations", "0"),
        ("batch_chunk_size", "-1"),
        ("validation_dataset_size", "-50"),
        ("lease_minutes", "-30"),
        ("max_attempts", "0"),
        ("zero_detection_runs", "-4"),
        ("inference_batch_size", "eight"),
        ("log_retention_days", "1.5"),
        ("max_load_per_cpu", "-1"),
        ("max_load_per_cpu", "nan"),
        ("max_load_per_cpu", "inf"),
        # unknown choices
        ("log_level", "VERBOSE"),
        ("log_level", "trace"),
        ("device", "tpu"),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", "America"),  # a tzdata directory, not a zone
        ("timezone", "../../etc/passwd"),
        # bad booleans
        ("realtime_enabled", "maybe"),
        ("monitoring_enabled", "2"),
        # thresholds outside 0-1 / percentages outside (0, 100]
        ("confidence_threshold", "1.5"),
        ("confidence_threshold", "-0.1"),
        ("min_success_rate", "90"),
        ("min_validation_f1", "nan"),
        ("confidence_threshold", "half"),
        ("max_memory_percent", "0"),
        ("max_gpu_memory_percent", "101"),
        # star-residual vetting: card, off or a positive z
        ("star_residual_vetting", "sometimes"),
        ("star_residual_vetting", "-1"),
        ("star_residual_vetting", "0"),
        ("star_residual_vetting", "nan"),
        # arrival: ingest mode, roots, the doorbell
        ("ingest_mode", "move"),
        ("ingest_roots", "ftp://host/x"),
        ("events_url", "amqp://broker/x"),
        ("events_url", "redis://host:6379/db zero"),
        ("events_channel", "two words"),
        ("events_poll_seconds", "0"),
        ("events_poll_seconds", "600"),
        # a FITS keyword: 1-8 letters, digits, _ or -
        ("zeropoint_key", "MAG ZP"),
        ("zeropoint_key", "MAGZP_AB_TOO_LONG"),
        ("stamps_max_per_observation", "0"),
        ("stamps_enabled", "sometimes"),
    ],
)
def test_invalid_values_name_the_variable_and_the_value(name, raw):
    with pytest.raises(ConfigError) as err:
        Config.from_env({ENV[name]: raw})
    message = str(err.value)
    assert ENV[name] in message
    assert raw in message
    assert isinstance(err.value, ValueError)  # ConfigError is a ValueError too


def test_constructor_validates_too():
    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_LEASE_MINUTES"):
        Config(lease_minutes=-1)
    assert Config(log_level="warning").log_level == "WARNING"


@pytest.mark.parametrize("kind", ["realtime", "batch", "validation"])
def test_disabled_schedule_is_manual_only(kind):
    config = Config.from_env({ENV[f"{kind}_enabled"]: "false"})
    assert config.schedule(kind) is None
    others = {"realtime", "batch", "validation"} - {kind}
    assert all(config.schedule(other) == DEFAULTS[f"{other}_schedule"] for other in others)
    assert config.deadline_minutes(kind) == DEFAULTS[f"{kind}_deadline_minutes"]


def test_unknown_kind():
    with pytest.raises(ConfigError, match="hourly"):
        Config().schedule("hourly")
    with pytest.raises(ConfigError, match="hourly"):
        Config().deadline_minutes("hourly")


def test_alert_recipients():
    config = Config.from_env({ENV["alert_email"]: "a@example.org, ,b@example.org,"})
    assert config.alert_recipients == ["a@example.org", "b@example.org"]


def test_env_table_covers_every_field():
    table = Config.env_table()
    assert [row[0] for row in table] == [ENV[name] for name in FIELDS]
    assert len({row[0] for row in table}) == len(FIELDS)  # one variable per field
    assert set(DEFAULTS) <= set(FIELDS)
    for (env, default, doc), name in zip(table, FIELDS, strict=True):
        assert env.startswith("ASTRID_INFERENCE_")
        assert default == str(FIELDS[name].default)
        assert doc.strip()


def test_load_config_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("ASTRID_INFERENCE_LEASE_MINUTES", "45")
    monkeypatch.setenv("ASTRID_INFERENCE_BATCH_ENABLED", "off")
    config = load_config()
    assert config.lease_minutes == 45 and config.schedule("batch") is None
    monkeypatch.setenv("ASTRID_INFERENCE_LEASE_MINUTES", "-45")
    with pytest.raises(ConfigError, match="-45"):
        load_config()


def test_configuration_doc_is_generated_from_the_code():
    """docs/configuration.md lists every variable: regenerate with `python -m astrid.config`."""
    from pathlib import Path

    from astrid.config import configuration_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == configuration_markdown()


@pytest.mark.parametrize(
    ("raw", "level"), [("card", "card"), ("CARD", "card"), ("off", None), (" 2.5 ", 2.5)]
)
def test_vetting_level_is_what_the_engine_takes(raw, level):
    assert Config.from_env({ENV["star_residual_vetting"]: raw}).vetting_level == level


def test_events_kind_follows_the_url_and_the_switch():
    assert Config().events_kind == "redis"
    sqs = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    assert Config.from_env({ENV["events_url"]: sqs}).events_kind == "sqs"
    assert Config.from_env({ENV["events_enabled"]: "false"}).events_kind is None
    with pytest.raises(ConfigError) as err:
        Config.from_env({ENV["events_url"]: "redis://user:hunter2@host:6379/0/extra"})
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
