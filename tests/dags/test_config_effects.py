"""Every documented ASTRID_INFERENCE_* variable changes behaviour (issue 17.8).

Table-driven over ``InferenceSchedulingConfig.env_table()`` (the list docs/configuration.md and
.env.example are generated from): each variable maps to a probe that runs the real code reading
it, once with the variable unset and once with a different value, and the observable result must
differ (and match the value where that is direct). A documented knob without an entry here, or one
whose probe sees no difference, fails.

Probes, by where the value takes effect:
- DAG parse: the real DAG files are executed with the variable set (schedules, params, pools,
  queues, deadlines, callbacks);
- the tasks' run time: the configuration reaches the operators as ``default_args`` at parse time
  (``OPERATOR_SETTINGS``), so the probe takes the task from the DAG file parsed with the variable
  set and runs it, against a real SQLite catalog, real FITS files from the synthetic survey, the
  shipped U-Net on CPU and a real MLflow store; the few settings still read while a task runs
  (alert recipients and cool-down, logging) through the real functions that read them.
  Two Airflow runtime objects are stood in for, because these probes call a task's execute()
  directly instead of running a whole DAG (tests/dags/test_dag_runs.py does that): the
  TaskInstance (a recorder of xcom_push) and the notifier's delivery (recorded; real delivery is
  tests/dags/test_alerts_and_metrics.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from astrid.config import InferenceSchedulingConfig

REPO = Path(__file__).resolve().parents[2]
RT, BATCH, VAL, MAINT = (
    "astrid_realtime_inference",
    "astrid_batch_inference",
    "astrid_model_validation",
    "astrid_maintenance",
)
TRAIN, DRIFT, SERVING = "astrid_model_training", "astrid_drift_check", "astrid_serving_model"


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield


def dag(dag_id: str) -> Any:
    """The DAG as the dag-processor gets it: the file executed afresh under the current environment."""
    from airflow.sdk import DAG

    spec = importlib.util.spec_from_file_location(f"_effects_{dag_id}", REPO / "dags" / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if isinstance(v, DAG) and v.dag_id == dag_id)


def cron(dag_id: str) -> Callable[[], Any]:
    """The DAG's cron, also when it is the time half of "on arrival or on the cron"."""

    def probe() -> Any:
        timetable = dag(dag_id).timetable
        return getattr(getattr(timetable, "timetable", timetable), "expression", None)

    return probe


def arrival_watch(key: str) -> Callable[[], Any]:
    """What the realtime DAG's arrival watcher hands the triggerer: the provider trigger's class
    (``classpath``) or one of its arguments (``None`` when the DAG watches nothing)."""

    def probe() -> Any:
        timetable = dag(RT).timetable
        condition = getattr(timetable, "asset_condition", None)
        if condition is None:
            return None
        (asset,) = condition.objects
        classpath, kwargs = asset.watchers[0].trigger.serialize()
        return classpath if key == "classpath" else kwargs[key]

    return probe


def incoming_triplet(folder: Path) -> dict[str, str]:
    """A small synthetic science/reference/difference triplet written to ``folder``."""
    from astrid.imaging.synthetic import make_observation, write_observation

    uris = write_observation(make_observation(3, size=128), folder, "probe")
    return {role: str(uris[f"{role}_uri"]) for role in ("science", "reference", "difference")}


def ingest_mode_effect(tmp: Path) -> Callable[[], bool]:
    """Whether the CLI/API ingest path (``ingestor_from_config``) registers a file that already
    lies under the storage root in place (reference) instead of copying it (copy)."""
    runs = iter(range(1000))

    def probe() -> bool:
        from astrid.ingest import IngestRequest, ingestor_from_config

        place = tmp / f"ingest-mode-{next(runs)}"
        files = incoming_triplet(place / "storage" / "incoming")
        with environment({"ASTRID_INFERENCE_EVENTS_ENABLED": "false"}):
            ingestor = ingestor_from_config(f"sqlite:///{place / 'catalog.db'}", (place / "storage").as_uri())
            result = ingestor.ingest(IngestRequest(**files))
        return Path(result.uris["science"].removeprefix("file://")) == Path(files["science"])

    return probe


