"""Faults, caused for real: a worker SIGKILLed mid-batch, the catalog database refusing connections,
a connection killed inside a write, out-of-memory during inference, broken or unreachable models,
and re-running a finished DAG run.

What is real and what is simulated is said in each test; the summary is in docs/reliability.md.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from tests.dag_runner import inprocess_env, run_dag, task_states
from tests.reliability.helpers import (
    CHILD_PRELUDE,
    SIZE,
    base_env,
    new_observation,
    prepare_home,
    run_child,
)

LEASE = timedelta(minutes=30)


def _engine():
    from astrid.ml.engine import InferenceEngine
    from astrid.paths import shipped_model_path

    return InferenceEngine.from_path(shipped_model_path(), device="cpu")


def _infer(
    url: str, storage_uri: str, run_id: str, *, now=None, ledger: Path | None = None, limit: int = 100
):
    """One clean inference pass in this process: claim (at ``now``) and run the real pipeline."""
    from astrid.catalog import Catalog
    from astrid.pipeline import RunInfo, VersionedDetector, run_inference
    from astrid.storage import StorageRoot

    catalog = Catalog(url)
    try:
        claims = catalog.claim(limit, run_id, LEASE, now=now)

        def write_ledger(claim, _detections):
            if ledger is not None:
                with ledger.open("a") as fh:
                    fh.write(f"{run_id} {claim.observation_id}\n")

        summary = run_inference(
            claims,
            catalog=catalog,
            storage=StorageRoot.from_uri(storage_uri),
            detector=VersionedDetector(_engine(), "1"),
            run=RunInfo(run_id=run_id),
            threshold=0.5,
            max_side=8192,
            on_observation=write_ledger,
        )
        return claims, summary
    finally:
        catalog.dispose()


def _by_name(catalog) -> dict[str, list[tuple[float, float, float]]]:
    names = {o["id"]: o["name"] for o in catalog.observations()}
    out: dict[str, list] = collections.defaultdict(list)
    for d in catalog.detections():
        out[names[d["observation_id"]]].append((d["x"], d["y"], d["score"]))
    return {k: sorted(v) for k, v in out.items()}


def _assert_same_detections(got: dict, want: dict) -> None:
    """Equal to a clean run's: same observations, same count, positions/scores equal to 1e-3
    (the killed worker and this process may sum floats in a different thread order)."""
    assert sorted(got) == sorted(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        np.testing.assert_allclose(np.array(got[name]), np.array(want[name]), atol=1e-3, err_msg=name)


# ----------------------------------------------------------------------------------------------
# A worker SIGKILLed in the middle of a batch

KILL_SCRIPT = r"""
import signal
from datetime import timedelta

import sqlalchemy as sa

from astrid.catalog import Catalog
from astrid.ml.engine import InferenceEngine
from astrid.paths import shipped_model_path
from astrid.pipeline import RunInfo, VersionedDetector, run_inference
from astrid.storage import StorageRoot

catalog = Catalog(SPEC["catalog"])
claims = catalog.claim(100, SPEC["run_id"], timedelta(minutes=30))
print("CLAIMED", [c.observation_id for c in claims], flush=True)
engine = InferenceEngine.from_path(shipped_model_path(), device="cpu")
done = []


def ledger(claim, detections):
    with open(SPEC["ledger"], "a") as fh:
        fh.write(f"{SPEC['run_id']} {claim.observation_id}\n")
        fh.flush()
        os.fsync(fh.fileno())
    done.append(claim.observation_id)


class KillingDetector:
    # the real engine; SIGKILLs this process when asked for observation kill_after + 1
    version = "1"

    def analyse(self, triplet, threshold=None, min_excess="card"):
        if SPEC["kill_at"] == "inference" and len(done) >= SPEC["kill_after"]:
            os.kill(os.getpid(), signal.SIGKILL)
        return engine.analyse(triplet, threshold, min_excess)


if SPEC["kill_at"] == "write":
    @sa.event.listens_for(catalog.engine, "after_cursor_execute")
    def _kill_inside_the_transaction(conn, cursor, statement, *args):
        # detections sent to the database, transaction not committed: die here
        if statement.lstrip().upper().startswith("INSERT INTO DETECTIONS") and len(done) >= SPEC["kill_after"]:
            os.kill(os.getpid(), signal.SIGKILL)

