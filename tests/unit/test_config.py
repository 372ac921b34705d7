"""astrid.config.InferenceSchedulingConfig: defaults, every ASTRID_INFERENCE_* override, validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields
from datetime import timedelta
from pathlib import Path

import pytest

from astrid.config import InferenceSchedulingConfig, load_config
from astrid.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = str(REPO / "include" / "models" / "astrid-unet")

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
    "model_roots": "include/models",
    "model_uri": "models:/astrid-unet@champion",
    "confidence_threshold": 0.5,
    "inference_batch_size": 8,
    "device": "auto",
    "lease_minutes": 30,
    "max_attempts": 3,
    "max_image_side": 8192,
    "max_header_cards": 10_000,
    "min_pixel_scale_arcsec": 0.01,
    "max_pixel_scale_arcsec": 60.0,
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
    "model_uri": (SHIPPED, SHIPPED),  # a path under the default model root
    "model_roots": ("include/models:/opt/astrid/models", "include/models:/opt/astrid/models"),
    "gpu_pool": ("gpu-large", "gpu-large"),
    "gpu_queue": ("cuda.a100", "cuda.a100"),
    "alert_email": ("a@example.org, b@example.org", "a@example.org, b@example.org"),
    "confidence_threshold": ("0.35", 0.35),
    "min_success_rate": ("1", 1.0),
    "min_validation_f1": ("0", 0.0),
    "max_memory_percent": ("100", 100.0),
    "max_gpu_memory_percent": ("12.5", 12.5),
    "max_load_per_cpu": ("1.5", 1.5),
    "min_pixel_scale_arcsec": ("0.2", 0.2),
    "max_pixel_scale_arcsec": ("2.5", 2.5),
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
    "db_clean": ("api", "api"),
    "mwaa_environment": ("astrid-prod", "astrid-prod"),
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
def test_every_default_passes_its_own_rule(name):
    """The configuration trusts its defaults at load time (they are code, and checking them costs
    every DAG parse ~5 ms): this is where each is checked, through its variable's own rule."""
    f = FIELDS[name]
    f.metadata["rule"].check(f.metadata["env"], f.default)


def test_a_value_equal_to_the_default_but_given_in_another_type_is_still_checked():
    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_LEASE_MINUTES"):
        Config(lease_minutes=float(Config().lease_minutes))


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


@pytest.mark.parametrize("name", sorted(n for n, f in FIELDS.items() if f.default != ""))
@pytest.mark.parametrize("raw", ["", "   "])
def test_an_empty_variable_is_an_error_not_the_default(name, raw):
    """``VAR=`` from a template with an unset value must not silently run on defaults."""
    with pytest.raises(ConfigError, match=f"{ENV[name]} is set but empty: unset it"):
        Config.from_env({ENV[name]: raw})