def ingest_roots_effect(tmp: Path) -> Callable[[], Any]:
    """POST /astrid/observations with files outside the storage root: refused (422) unless their
    folder is an ingest root."""
    runs = iter(range(1000))

    def probe() -> Any:
        from fastapi import HTTPException

        from astrid.airflow.api import ObservationRequest, ingest_observation
        from astrid.catalog import Catalog
        from astrid.config import load_config
        from astrid.storage import StorageRoot

        place = tmp / f"ingest-roots-{next(runs)}"
        files = incoming_triplet(tmp / "outside")
        (place / "storage").mkdir(parents=True)
        catalog = Catalog(f"sqlite:///{place / 'catalog.db'}")
        catalog.migrate()
        with environment({"ASTRID_INFERENCE_EVENTS_ENABLED": "false"}):
            try:
                ingest_observation(
                    ObservationRequest(**files, id=f"probe-{place.name}"),
                    catalog,
                    StorageRoot.from_uri((place / "storage").as_uri()),
                    load_config(),
                )
            except HTTPException as exc:
                return exc.status_code
        return "accepted"

    return probe


def param(dag_id: str, name: str) -> Callable[[], Any]:
    return lambda: dag(dag_id).params[name]


def task_attr(dag_id: str, task_id: str, attr: str) -> Callable[[], Any]:
    return lambda: getattr(dag(dag_id).get_task(task_id), attr)


def timetable(dag_id: str) -> Callable[[], str]:
    return lambda: type(dag(dag_id).timetable).__name__


def cpu_recipe(field: str) -> Callable[[], Any]:
    """The training recipe the train task, as parsed, chooses for a CPU worker (the fallback)."""

    def probe() -> Any:
        from astrid.training import training_recipe

        train = dag(TRAIN).get_task("train")
        recipe = training_recipe(
            "cpu", {}, cpu_epochs=int(train.cpu_epochs), cpu_observations=int(train.cpu_observations)
        )
        return getattr(recipe, field)

    return probe


def deadline_minutes(dag_id: str) -> Callable[[], float]:
    return lambda: dag(dag_id).deadline[0].interval.total_seconds() / 60


# ------------------------------------------------------------------------------------------------
# run-time probes


def log_level_effect() -> bool:
    """Is an INFO event of the `astrid` logger emitted (the level applied at package import)?"""
    from astrid.logs import apply_logging_config

    apply_logging_config()
    try:
        return logging.getLogger("astrid.effects").isEnabledFor(logging.INFO)
    finally:
        apply_logging_config({})


def rotation_effect(tmp: Path) -> Callable[[], list[str]]:
    """Files in the log folder after 1.5 MB of JSON events (ASTRID_LOG_FILE set)."""

    def probe() -> list[str]:
        from astrid.logs import apply_logging_config, log_event

        folder = Path(tmp) / f"logs-{os.environ.get('ASTRID_INFERENCE_LOG_ROTATION_MB', 'default')}"
        with environment({"ASTRID_LOG_FILE": str(folder / "astrid-{pid}.jsonl")}):
            apply_logging_config()
            try:
                for i in range(1500):
                    log_event("effects.fill", i=i, padding="x" * 1000)
            finally:
                apply_logging_config({})
        return sorted(p.name.split(".jsonl")[-1] for p in folder.iterdir())

    return probe


def task(dag_id: str, task_id: str) -> Any:
    """A task of the DAG file parsed under the current environment (its default_args included)."""
    return dag(dag_id).get_task(task_id)


def preflight(**readings: float) -> Callable[[], list[str]]:
    """The reasons the realtime preflight task's limits give for fixed readings (the host's own
    readings would make the probe depend on this machine's load)."""

    def probe() -> list[str]:
        from astrid.preflight import PreflightLimits, check

        pre = task(RT, "preflight")
        limits = PreflightLimits(
            float(pre.max_memory_percent), float(pre.max_load_per_cpu), float(pre.max_gpu_memory_percent)
        )
        values = {"memory_percent": 10.0, "load_per_cpu": 0.1, "gpu_percent": 10.0, **readings}
        return check(limits, **values).reasons

    return probe


def monitoring_effect() -> bool:
    """Does the claim task send its metrics to StatsD, or to the no-op client?"""
    from astrid.metrics import NullMetrics

    return isinstance(task(RT, "claim").metrics, NullMetrics)