run_inference(claims, catalog=catalog, storage=StorageRoot.from_uri(SPEC["storage"]), detector=KillingDetector(),
              run=RunInfo(run_id=SPEC["run_id"]), threshold=0.5, max_side=8192, on_observation=ledger)
result(killed=False, done=done)
"""


def _temporary_pg(request, prefix: str) -> str:
    """A throw-away PostgreSQL database for one test (dropped, forcefully, at teardown)."""
    from contextlib import ExitStack

    from tests.catalog_helpers import temporary_postgres_database

    stack = ExitStack()
    request.addfinalizer(stack.close)
    return stack.enter_context(temporary_postgres_database(prefix=prefix))


def _wait_for_no_other_backends(admin_url: str, database: str, timeout: float = 20) -> None:
    """PostgreSQL notices a dead client when its socket closes; wait until its backend is gone."""
    import psycopg2

    from tests.catalog_helpers import dsn

    conn = psycopg2.connect(dsn(sa.make_url(admin_url)))
    conn.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                    "AND state <> 'idle'",
                    (database,),
                )
                if cur.fetchone()[0] == 0:
                    return
            time.sleep(0.2)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "backend,kill_at,recovery",
    [
        ("sqlite", "inference", "lease_expiry"),
        pytest.param("postgres", "write", "task_retry", marks=pytest.mark.postgres),
    ],
)
def test_sigkilled_worker_mid_batch_every_observation_processed_exactly_once(
    request, tmp_path, backend, kill_at, recovery
):
    """A real process SIGKILLs itself mid-batch (after 2 of 4 observations are committed; either
    between observations or with a detection INSERT sent but not committed). Recovery is either an
    Airflow task retry (same run id: it resumes its own claims) or another run after the lease
    expired (``claim(now=...)`` moves the clock instead of sleeping 30 minutes). Then every claimed
    observation was written exactly once, none is left ``claimed``, and the detections equal a
    clean run's."""
    from astrid.catalog import Catalog
    from astrid.errors import CatalogError
    from astrid.survey import seed_survey

    storage = (tmp_path / "storage").as_uri()
    if backend == "postgres":
        request.getfixturevalue("pg_available")
        url = _temporary_pg(request, "astrid_kill")
    else:
        url = f"sqlite:///{tmp_path}/catalog.db"
    seeded = seed_survey(4, size=SIZE, seed=9100, catalog_url=url, storage_root=storage, prefix="kill")
    catalog = Catalog(url)
    request.addfinalizer(catalog.dispose)
    ledger = tmp_path / "ledger.txt"

    spec = {
        "catalog": url,
        "storage": storage,
        "run_id": "run-A",
        "ledger": str(ledger),
        "kill_at": kill_at,
        "kill_after": 2,
    }
    env = {**base_env(tmp_path), "SPEC": json.dumps(spec)}
    killed = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + KILL_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    if backend == "postgres":
        from tests.catalog_helpers import postgres_admin_url

        _wait_for_no_other_backends(postgres_admin_url(), sa.make_url(url).database)

    # the state a SIGKILL leaves: 2 committed, 2 still claimed, nothing half-written
    counts = catalog.status_counts()
    assert (counts["inferred"], counts["claimed"]) == (2, 2), counts
    stuck = [o for o in catalog.observations("claimed")]
    assert all(o["claimed_by"] == "run-A" for o in stuck)
    assert all(catalog.detections(observation_id=o["id"]) == [] for o in stuck)

    if recovery == "lease_expiry":
        later = datetime.now(UTC) + LEASE + timedelta(minutes=1)
        assert {o["id"] for o in catalog.stuck_claims(now=later)} == {o["id"] for o in stuck}
        claims, summary = _infer(url, storage, "run-B", now=later, ledger=ledger)
        assert all(c.attempts == 1 for c in claims)  # the dead run's lease counted as a failed attempt
    else:
        claims, summary = _infer(url, storage, "run-A", ledger=ledger)  # the retried task: same run id
        assert all(c.attempts == 0 for c in claims)
    assert sorted(c.observation_id for c in claims) == sorted(o["id"] for o in stuck)
    assert (summary.processed_count, summary.failed_count) == (2, 0)

    # exactly once: each observation written by exactly one run, all of them written
    written = collections.Counter(int(line.split()[1]) for line in ledger.read_text().splitlines())
    assert sorted(written) == sorted(seeded.observation_ids) and set(written.values()) == {1}, written
    counts = catalog.status_counts()
    assert (counts["inferred"], counts["claimed"], counts["failed"]) == (4, 0, 0), counts
    rows = catalog.detections()
    assert len({(d["observation_id"], d["model_version"], d["x"], d["y"]) for d in rows}) == len(rows)
    if (
        recovery == "lease_expiry"
    ):  # the dead run, were it to come back, cannot overwrite the new owner's result
        before = catalog.detections(observation_id=stuck[0]["id"])
        assert catalog.complete(stuck[0]["id"], "run-A", "1", []) == len(before)  # no-op
        assert catalog.detections(observation_id=stuck[0]["id"]) == before
        with pytest.raises(CatalogError, match="refusing"):
            catalog.fail(stuck[0]["id"], "run-A", "zombie")

    # a clean run over the same files, in a fresh catalog, gives the same detections
    clean_url = f"sqlite:///{tmp_path}/clean.db"
    clean = Catalog(clean_url)
    clean.migrate()
    clean.register(
        [
            new_observation(
                o["name"], o["science_uri"], o["reference_uri"], o["difference_uri"], mjd=o["mjd"]
            )
            for o in catalog.observations()
        ]
    )
    _infer(clean_url, storage, "clean")
    _assert_same_detections(_by_name(catalog), _by_name(clean))
    clean.dispose()