@pytest.mark.parametrize("name", sorted(n for n, f in FIELDS.items() if f.default == ""))
def test_empty_is_the_default_where_the_default_means_none(name):
    """Settings whose default is empty ("no extra roots", "the standard zero-point keywords"):
    compose passes them as ``${VAR:-}``, so an empty value is that default, not an error."""
    assert getattr(Config.from_env({ENV[name]: ""}), name) == ""


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
        ("star_residual_vetting", "1e9"),
        # numbers that overflowed deep inside (timedelta, SQL LIMIT, retry counts) before
        ("realtime_deadline_minutes", "1e308"),
        ("batch_deadline_minutes", "1e400"),
        ("lease_minutes", "1000000000000"),
        ("realtime_max_observations", "1000000000000"),
        ("batch_max_observations", "1000000000000"),
        ("max_attempts", "1000000000000"),
        ("max_image_side", "1000000"),
        ("max_header_cards", "0"),
        ("confidence_threshold", "0"),  # the whole frame would be one detection
        ("confidence_threshold", "1"),  # nothing could ever be detected
        ("confidence_threshold", "-0"),
        # numbers Python would read but a person did not mean
        ("lease_minutes", "1_000"),
        ("lease_minutes", "３０"),  # full-width digits
        ("lease_minutes", "0x1e"),
        ("max_load_per_cpu", "infinity"),
        ("min_success_rate", "0.9.1"),
        # crons that never fire, or have a seconds / year field
        ("realtime_schedule", "0 0 31 2 *"),
        ("batch_schedule", "0 0 30 2 *"),
        ("realtime_schedule", "* * * * * *"),
        ("validation_schedule", "0 0 1 1 * 2030"),
        ("validation_schedule", "@reboot"),
        ("validation_schedule", "@once"),
        # names
        ("gpu_pool", "gpu pool"),
        ("gpu_queue", "gpu;default"),
        ("gpu_queue", "x" * 257),
        ("alert_email", "oncall"),
        ("alert_email", "Oncall <oncall@example.org>"),
        ("alert_email", "a..b@example.org"),
        ("alert_email", ","),
        # model: registry references or paths under the model roots only
        ("model_uri", "/etc"),
        ("model_uri", "/../../etc/passwd"),
        ("model_uri", "include/models/astrid-unet"),
        ("model_uri", "models:/other-model@champion"),
        ("model_uri", "latest; rm -rf"),
        ("model_roots", "/"),
        ("model_roots", "include/models::/opt/models"),
        ("model_roots", "/.."),
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
    assert Config(realtime_deadline_minutes=5).realtime_deadline_minutes == 5.0  # an int for a float
    for bad in (
        {"lease_minutes": True},  # a bool is an int to Python, not to us
        {"lease_minutes": 30.0},
        {"confidence_threshold": "0.5"},
        {"confidence_threshold": float("nan")},
        {"realtime_deadline_minutes": float("inf")},
        {"timezone": ""},
        {"batch_enabled": 1},
    ):
        with pytest.raises(ConfigError, match=ENV[next(iter(bad))]):
            Config(**bad)


NUMBERS = sorted(n for n, f in FIELDS.items() if type(f.default) in (int, float))


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("raw", ["1000000000000", "1e308", "-1"])
def test_every_number_is_bounded(name, raw):
    """No number reaches a timedelta, a SQL LIMIT or a retry loop unbounded."""
    if type(FIELDS[name].default) is int and "e" in raw:
        raw = "9" * 18
    with pytest.raises(ConfigError) as err:
        Config.from_env({ENV[name]: raw})
    assert ENV[name] in str(err.value) and ("out of range" in str(err.value) or "must" in str(err.value))


def test_largest_allowed_values_do_not_overflow_where_they_are_used():
    top = {n: FIELDS[n].metadata["rule"].hi for n in NUMBERS if FIELDS[n].metadata["rule"].hi is not None}
    assert set(NUMBERS) - set(top) == {"confidence_threshold"}  # (0, 1): checked by check_threshold
    del top["min_pixel_scale_arcsec"]  # must stay below the maximum
    config = Config(**{n: type(FIELDS[n].default)(v) for n, v in top.items()})
    for kind in ("realtime", "batch", "validation"):
        assert timedelta(minutes=config.deadline_minutes(kind)) <= timedelta(days=7)
    assert timedelta(minutes=config.lease_minutes) <= timedelta(days=7)


def test_pixel_scale_range_must_be_a_range():
    with pytest.raises(ConfigError, match=r"ASTRID_INFERENCE_MIN_PIXEL_SCALE=5\.0 must be smaller than"):
        Config.from_env({ENV["min_pixel_scale_arcsec"]: "5", ENV["max_pixel_scale_arcsec"]: "5"})


def test_mail_header_injection_in_alert_email_is_refused():
    with pytest.raises(ConfigError, match="ASTRID_INFERENCE_ALERT_EMAIL"):
        Config.from_env({ENV["alert_email"]: "ops@example.org\r\nBcc: attacker@example.com"})


def test_model_roots_and_a_path_model_uri(tmp_path):
    root = tmp_path / "models"
    (root / "m1").mkdir(parents=True)
    config = Config.from_env({ENV["model_roots"]: str(root), ENV["model_uri"]: str(root / "m1")})
    assert config.model_root_paths == (root.resolve(),)
    # the shipped root is relative to the project directory, wherever that is
    assert Config().model_root_paths == ((REPO / "include" / "models").resolve(),)
    with pytest.raises(ConfigError, match="not a model directory under the model roots"):
        Config.from_env({ENV["model_uri"]: str(root / "m1")})  # default roots: include/models only


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