def model_path_accepted(path: str) -> Callable[[], bool]:
    """Does the realtime DAG's model_version param (UI form, dags trigger --conf, REST) accept ``path``?"""

    def probe() -> bool:
        from airflow.sdk.exceptions import ParamValidationError

        try:
            dag(RT).params.get_param("model_version").resolve(path)
        except ParamValidationError:
            return False
        return True

    return probe


def recipients_effect() -> list[str]:
    from astrid.airflow.notifiers import AstridNotifier

    return AstridNotifier(kind="failure")._recipients()


def cooldown_effect(tmp: Path) -> Callable[[], list[bool]]:
    """Is the same alert due again 10 minutes after it was sent? (real catalog, real clock)"""

    def probe() -> list[bool]:
        from datetime import UTC, datetime, timedelta

        from astrid.airflow.notifiers import Alert, AstridNotifier
        from astrid.catalog import Catalog
        from astrid.catalog.models import AlertStateRow

        url = f"sqlite:///{tmp}/cooldown-{len(list(Path(tmp).glob('cooldown-*')))}.db"
        Catalog(url).migrate()
        notifier = AstridNotifier(kind="failure")
        alert = Alert(kind="failure", dag_id="d", run_id="r", subject="s", body="b", url="")
        first = notifier._due(alert, url)
        # ten minutes later: move the recorded sending time back instead of waiting
        table = AlertStateRow.__table__
        with Catalog(url).engine.begin() as conn:
            conn.execute(table.update().values(last_sent_at=datetime.now(UTC) - timedelta(minutes=10)))
        return [first, notifier._due(alert, url)]

    return probe


class RecordingTI:
    """Stands in for Airflow's TaskInstance when a task's execute() is called directly."""

    map_index = -1

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def context(run_id: str) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {
        "run_id": run_id,
        "dag": SimpleNamespace(dag_id="effects"),
        "dag_run": SimpleNamespace(start_date=datetime.now(UTC)),
        "ti": RecordingTI(),
    }


def claimed(run_id: str) -> list[dict[str, Any]]:
    """The realtime claim task, as parsed, run once (its templated limit rendered by hand)."""
    claim = task(RT, "claim")
    claim.max_observations = 5
    return claim.execute(context(run_id))


def attempts_effect() -> int:
    """Observations claimable after one that failed 3 times (attempts = 3)."""
    from astrid.airflow.hooks import CatalogHook
    from astrid.catalog.models import ObservationRow

    table = ObservationRow.__table__
    with CatalogHook().get_conn().engine.begin() as conn:
        conn.execute(table.update().values(status="failed", attempts=3))
    return len(claimed("attempts"))


def image_side_effect() -> int:
    """Observations the quality gate lets through (the frames are 256 px on a side)."""
    gate = task(RT, "quality_gate")
    gate.observations = claimed("gate")
    return len(gate.execute(context("gate")))


def inference(key: str) -> Callable[[], Any]:
    """One real U-Net run of the realtime infer task over the claimed observation; summary[key]."""

    def probe() -> Any:
        infer = task(RT, "infer")
        infer.observations, infer.model, infer.confidence_threshold = claimed("infer"), "champion", 0.5
        return infer.execute(context("infer")).get(key)

    return probe


def stored(measure: Callable[[list[dict[str, Any]]], Any]) -> Callable[[], Any]:
    """One real U-Net run of the realtime infer task; ``measure`` of the detections it stored."""

    def probe() -> Any:
        from astrid.airflow.hooks import CatalogHook

        inference("processed_count")()
        return measure(CatalogHook().get_conn().detections())

    return probe


def stamped(rows: list[dict[str, Any]]) -> int:
    assert len(rows) >= 2, "the probe needs two detections to tell a stamp limit of 1 apart"
    return sum(bool(r["stamp_uri"]) for r in rows)


def report_effect(summary: dict[str, Any], earlier_zero_runs: int, notified: list) -> Callable[[], int]:
    """Degradation alerts the realtime report task raises for ``summary`` after earlier runs that
    processed observations and found nothing."""

    def probe() -> int:
        from datetime import UTC, datetime, timedelta

        from astrid.airflow.hooks import CatalogHook

        catalog = CatalogHook().get_conn()
        for i in range(earlier_zero_runs):
            started = datetime.now(UTC) - timedelta(minutes=15 * (i + 1))
            catalog.record_run(
                dag_id=RT,
                run_id=f"earlier{i}",
                kind="realtime",
                processed=5,
                detections=0,
                started_at=started,
            )
        report = task(RT, "report")
        report.summaries, report.claimed = summary, None
        before = len(notified)
        report.execute(context("report"))
        return len(notified) - before

    return probe