# ----------------------------------------------------------------------------------------------
# The catalog database unavailable for a while


def _admin():
    import psycopg2

    from tests.catalog_helpers import dsn, postgres_admin_url

    conn = psycopg2.connect(dsn(sa.make_url(postgres_admin_url())))
    conn.autocommit = True
    return conn


def _set_connections(database: str, allowed: bool) -> None:
    """Open or close the database for real: ALLOW_CONNECTIONS, and drop everyone already connected."""
    admin = _admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
            if not allowed:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
                )
    finally:
        admin.close()


@pytest.mark.postgres
def test_catalog_database_down_tasks_retry_and_succeed_once_it_is_back(
    request, airflow_db, pg_available, tmp_path
):
    """The PostgreSQL catalog refuses every connection (``ALLOW_CONNECTIONS false`` + existing
    sessions terminated) when a realtime run starts. Its first catalog task (``subtract``, which
    leases observations still waiting for their difference image) fails with OperationalError and
    Airflow retries it; a watcher re-opens the database as soon as Airflow has put the task up for
    retry. The run then succeeds: both observations inferred once, detections as reported, one
    ``inference_runs`` row, nothing left claimed. (Retry delays are shortened to 2 s; the
    production back-off policy is checked in tests/dags/test_dag_integrity.py::test_policies.)"""
    import sqlite3

    from astrid.airflow.demo import task_output
    from astrid.catalog import Catalog
    from astrid.survey import seed_survey

    url = _temporary_pg(request, "astrid_outage")
    database = sa.make_url(url).database
    with inprocess_env(tmp_path, ASTRID_CATALOG_URL=url) as env:
        seeded = seed_survey(
            2, size=SIZE, seed=9300, catalog_url=url, storage_root=env["ASTRID_STORAGE_ROOT"], prefix="outage"
        )
        _set_connections(database, allowed=False)
        request.addfinalizer(lambda: _set_connections(database, allowed=True))
        seen: dict[str, object] = {}

        def reopen_when_subtract_waits_for_retry() -> None:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and "reopened" not in seen:
                try:
                    with sqlite3.connect(airflow_db / "airflow.db", timeout=1) as meta:
                        row = meta.execute(
                            "SELECT try_number FROM task_instance WHERE dag_id = 'astrid_realtime_inference' "
                            "AND task_id = 'subtract' AND state = 'up_for_retry'"
                        ).fetchone()
                except sqlite3.Error:
                    row = None
                if row:
                    seen["failed_try"] = row[0]
                    _set_connections(database, allowed=True)
                    seen["reopened"] = time.monotonic()
                    return
                time.sleep(0.2)
            _set_connections(database, allowed=True)  # never leave it closed

        watcher = threading.Thread(target=reopen_when_subtract_waits_for_retry, daemon=True)
        watcher.start()
        dag_run = run_dag("astrid_realtime_inference", {"max_observations": 2}, retries=4, retry_seconds=2)
        watcher.join(timeout=30)
        states = task_states(dag_run)

        assert "reopened" in seen, ("the subtract task never failed while the catalog was down", states)
        assert str(dag_run.state) == "success", states
        assert states["subtract"][0] == "success" and states["subtract"][1] >= 2, (
            states
        )  # failed, retried, succeeded
        assert states["claim"] == ("success", 1), states
        catalog = Catalog(url)
        request.addfinalizer(catalog.dispose)
        counts = catalog.status_counts()
        assert (counts["inferred"], counts["claimed"], counts["failed"]) == (2, 0, 0), counts
        assert all(o["attempts"] == 0 for o in catalog.observations())
        report = task_output(dag_run, "report")
        assert sorted(report["observation_ids"]) == sorted(seeded.observation_ids)
        assert len(catalog.detections()) == report["detections_found"] > 0
        runs = [r for r in catalog.runs() if r["run_id"] == dag_run.run_id]
        assert len(runs) == 1 and runs[0]["processed"] == 2


class _Detection:
    def __init__(self, x: float, y: float, score: float = 0.9) -> None:
        self.x, self.y, self.ra, self.dec, self.score, self.flux = x, y, None, None, score, 1.0


class _ExplodingDetection(_Detection):
    @property
    def score(self) -> float:
        raise RuntimeError("detector bug: score unavailable")

    @score.setter
    def score(self, value: float) -> None:
        pass


@pytest.mark.postgres
def test_a_write_interrupted_between_delete_and_insert_leaves_the_old_detections(request, pg_available):
    """Nothing half-written. ``complete()`` replaces an observation's detections (DELETE, then
    INSERT, then the status) in one transaction. The database connection is terminated for real
    (``pg_terminate_backend`` from another session) after the DELETE and before the INSERT: the
    write fails and the previous detections are all still there, the observation still claimed.
    The same holds when a detection object blows up while its rows are being built, and for a
    non-finite score. A plain retry then stores the new set."""
    from astrid.catalog import Catalog, DetectionRow
    from astrid.errors import CatalogError

    url = _temporary_pg(request, "astrid_txn")
    catalog = Catalog(url)
    request.addfinalizer(catalog.dispose)
    catalog.migrate()
    [oid] = catalog.register([new_observation("txn-1", "a_sci.fits", "a_ref.fits")])
    catalog.claim(1, "run-R", LEASE)
    old = [
        {
            "observation_id": oid,
            "model_version": "1",
            "x": float(i),
            "y": 1.0,
            "score": 0.7,
            "run_id": "run-R",
            "created_at": datetime.now(UTC),
        }
        for i in range(2)
    ]
    with catalog.engine.begin() as conn:  # the set stored by an earlier write of the same model version
        conn.execute(sa.insert(DetectionRow.__table__), old)

    def stored() -> list[tuple[float, float]]:
        return sorted((d["x"], d["y"]) for d in catalog.detections(observation_id=oid))

    armed = {"on": True, "killed": 0}

    @sa.event.listens_for(catalog.engine, "before_cursor_execute")
    def kill_connection_before_insert(conn, cursor, statement, *args):
        if armed["on"] and statement.lstrip().upper().startswith("INSERT INTO DETECTIONS"):
            armed["on"] = False
            admin = _admin()
            try:
                with admin.cursor() as cur:  # waits (up to 5 s) until the backend is gone
                    cur.execute(
                        "SELECT pg_terminate_backend(%s, 5000)", (cursor.connection.info.backend_pid,)
                    )
                    armed["killed"] += int(cur.fetchone()[0])
            finally:
                admin.close()

    new = [_Detection(10.0, 10.0), _Detection(20.0, 20.0), _Detection(30.0, 30.0)]
    with pytest.raises(sa.exc.DBAPIError):
        catalog.complete(oid, "run-R", "1", new)
    assert armed["killed"] == 1
    assert stored() == [(0.0, 1.0), (1.0, 1.0)]  # the DELETE died with its transaction
    assert catalog.get(oid)["status"] == "claimed"

    with pytest.raises(RuntimeError, match="detector bug"):
        catalog.complete(oid, "run-R", "1", [_Detection(5.0, 5.0), _ExplodingDetection(6.0, 6.0)])
    with pytest.raises(CatalogError, match="non-finite score"):
        catalog.complete(oid, "run-R", "1", [_Detection(5.0, 5.0, score=float("nan"))])
    assert stored() == [(0.0, 1.0), (1.0, 1.0)] and catalog.get(oid)["status"] == "claimed"

    assert catalog.complete(oid, "run-R", "1", new) == 3  # the retry
    assert stored() == [(10.0, 10.0), (20.0, 20.0), (30.0, 30.0)] and catalog.get(oid)["status"] == "inferred"