def ingest_subtract_effect(tmp: Path) -> Callable[[], str]:
    """The status a real science + reference pair (no difference) is registered with by the
    configured ingestor: subtracted at once (preprocessed), or left for the DAGs (ingested)."""
    counter = iter(range(100))

    def probe() -> str:
        from astrid.catalog import Catalog
        from astrid.ingest import IngestRequest, ingestor_from_config
        from tests.subtraction_pairs import make_pair, write_pair

        place = tmp / f"ingest-{next(counter)}"
        files = write_pair(make_pair(41, 384, star_density=4000.0, n_transients=3), place, "p")
        (place / "storage").mkdir()
        catalog = Catalog(f"sqlite:///{place}/catalog.db")
        catalog.migrate()
        with environment({"ASTRID_INFERENCE_EVENTS_ENABLED": "false"}):
            ingestor = ingestor_from_config(catalog, (place / "storage").as_uri())
        return ingestor.ingest(IngestRequest(str(files["science"]), str(files["reference"]))).status

    return probe


def validation_effect(notified: list) -> Callable[[], tuple[Any, int]]:
    """The weekly decision for a champion at F1 0.85 with a challenger at 0.86, and the alerts sent."""

    def probe() -> tuple[Any, int]:
        decide = task(VAL, "decide")
        decide.scores = {
            "champion": {"version": "2", "f1": 0.85},
            "candidates": [{"version": "3", "f1": 0.86, "alias": "challenger"}],
            "history": ["1", "2"],
        }
        before = len(notified)
        action = decide.choose_branch(context("v"))
        return action, len(notified) - before

    return probe


# ------------------------------------------------------------------------------------------------
# fixtures: a one-observation survey, copied afresh for every run-time probe


@pytest.fixture(scope="module")
def survey(airflow_db, tmp_path_factory):
    from astrid.storage import StorageRoot
    from astrid.survey import seed_survey

    root = tmp_path_factory.mktemp("effects-survey")
    seed_survey(
        1,
        size=256,
        seed=1717,
        catalog_url=f"sqlite:///{root}/template.db",
        storage_root=StorageRoot.from_uri((root / "storage").as_uri()),
        prefix="fx",
    )
    return root


@pytest.fixture
def runtime_env(survey, tmp_path):
    """ASTRID_CATALOG_URL (a fresh copy of the seeded catalog per probe), storage and MLflow."""
    from astrid.airflow import hooks

    counter = iter(range(1000))

    @contextmanager
    def fresh() -> Iterator[None]:
        db = tmp_path / f"catalog-{next(counter)}.db"
        # SQLite's backup API: a consistent copy even with the template's WAL not checkpointed
        with sqlite3.connect(survey / "template.db") as source, sqlite3.connect(db) as target:
            source.backup(target)
        hooks._CATALOGS.clear()
        with environment(
            {
                "ASTRID_CATALOG_URL": f"sqlite:///{db}",
                "ASTRID_STORAGE_ROOT": (survey / "storage").as_uri(),
                "MLFLOW_TRACKING_URI": f"sqlite:///{survey}/mlflow.db",
            }
        ):
            yield
        hooks._CATALOGS.clear()

    return fresh


# ------------------------------------------------------------------------------------------------
# the table: variable -> (a value different from the default, probe, expected result or None)

RUNTIME = {  # probes that need the seeded catalog, storage and MLflow store
    "ASTRID_INFERENCE_MAX_ATTEMPTS",
    "ASTRID_INFERENCE_MAX_IMAGE_SIDE",
    "ASTRID_INFERENCE_MAX_HEADER_CARDS",
    "ASTRID_INFERENCE_MIN_PIXEL_SCALE",
    "ASTRID_INFERENCE_MAX_PIXEL_SCALE",
    "ASTRID_INFERENCE_PERFORMANCE_TRACKING",
    "ASTRID_INFERENCE_STAR_RESIDUAL_VETTING",
    "ASTRID_INFERENCE_MIN_SUCCESS_RATE",
    "ASTRID_INFERENCE_ZERO_DETECTION_RUNS",
    "ASTRID_INFERENCE_ZEROPOINT_KEY",
    "ASTRID_INFERENCE_STAMPS_ENABLED",
    "ASTRID_INFERENCE_STAMPS_MAX_PER_OBSERVATION",
}