# ----------------------------------------------------------------------------------------------
# Out of memory during inference


class _OutOfMemoryAbove(torch.nn.Module):
    """The real model, behind a device-memory budget: a forward pass over more than ``budget``
    pixels raises ``torch.OutOfMemoryError`` — the exception CUDA raises. SIMULATED: this machine
    has no GPU, and a real host OOM would kill the test runner rather than raise."""

    def __init__(self, inner, budget: int) -> None:
        super().__init__()
        self.inner, self.budget, self.calls = inner, budget, []
        self.depth, self.multiple, self.in_channels = inner.depth, inner.multiple, inner.in_channels

    def forward(self, x):

        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        self.calls.append((x.shape[0], x.shape[2], x.shape[3], pixels <= self.budget))
        if pixels > self.budget:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {pixels * 12 / 2**20:.0f} MiB"
            )
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_only_an_untileable_observation_fails(tmp_path):
    """Three observations in one pipeline run over a memory budget of 250 000 pixels per forward:
    a 256² frame (one 360² tile) fits; a 300×800 frame (two 408×504 tiles, batch 2) runs out of
    memory, the engine halves the batch to 1 and finishes it with the same detections as an
    unconstrained engine; an 800² frame (504² tiles) cannot run even one tile, so *that*
    observation is ``failed`` with the OOM error kept, and the run goes on."""
    from astrid.catalog import Catalog
    from astrid.imaging.fits import write_image
    from astrid.imaging.synthetic import make_observation, write_observation
    from astrid.ml.engine import InferenceEngine
    from astrid.ml.weights import load_model
    from astrid.paths import shipped_model_path
    from astrid.pipeline import RunInfo, VersionedDetector, run_inference
    from astrid.storage import StorageRoot

    storage = StorageRoot.from_uri((tmp_path / "storage").as_uri())
    obs_dir = tmp_path / "storage" / "obs"
    small = write_observation(make_observation(9400, size=SIZE), obs_dir, "oom-small")
    wide_src = make_observation(9401, size=800)
    wide = {}
    for role in ("science", "reference", "difference"):
        path = obs_dir / f"oom-wide_{role[:3]}.fits"
        write_image(path, getattr(wide_src, role)[250:550, :], wide_src.header)
        wide[f"{role}_uri"] = path.as_uri()
    large = write_observation(make_observation(9402, size=800), obs_dir, "oom-large")
    catalog = Catalog(f"sqlite:///{tmp_path}/catalog.db")
    catalog.migrate()
    ids = catalog.register(
        [
            new_observation(
                name, uris["science_uri"], uris["reference_uri"], uris["difference_uri"], mjd=61000.0 + i
            )
            for i, (name, uris) in enumerate((("oom-small", small), ("oom-wide", wide), ("oom-large", large)))
        ]
    )
    claims = catalog.claim(3, "run-oom", LEASE)

    model, card = load_model(shipped_model_path())
    constrained = _OutOfMemoryAbove(model, budget=250_000)
    # the engine runs its own fused copy of the model: the calls are recorded on that copy
    engine = InferenceEngine(constrained, card, device="cpu", batch_size=8)
    assert engine._tile_shape(SIZE, SIZE) == (360, 360) and engine._tile_shape(300, 800) == (408, 504)
    assert engine._tile_shape(800, 800) == (504, 504)  # 254 016 px > budget
    summary = run_inference(
        claims,
        catalog=catalog,
        storage=storage,
        detector=VersionedDetector(engine, "1"),
        run=RunInfo(run_id="run-oom"),
        threshold=0.5,
        max_side=8192,
    )

    rows = {catalog.get(i)["name"]: catalog.get(i) for i in ids}
    assert rows["oom-small"]["status"] == "inferred" and rows["oom-wide"]["status"] == "inferred"
    assert rows["oom-large"]["status"] == "failed" and rows["oom-large"]["attempts"] == 1
    assert (
        "out of memory" in rows["oom-large"]["last_error"]
        and "single 504x504 tile" in rows["oom-large"]["last_error"]
    )
    assert "oom-large" in rows["oom-large"]["last_error"]
    assert (summary.processed_count, summary.failed_count) == (2, 1)
    assert summary.errors[0]["observation"] == "oom-large"
    # the wide frame: batch of 2 refused, then 1 + 1 ran; the batch size stays halved afterwards
    assert [c[:3] for c in engine.model.calls[:4]] == [
        (1, 360, 360),
        (2, 408, 504),
        (1, 408, 504),
        (1, 408, 504),
    ]
    assert [c[3] for c in engine.model.calls[:4]] == [True, False, True, True]
    assert engine.batch_size == 1
    # halving changed nothing: the same detections as an engine with memory to spare
    from astrid.pipeline import load_claim

    reference = InferenceEngine(model, card, device="cpu", batch_size=8).detect(
        load_claim(next(c for c in claims if c.name == "oom-wide"), storage, 8192), 0.5
    )
    got = catalog.detections(observation_id=rows["oom-wide"]["id"])
    assert len(got) == len(reference) > 0
    np.testing.assert_allclose(
        sorted((d["x"], d["y"]) for d in got), sorted((d.x, d.y) for d in reference), atol=1e-4
    )
    catalog.dispose()


# ----------------------------------------------------------------------------------------------
# Model weights missing or corrupt, registry unreachable

MODEL_SCRIPT = r"""
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from astrid.catalog import Catalog
from astrid.errors import ModelError
from astrid.paths import shipped_model_path
from astrid.registry import ModelRegistry
from astrid.survey import seed_survey

catalog = Catalog(os.environ["ASTRID_CATALOG_URL"])
seed_survey(3, labelled=2, size=256, seed=9500, catalog_url=os.environ["ASTRID_CATALOG_URL"],
            storage_root=os.environ["ASTRID_STORAGE_ROOT"], prefix="model")
out = {}


def corrupt(path):
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(blob))


# 1. the registry is unreachable (a closed port): infer fails fast with a clear error, retried
registry_uri = os.environ["MLFLOW_TRACKING_URI"]
os.environ["MLFLOW_TRACKING_URI"] = SPEC["closed"]
started = time.time()
dag_run, tis = run("astrid_realtime_inference", {"max_observations": 1})
out["unreachable"] = {"state": str(dag_run.state), "tis": tis, "seconds": time.time() - started,
                      "counts": catalog.status_counts()}
os.environ["MLFLOW_TRACKING_URI"] = registry_uri

# 2. an unknown model version at run time
dag_run, tis = run("astrid_realtime_inference", {"max_observations": 1, "model_version": "999"})
out["unknown"] = {"state": str(dag_run.state), "tis": tis, "counts": catalog.status_counts()}

# 3. the registry refuses to register weights that do not load
registry = ModelRegistry(registry_uri)
champion = registry.alias_version("champion")
versions = lambda: sorted(str(mv.version) for mv in registry.client.search_model_versions("name='astrid-unet'"))
before = versions()
refused = {}
for name in ("corrupt", "missing"):
    model = Path(SPEC["tmp"]) / name
    shutil.copytree(shipped_model_path(), model)
    if name == "corrupt":
        corrupt(model / "model.safetensors")
    else:
        (model / "model.safetensors").unlink()
    try:
        registry.register(model, alias="challenger")
        refused[name] = None
    except ModelError as exc:
        refused[name] = str(exc)
out["register"] = {"refused": refused, "versions_before": before, "versions_after": versions(),
                   "challenger": registry.alias_version("challenger"), "champion": registry.alias_version("champion")}

# 4. a challenger that loaded when registered, corrupted in the artifact store afterwards
good = Path(SPEC["tmp"]) / "good"
shutil.copytree(shipped_model_path(), good)
challenger = registry.register(good, alias="challenger")
source = registry.client.get_model_version("astrid-unet", challenger).source
corrupt(Path(unquote(urlparse(source).path)) / "model.safetensors")
dag_run, tis = run("astrid_model_validation", {"dataset_size": 2})
out["validation"] = {"state": str(dag_run.state), "tis": tis, "champion_before": champion,
                     "champion": registry.alias_version("champion"), "challenger": challenger,
                     "challenger_after": registry.alias_version("challenger")}

# 5. serving goes on with the champion
dag_run, tis = run("astrid_realtime_inference", {"max_observations": 1})
out["serving"] = {"state": str(dag_run.state), "tis": tis, "counts": catalog.status_counts(),
                  "versions": sorted({o["model_version"] for o in catalog.observations("inferred")})}
result(**out)
"""