def effects(tmp: Path, notified: list) -> dict[str, tuple[str, Callable[[], Any], Any]]:
    return {
        "ASTRID_INFERENCE_SCHEDULE_REALTIME": ("*/5 * * * *", cron(RT), "*/5 * * * *"),
        "ASTRID_INFERENCE_REALTIME_ENABLED": ("false", cron(RT), None),
        "ASTRID_INFERENCE_MAX_OBSERVATIONS": ("3", param(RT, "max_observations"), 3),
        "ASTRID_INFERENCE_SCHEDULE_BATCH": ("0 3 * * *", cron(BATCH), "0 3 * * *"),
        "ASTRID_INFERENCE_BATCH_ENABLED": ("false", cron(BATCH), None),
        "ASTRID_INFERENCE_BATCH_MAX_OBSERVATIONS": ("7", param(BATCH, "max_observations"), 7),
        "ASTRID_INFERENCE_BATCH_CHUNK_SIZE": ("3", task_attr(BATCH, "chunk", "size"), 3),
        "ASTRID_INFERENCE_SCHEDULE_VALIDATION": ("0 5 * * 1", cron(VAL), "0 5 * * 1"),
        "ASTRID_INFERENCE_VALIDATION_ENABLED": ("false", cron(VAL), None),
        "ASTRID_INFERENCE_VALIDATION_DATASET_SIZE": ("7", param(VAL, "dataset_size"), 7),
        "ASTRID_INFERENCE_TIMEZONE": ("America/Santiago", lambda: dag(RT).timezone.name, "America/Santiago"),
        "ASTRID_INFERENCE_LOG_LEVEL": ("WARNING", log_level_effect, False),
        "ASTRID_INFERENCE_LOG_RETENTION_DAYS": (
            "7",
            task_attr(MAINT, "prune_task_logs", "retention_days"),
            7,
        ),
        "ASTRID_INFERENCE_LOG_ROTATION_MB": ("1", rotation_effect(tmp), ["", ".1"]),
        "ASTRID_INFERENCE_MONITORING_ENABLED": ("false", monitoring_effect, True),
        "ASTRID_INFERENCE_ALERT_ON_FAILURE": (
            "false",
            lambda: "on_failure_callback" in dag(RT).default_args,
            False,
        ),
        "ASTRID_INFERENCE_PERFORMANCE_TRACKING": ("false", inference("mlflow_run_id"), None),
        "ASTRID_INFERENCE_MODEL_ROOTS": (
            "/opt/astrid/models",
            model_path_accepted("/opt/astrid/models/unet-v2"),
            True,
        ),
        "ASTRID_INFERENCE_MODEL_URI": (
            "models:/astrid-unet/2",
            task_attr(RT, "infer", "model_uri"),
            "models:/astrid-unet/2",
        ),
        "ASTRID_INFERENCE_CONFIDENCE_THRESHOLD": ("0.7", param(RT, "confidence_threshold"), 0.7),
        "ASTRID_INFERENCE_STAR_RESIDUAL_VETTING": ("off", inference("star_residual_vetting"), "off"),
        "ASTRID_INFERENCE_BATCH_SIZE": ("4", task_attr(RT, "infer", "batch_size"), 4),
        "ASTRID_INFERENCE_DEVICE": ("cpu", task_attr(RT, "infer", "device"), "cpu"),
        "ASTRID_INFERENCE_GPU_POOL": ("unet", task_attr(RT, "infer", "pool"), "unet"),
        "ASTRID_INFERENCE_GPU_QUEUE": ("default", task_attr(RT, "infer", "queue"), "default"),
        "ASTRID_INFERENCE_LEASE_MINUTES": ("5", task_attr(RT, "claim", "lease_minutes"), 5),
        "ASTRID_INFERENCE_MAX_ATTEMPTS": ("5", attempts_effect, 1),
        "ASTRID_INFERENCE_MAX_IMAGE_SIDE": ("128", image_side_effect, 0),
        # the synthetic frames' headers hold ~60 cards and their WCS is 0.36″/pixel
        "ASTRID_INFERENCE_MAX_HEADER_CARDS": ("40", image_side_effect, 0),
        "ASTRID_INFERENCE_MIN_PIXEL_SCALE": ("1", image_side_effect, 0),
        "ASTRID_INFERENCE_MAX_PIXEL_SCALE": ("0.1", image_side_effect, 0),
        "ASTRID_INFERENCE_REALTIME_DEADLINE_MINUTES": ("3", deadline_minutes(RT), 3),
        "ASTRID_INFERENCE_BATCH_DEADLINE_MINUTES": ("30", deadline_minutes(BATCH), 30),
        "ASTRID_INFERENCE_VALIDATION_DEADLINE_MINUTES": ("60", deadline_minutes(VAL), 60),
        "ASTRID_INFERENCE_ALERT_EMAIL": (
            "a@example.org, b@example.org",
            recipients_effect,
            ["a@example.org", "b@example.org"],
        ),
        "ASTRID_INFERENCE_ALERT_COOLDOWN_MINUTES": ("5", cooldown_effect(tmp), [True, True]),
        "ASTRID_INFERENCE_MIN_SUCCESS_RATE": (
            "0.5",
            report_effect({"processed_count": 7, "failed_count": 3, "detections_found": 1}, 0, notified),
            0,
        ),
        "ASTRID_INFERENCE_ZERO_DETECTION_RUNS": (
            "3",
            report_effect({"processed_count": 5, "failed_count": 0, "detections_found": 0}, 2, notified),
            1,
        ),
        "ASTRID_INFERENCE_MIN_VALIDATION_F1": (
            "0.9",
            validation_effect(notified),
            (["rollback", "request_retraining"], 1),  # below the floor: roll back and ask for retraining
        ),
        "ASTRID_INFERENCE_MAX_MEMORY_PERCENT": ("50", preflight(memory_percent=60), None),
        "ASTRID_INFERENCE_MAX_LOAD_PER_CPU": ("1", preflight(load_per_cpu=2), None),
        "ASTRID_INFERENCE_MAX_GPU_MEMORY_PERCENT": ("50", preflight(gpu_percent=60), None),
        # the synthetic header's zero point is MAGZPT; a configured key is tried first (EXPTIME: a
        # number in the plausible range, so the magnitudes move by EXPTIME - MAGZPT)
        "ASTRID_INFERENCE_ZEROPOINT_KEY": ("EXPTIME", stored(lambda rows: [r["mag"] for r in rows]), None),
        "ASTRID_INFERENCE_STAMPS_ENABLED": ("false", stored(stamped), 0),
        "ASTRID_INFERENCE_STAMPS_MAX_PER_OBSERVATION": ("1", stored(stamped), 1),
        # the model's life: validation candidates, training, drift, the serving-model change
        "ASTRID_INFERENCE_VALIDATION_CANDIDATES": (
            "5",
            task_attr(VAL, "score_models", "validation_candidates"),
            5,
        ),
        "ASTRID_INFERENCE_TRAINING_ENABLED": ("false", timetable(TRAIN), "NullTimetable"),
        "ASTRID_INFERENCE_TRAINING_DEADLINE_MINUTES": ("30", deadline_minutes(TRAIN), 30),
        "ASTRID_INFERENCE_TRAINING_CPU_EPOCHS": ("3", cpu_recipe("epochs"), 3),
        "ASTRID_INFERENCE_TRAINING_CPU_OBSERVATIONS": ("20", cpu_recipe("observations"), 20),
        "ASTRID_INFERENCE_TRAINING_LABELLED": ("7", param(TRAIN, "labelled"), 7),
        "ASTRID_INFERENCE_SCHEDULE_DRIFT": ("0 6 * * *", cron(DRIFT), "0 6 * * *"),
        "ASTRID_INFERENCE_DRIFT_ENABLED": ("false", cron(DRIFT), None),
        "ASTRID_INFERENCE_DRIFT_DEADLINE_MINUTES": ("30", deadline_minutes(DRIFT), 30),
        "ASTRID_INFERENCE_DRIFT_WINDOW_HOURS": ("12", task_attr(DRIFT, "drift_check", "window_hours"), 12),
        "ASTRID_INFERENCE_DRIFT_REFERENCE_HOURS": (
            "48",
            task_attr(DRIFT, "drift_check", "reference_hours"),
            48,
        ),
        "ASTRID_INFERENCE_DRIFT_MIN_SAMPLES": ("10", task_attr(DRIFT, "drift_check", "min_samples"), 10),
        "ASTRID_INFERENCE_DRIFT_THRESHOLD": ("0.3", task_attr(DRIFT, "drift_check", "threshold"), 0.3),
        "ASTRID_INFERENCE_DRIFT_P_VALUE": ("0.05", task_attr(DRIFT, "drift_check", "p_value"), 0.05),
        "ASTRID_INFERENCE_SERVING_ENABLED": ("false", timetable(SERVING), "NullTimetable"),
        "ASTRID_INFERENCE_SERVING_DEADLINE_MINUTES": ("30", deadline_minutes(SERVING), 30),
        "ASTRID_INFERENCE_REPROCESS_HOURS": ("6", param(SERVING, "hours"), 6),
        "ASTRID_INFERENCE_REPROCESS_MAX_OBSERVATIONS": ("50", param(SERVING, "max_observations"), 50),
        # arrival: ingestion and the doorbell the realtime DAG listens for
        "ASTRID_INFERENCE_INGEST_MODE": ("reference", ingest_mode_effect(tmp), True),
        "ASTRID_INFERENCE_INGEST_ROOTS": (str(tmp / "outside"), ingest_roots_effect(tmp), "accepted"),
        "ASTRID_INFERENCE_EVENTS_ENABLED": ("false", timetable(RT), "CronTriggerTimetable"),
        "ASTRID_INFERENCE_EVENTS_URL": (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/astrid-arrivals",
            arrival_watch("classpath"),
            "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
        ),
        "ASTRID_INFERENCE_EVENTS_CHANNEL": (
            "survey.arrivals",
            arrival_watch("channels"),
            ["survey.arrivals"],
        ),
        "ASTRID_INFERENCE_EVENTS_POLL_SECONDS": ("2", arrival_watch("poll_interval"), 2.0),
        # maintenance: how db_clean cleans the metadata DB (each mode run for real: tests/unit/test_db_clean.py)
        "ASTRID_INFERENCE_DB_CLEAN": ("off", task_attr(MAINT, "db_clean", "mode"), "off"),
        "ASTRID_INFERENCE_MWAA_ENVIRONMENT": (
            "astrid-prod",
            task_attr(MAINT, "db_clean", "mwaa_environment"),
            "astrid-prod",
        ),
        # arrival: a pair without a difference image is subtracted on ingest, or left to the DAGs
        "ASTRID_INFERENCE_INGEST_SUBTRACT": ("false", ingest_subtract_effect(tmp), "ingested"),
    }