def test_broken_or_unreachable_models_fail_the_task_clearly_and_never_replace_the_champion(
    tmp_path, airflow_template
):
    """In a child process with its own AIRFLOW_HOME, MLflow store and catalog, for real:

    1. ``MLFLOW_TRACKING_URI`` points at a closed port: ``infer`` fails fast with "MLflow registry at
       … is unreachable", is retried (3 tries), the run fails and its claim goes back to the queue;
    2. ``model_version=999``: each try fails naming the version and the fix;
    3. ``ModelRegistry.register`` refuses corrupt and missing weights: no version, no alias move;
    4. a challenger corrupted in the artifact store after registration: scoring fails (sha256
       mismatch) and is retried, the validation run fails, ``champion`` never moves;
    5. a realtime run with the champion still succeeds.
    """
    from tests.integration.standalone import free_port

    prepare_home(tmp_path, airflow_template)
    closed = f"http://127.0.0.1:{free_port()}"
    out, log = run_child(
        MODEL_SCRIPT, base_env(tmp_path), {"closed": closed, "tmp": str(tmp_path)}, timeout=400
    )

    unreachable = out["unreachable"]
    assert unreachable["state"] == "failed" and unreachable["tis"]["infer"] == ["failed", 3], unreachable
    assert unreachable["seconds"] < 90, unreachable  # fails fast: MLflow alone would retry ~4 min per request
    assert unreachable["counts"]["preprocessed"] == 1 and unreachable["counts"]["claimed"] == 0
    assert log.count(f"MLflow registry at {closed} is unreachable") >= 3, log[-4000:]

    unknown = out["unknown"]
    assert unknown["state"] == "failed" and unknown["tis"]["infer"] == ["failed", 3], unknown
    assert log.count("model version '999' of astrid-unet not found in the registry") >= 3
    assert "list versions in the MLflow UI and pass one that exists" in log

    register = out["register"]
    assert "sha256" in register["refused"]["corrupt"] and "corrupt" in register["refused"]["corrupt"]
    assert "not found" in register["refused"]["missing"]
    assert register["versions_after"] == register["versions_before"] == ["1"]
    assert register["challenger"] is None and register["champion"] == "1"

    validation = out["validation"]
    assert validation["state"] == "failed" and validation["tis"]["score_models"] == ["failed", 3], validation
    assert validation["tis"]["promote"][0] == "upstream_failed"
    assert validation["champion"] == validation["champion_before"] == "1"
    corrupt = re.findall(rf"v{validation['challenger']}-[0-9a-f]+/model.safetensors have sha256", log)
    assert len(corrupt) >= 3, log[-4000:]  # every retry re-checks (and re-fetches) the cached copy

    serving = out["serving"]
    assert (
        serving["state"] == "success" and serving["counts"]["inferred"] == 1 and serving["versions"] == ["1"]
    )


# ----------------------------------------------------------------------------------------------
# Re-running a finished DAG run