DOCUMENTED = [var for var, _, _ in InferenceSchedulingConfig.env_table()]


@pytest.fixture(scope="module")
def notified() -> list:
    return []


@pytest.fixture(autouse=True)
def record_notifications(monkeypatch, notified):
    from astrid.airflow.notifiers import AstridNotifier

    monkeypatch.setattr(AstridNotifier, "notify", lambda self, ctx: notified.append(self.kind) or True)


def test_every_documented_variable_has_an_effect_entry(tmp_path, notified) -> None:
    assert set(effects(tmp_path, notified)) == set(DOCUMENTED)


@pytest.mark.parametrize("variable", DOCUMENTED)
def test_variable_changes_behaviour(variable: str, tmp_path, notified, request) -> None:
    changed, probe, expected = effects(tmp_path, notified)[variable]
    default = str(InferenceSchedulingConfig.env_table()[DOCUMENTED.index(variable)][1])
    assert changed.lower() != default.lower(), "the probe must use a non-default value"
    fresh = request.getfixturevalue("runtime_env") if variable in RUNTIME else None

    def observe(env: dict[str, str]) -> Any:
        with environment(env):
            if fresh is None:
                return probe()
            with fresh():
                return probe()

    without = observe({})
    with_value = observe({variable: changed})
    assert with_value != without, f"{variable}={changed} changed nothing: {without!r}"
    if (
        expected is not None
        or variable.endswith("_ENABLED")
        or variable == "ASTRID_INFERENCE_PERFORMANCE_TRACKING"
    ):
        assert with_value == expected, f"{variable}={changed}: {with_value!r}"