def test_rerunning_a_finished_dag_run_duplicates_nothing(airflow_db, tmp_path):
    """``dag.test`` with the same logical date and run-after re-runs the *same* DAG run (it clears
    all its task instances first, as `airflow tasks clear` would). The re-run claims nothing new,
    rewrites no detection (same row ids), leaves one ``inference_runs`` row for the run and counts
    no observation twice. (Clearing only ``infer`` + ``report`` of a finished run under a real
    scheduler: test_sigkilled_task_under_airflow_standalone_is_retried_and_clearing_duplicates_nothing.)"""
    import pendulum

    from astrid.catalog import Catalog
    from astrid.survey import seed_survey

    when = pendulum.datetime(2025, 7, 1, 3, 15, tz="UTC")
    with inprocess_env(tmp_path) as env:
        seed_survey(
            2,
            size=SIZE,
            seed=9600,
            catalog_url=env["ASTRID_CATALOG_URL"],
            storage_root=env["ASTRID_STORAGE_ROOT"],
            prefix="rerun",
        )
        catalog = Catalog(env["ASTRID_CATALOG_URL"])
        first = run_dag("astrid_realtime_inference", {"max_observations": 2}, logical_date=when)
        assert str(first.state) == "success"
        detections = catalog.detections()
        observations = catalog.observations()
        assert len(detections) > 0 and {o["status"] for o in observations} == {"inferred"}

        again = run_dag("astrid_realtime_inference", {"max_observations": 2}, logical_date=when)
        assert again.run_id == first.run_id and str(again.state) == "success"
        assert catalog.detections() == detections  # same rows, same ids: nothing deleted or re-inserted
        assert [(o["status"], o["attempts"], o["inferred_at"]) for o in catalog.observations()] == [
            (o["status"], o["attempts"], o["inferred_at"]) for o in observations
        ]
        runs = [r for r in catalog.runs() if r["run_id"] == first.run_id]
        assert len(runs) == 1 and runs[0]["processed"] in (0, 2)  # overwritten, never summed (4)
        catalog.dispose()


# ----------------------------------------------------------------------------------------------
# The same faults under a real scheduler


@pytest.mark.standalone
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_sigkilled_task_under_airflow_standalone_is_retried_and_clearing_duplicates_nothing(
    killed_and_cleared_run,
):
    """Under `airflow standalone` (LocalExecutor) with the catalog on PostgreSQL: the ``infer``
    task process SIGKILLs itself right after committing its first of 3 observations (the fault is
    injected by tests/reliability/inject/sitecustomize.py; the kill is real). Airflow sees the
    process die, marks the try failed and retries it; the retry resumes the run's own claims. Then
    ``infer`` and ``report`` of the finished run are cleared through the REST API and run again.

    Every observation is inferred exactly once (the first one's detections were not rewritten by
    the retry nor by the clear), nothing is left claimed, and ``inference_runs`` keeps one row for
    the run with the same counts."""
    r = killed_and_cleared_run
    first, second = r["first"], r["second"]
    assert r["marker"].exists(), "the injector never fired"
    killed_pid, killed_obs = (int(x) for x in r["marker"].read_text().split())
    assert first["run"]["state"] == "success", first["states"]
    states = [t["state"] for t in first["tries"]]
    assert states[:1] == ["failed"] and states[-1] == "success" and len(states) == 2, first["tries"]

    assert (first["counts"]["inferred"], first["counts"]["claimed"], first["counts"]["failed"]) == (3, 0, 0)
    assert all(o["attempts"] == 0 for o in first["observations"])
    retry_started = datetime.fromisoformat(first["tries"][1]["start_date"])
    early = [d for d in first["detections"] if d["observation_id"] == killed_obs]
    assert early and all(d["created_at"] < retry_started for d in early), early[:1]  # by the killed try only
    rows = first["detections"]
    assert len({(d["observation_id"], d["x"], d["y"]) for d in rows}) == len(rows)
    assert len(first["runs"]) == 1 and first["runs"][0]["processed"] == 3
    assert first["runs"][0]["detections"] == len(rows)

    assert second["cleared"] == 200 and second["states"]["infer"] == "success", second
    assert len(second["tries"]) == 3 and second["tries"][-1]["state"] == "success"
    assert second["detections"] == first["detections"]  # same rows, same ids
    assert second["counts"] == first["counts"]
    assert len(second["runs"]) == 1
    assert {k: second["runs"][0][k] for k in ("processed", "failed", "detections", "claimed")} == {
        k: first["runs"][0][k] for k in ("processed", "failed", "detections", "claimed")
    }
    assert killed_pid > 0
