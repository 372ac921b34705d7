"""astrid.catalog on SQLite and on the local PostgreSQL: migrations, claims, leases, idempotent writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from astrid.catalog import (
    Catalog,
    Claim,
    DetectionRow,
    InferenceRunRow,
    NewObservation,
    ObservationRow,
    ObservationStatus,
)
from astrid.catalog.models import Base
from astrid.errors import CatalogError
from astrid.paths import default_catalog_url
from tests.catalog_helpers import (
    FakeDetection,
    fake_detections,
    postgres_unavailable,
    temporary_postgres_database,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
LEASE = timedelta(minutes=30)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TABLES = {
    "observations",
    "detections",
    "inference_runs",
    "inference_results",
    "alert_state",
    "alembic_version",
}


def _skip_without_postgres() -> None:
    reason = postgres_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL tests need 127.0.0.1:5432: {reason}")


@pytest.fixture(scope="module")
def pg_url():
    """One fresh database for this module, migrated once; tests truncate it."""
    _skip_without_postgres()
    with temporary_postgres_database() as url:
        catalog = Catalog(url)
        catalog.migrate()
        catalog.dispose()
        yield url


@pytest.fixture(params=BACKENDS)
def catalog(request, tmp_path):
    if request.param == "sqlite":
        cat = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
        cat.migrate()
    else:
        cat = Catalog(request.getfixturevalue("pg_url"))
        with cat.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "TRUNCATE observations, detections, inference_results, inference_statistics, inference_runs, "
                    "alert_state RESTART IDENTITY"
                )
            )
    yield cat
    cat.dispose()


@pytest.fixture(params=BACKENDS)
def empty_url(request, tmp_path):
    """A database with no schema at all (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        _skip_without_postgres()
        with temporary_postgres_database() as url:
            yield url


def obs(i: int, **kw) -> NewObservation:
    return NewObservation(
        name=f"obs-{i:04d}",
        science_uri=f"night/obs-{i:04d}/science.fits",
        reference_uri=f"night/obs-{i:04d}/reference.fits",
        difference_uri=f"night/obs-{i:04d}/difference.fits",
        mjd=kw.pop("mjd", 60000.0 + i / 100),
        **kw,
    )


def det(x: float, y: float, score: float = 0.9) -> FakeDetection:
    return FakeDetection(x=x, y=y, ra=150.0 + x / 3600, dec=2.0 + y / 3600, score=score, flux=10.0)


# ---------------------------------------------------------------------- migrations


def test_migrate_fresh_database_to_head_and_again_is_a_noop(empty_url):
    cat = Catalog(empty_url)
    try:
        assert cat.revision() is None
        cat.migrate()
        head = cat.head_revision()
        assert head is not None and cat.revision() == head
        inspector = sa.inspect(cat.engine)
        assert set(inspector.get_table_names()) >= TABLES
        before = {t: inspector.get_indexes(t) for t in TABLES - {"alembic_version"}}
        cat.migrate()  # no-op
        assert cat.revision() == head
        inspector = sa.inspect(cat.engine)
        assert {t: inspector.get_indexes(t) for t in before} == before
        indexes = {i["name"] for i in before["observations"]}
        assert {"ix_observations_status_mjd_id", "ix_observations_status_lease_until"} <= indexes
        assert "ix_detections_observation_id_model_version" in {i["name"] for i in before["detections"]}
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("inference_runs")}
        assert ("dag_id", "run_id") in uniques
        with cat.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        cat.dispose()


def test_models_match_migrations_and_downgrade_roundtrips(empty_url):
    cat = Catalog(empty_url)
    try:
        cat.migrate()
        with cat.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        cfg = cat._alembic_config()  # sqlalchemy.url path of env.py (no connection passed)
        command.downgrade(cfg, "base")
        assert set(sa.inspect(cat.engine).get_table_names()) <= {"alembic_version"}
        cat.migrate()
        assert cat.revision() == cat.head_revision()
    finally:
        cat.dispose()


def test_revision_history_is_linear():
    script = ScriptDirectory.from_config(Catalog("sqlite://")._alembic_config())
    revisions = list(script.walk_revisions())
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1
    for rev in revisions:
        assert rev.down_revision is None or isinstance(rev.down_revision, str), rev  # no merges
        assert not rev.branch_labels
    downs = [rev.down_revision for rev in revisions]
    assert len(set(downs)) == len(downs)  # no branches: every revision has at most one child


# ---------------------------------------------------------------------- registration


def test_register_is_idempotent_by_name(catalog):
    ids = catalog.register([obs(1), obs(2)])
    assert len(set(ids)) == 2
    again = catalog.register([obs(2, survey="other"), obs(3), obs(1)])
    assert again[0] == ids[1] and again[2] == ids[0] and again[1] not in ids
    assert catalog.get(ids[1])["survey"] == "synthetic"  # existing row untouched
    assert catalog.get("obs-0003")["status"] == "preprocessed"
    assert catalog.register([]) == []
    assert catalog.register([obs(9)], status="ingested") and catalog.get("obs-0009")["status"] == "ingested"
    with pytest.raises(CatalogError, match="truth_uri"):
        catalog.register([obs(4, labelled=True)])
    with pytest.raises(CatalogError, match="bogus"):
        catalog.register([obs(5)], status="bogus")
    with pytest.raises(CatalogError, match="obs-0404"):
        catalog.get("obs-0404")


def test_register_many_in_chunks(catalog):
    ids = catalog.register([obs(i) for i in range(1200)])
    assert len(ids) == len(set(ids)) == 1200
    assert catalog.status_counts()["preprocessed"] == 1200


# ---------------------------------------------------------------------- claims


def test_claim_oldest_first_and_xcom_roundtrip(catalog):
    ids = catalog.register([obs(1, mjd=60010.0), obs(2, mjd=60001.0), obs(3, mjd=None), obs(4, mjd=60005.0)])
    claims = catalog.claim(3, "run-a", LEASE, now=T0)
    assert [c.observation_id for c in claims] == [ids[1], ids[3], ids[0]]
    assert all(c.run_id == "run-a" and c.lease_until == T0 + LEASE and c.attempts == 0 for c in claims)
    payload = json.loads(json.dumps([c.to_xcom() for c in claims]))
    assert [Claim.from_xcom(p) for p in payload] == claims
    assert payload[0]["lease_until"] == (T0 + LEASE).isoformat()
    assert [c.observation_id for c in catalog.claim(5, "run-b", LEASE, now=T0)] == [ids[2]]
    assert catalog.claim(5, "run-c", LEASE, now=T0) == []
    assert catalog.status_counts()["claimed"] == 4
    assert catalog.claim(0, "run-c", LEASE) == []
    with pytest.raises(CatalogError, match="lease"):
        catalog.claim(1, "run-c", timedelta(0))
    with pytest.raises(CatalogError, match="lacks 'name'"):
        Claim.from_xcom({"observation_id": 1})
    minimal = Claim.from_xcom(
        {"observation_id": 1, "name": "n", "science_uri": "s", "reference_uri": "r", "x": 1}
    )
    assert minimal.run_id is None and minimal.lease_until is None and minimal.attempts == 0


def test_same_run_reclaim_resumes_its_own_claims(catalog):
    catalog.register([obs(i) for i in range(5)])
    first = catalog.claim(2, "run-a", LEASE, now=T0)
    retry = catalog.claim(3, "run-a", LEASE, now=T0 + timedelta(minutes=5))
    assert [c.observation_id for c in retry][:2] == [c.observation_id for c in first]
    assert len(retry) == 3 and all(c.lease_until == T0 + timedelta(minutes=35) for c in retry)
    assert all(c.attempts == 0 for c in retry)
    # even past its own lease, a retried task gets its work back (nobody else took it)
    late = catalog.claim(1, "run-a", LEASE, now=T0 + timedelta(hours=5))
    assert late[0].observation_id == first[0].observation_id


def test_expired_lease_is_taken_over_and_the_zombie_is_refused(catalog):
    (oid,) = catalog.register([obs(1)])
    (zombie,) = catalog.claim(1, "run-zombie", timedelta(minutes=1), now=T0)
    assert catalog.claim(1, "run-b", LEASE, now=T0 + timedelta(seconds=30)) == []  # still leased
    assert catalog.stuck_claims(now=T0 + timedelta(seconds=30)) == []
    stuck = catalog.stuck_claims(now=T0 + timedelta(minutes=2))
    assert [s["id"] for s in stuck] == [oid] and stuck[0]["claimed_by"] == "run-zombie"

    (taken,) = catalog.claim(1, "run-b", LEASE, now=T0 + timedelta(minutes=2))
    assert taken.observation_id == oid and taken.run_id == "run-b"
    assert taken.attempts == 1  # the dead run's attempt counts
    assert "run-zombie" in catalog.get(oid)["last_error"]

    with pytest.raises(CatalogError, match=r"claimed by run 'run-b'") as err:
        catalog.complete(zombie, "run-zombie", "v1", [det(1, 2)])
    assert str(oid) in str(err.value) and "obs-0001" in str(err.value)
    with pytest.raises(CatalogError):
        catalog.fail(zombie, "run-zombie", "late failure")
    with pytest.raises(CatalogError):
        catalog.reject(zombie, "run-zombie", "late reject")

    assert catalog.complete(taken, "run-b", "v1", [det(1, 2), det(3, 4)]) == 2
    # the zombie finishing the *same* result after the fact is a harmless no-op
    assert catalog.complete(zombie, "run-zombie", "v1", [det(9, 9)]) == 2
    assert [(d["x"], d["run_id"]) for d in catalog.detections(oid)] == [(1.0, "run-b"), (3.0, "run-b")]
    assert catalog.stuck_claims(now=T0 + timedelta(days=1)) == []
    assert catalog.status_counts()["claimed"] == 0


def test_expired_leases_count_towards_max_attempts(catalog):
    (oid,) = catalog.register([obs(1)])
    now = T0
    for attempt in range(3):
        (claim,) = catalog.claim(1, f"run-{attempt}", timedelta(minutes=1), now=now)
        assert claim.attempts == attempt
        now += timedelta(minutes=2)
    # third run died too: with max_attempts=3 it is given up, not retried forever
    assert catalog.claim(1, "run-3", LEASE, now=now, max_attempts=3) == []
    row = catalog.get(oid)
    assert row["status"] == "failed" and row["attempts"] == 3 and "run-2" in row["last_error"]
    assert catalog.stuck_claims(now=now) == []
    assert catalog.claim(1, "run-4", LEASE, now=now, max_attempts=4)[0].observation_id == oid


def test_complete_claimed_by_nobody_or_unknown(catalog):
    (oid,) = catalog.register([obs(1)])
    with pytest.raises(CatalogError, match="preprocessed"):
        catalog.complete(oid, "run-a", "v1", [])
    with pytest.raises(CatalogError, match="not in the catalog"):
        catalog.complete(oid + 100, "run-a", "v1", [])
    (claim,) = catalog.claim(1, "run-a", LEASE)
    with pytest.raises(CatalogError, match="non-finite score"):
        catalog.complete(claim, "run-a", "v1", [det(1, 2, score=float("nan"))])
    assert catalog.get(oid)["status"] == "claimed"  # nothing written


# ---------------------------------------------------------------------- idempotent writes


def test_complete_is_idempotent_per_model_version(catalog):
    a, b = catalog.register([obs(1), obs(2)])
    claims = {c.observation_id: c for c in catalog.claim(2, "run-a", LEASE)}
    found = [det(10, 20, 0.95), det(30, 40, 0.6), det(30, 40, 0.7)]
    assert catalog.complete(claims[a], "run-a", "v1", found) == 3
    assert catalog.complete(claims[a], "run-a", "v1", found) == 3  # task retry
    assert catalog.complete(a, "run-a", "v1", found[:1]) == 3  # no-op: first result stands
    assert len(catalog.detections(a, "v1")) == 3
    assert [d["score"] for d in catalog.detections(a)] == [0.95, 0.7, 0.6]
    row = catalog.get(a)
    assert row["status"] == "inferred" and row["model_version"] == "v1" and row["lease_until"] is None
    assert row["inferred_at"] is not None

    assert catalog.complete(claims[b], "run-a", "v1", []) == 0  # zero detections is a result too
    assert catalog.get(b)["status"] == "inferred" and catalog.detections(b) == []

    # a new model version re-processing the observation keeps the old set
    with pytest.raises(CatalogError, match="inferred"):
        catalog.complete(a, "run-b", "v2", found)
    with catalog.engine.begin() as conn:  # requeue (an operator action, not an API yet)
        conn.execute(sa.update(ObservationRow).where(ObservationRow.id == a).values(status="preprocessed"))
    (again,) = catalog.claim(1, "run-b", LEASE)
    assert catalog.complete(again, "run-b", "v2", found[:2]) == 2
    assert len(catalog.detections(a, "v1")) == 3 and len(catalog.detections(a, "v2")) == 2
    assert len(catalog.detections(model_version="v1")) == 3
    with catalog.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(DetectionRow)) == 5


def test_record_run_upserts_on_dag_and_run_id(catalog):
    start = T0
    catalog.record_run(dag_id="astrid_realtime_inference", run_id="r1", kind="realtime", started_at=start)
    row = catalog.record_run(
        dag_id="astrid_realtime_inference",
        run_id="r1",
        finished_at=start + timedelta(minutes=3),
        claimed=10,
        processed=9,
        failed=1,
        detections=4,
        processing_seconds=12.5,
        success_rate=0.9,
        status="success",
        details={"f1": 0.91},
    )
    assert row["kind"] == "realtime" and row["started_at"] == start and row["processed"] == 9
    catalog.record_run(dag_id="astrid_realtime_inference", run_id="r1", processed=9, failed=1, claimed=10)
    catalog.record_run(dag_id="astrid_batch_inference", run_id="r1", kind="batch", started_at=start)
    catalog.record_run(
        dag_id="astrid_realtime_inference", run_id="r2", kind="realtime", started_at=start + LEASE
    )
    catalog.record_run(dag_id="astrid_realtime_inference", run_id="manual", kind="cli")  # no start time
    with catalog.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(InferenceRunRow)) == 4
    runs = catalog.runs(dag_id="astrid_realtime_inference")
    assert [r["run_id"] for r in runs] == ["r2", "r1", "manual"]  # newest first
    assert runs[1]["processed"] == 9 and runs[1]["details"] == {"f1": 0.91}
    assert [r["run_id"] for r in catalog.runs(since=start + timedelta(minutes=1))] == ["r2"]
    recent = [(r["dag_id"][7:], r["run_id"]) for r in catalog.runs(since=start)]
    assert recent == [("realtime_inference", "r2"), ("batch_inference", "r1"), ("realtime_inference", "r1")]
    assert len(catalog.runs()) == 4
    with pytest.raises(CatalogError, match="unknown field"):
        catalog.record_run(dag_id="d", run_id="r", procesed=1)
    with pytest.raises(CatalogError, match="kind"):
        catalog.record_run(dag_id="d", run_id="r", kind="hourly")


# ---------------------------------------------------------------------- fail / reject / release / labelled


def test_fail_counts_attempts_until_max(catalog):
    (oid,) = catalog.register([obs(1)])
    for attempt in range(1, 4):
        (claim,) = catalog.claim(1, f"run-{attempt}", LEASE, max_attempts=3)
        assert claim.attempts == attempt - 1
        assert catalog.fail(claim, f"run-{attempt}", f"boom {attempt}") == attempt
        assert catalog.fail(claim, f"run-{attempt}", "repeat") == attempt  # same run again: no-op
    assert catalog.claim(1, "run-4", LEASE, max_attempts=3) == []
    row = catalog.get(oid)
    assert row["status"] == "failed" and row["attempts"] == 3 and row["last_error"] == "boom 3"
    assert row["lease_until"] is None
    (claim,) = catalog.claim(1, "run-5", LEASE, max_attempts=5)
    catalog.fail(claim, "run-5", "x" * 100_000)
    assert 1000 < len(catalog.get(oid)["last_error"]) <= 4000


def test_reject_keeps_reason_and_is_terminal(catalog):
    (oid,) = catalog.register([obs(1)])
    (claim,) = catalog.claim(1, "run-a", LEASE)
    catalog.reject(claim, "run-a", "difference image is 80% NaN")
    catalog.reject(claim, "run-a", "difference image is 80% NaN")  # retry: no-op
    row = catalog.get(oid)
    assert row["status"] == "rejected" and row["rejection_reason"] == "difference image is 80% NaN"
    assert catalog.claim(5, "run-b", LEASE, max_attempts=99) == []
    with pytest.raises(CatalogError, match="rejected"):
        catalog.complete(claim, "run-a", "v1", [])


def test_release_returns_unfinished_claims(catalog):
    catalog.register([obs(i) for i in range(4)])
    claims = catalog.claim(3, "run-a", LEASE)
    catalog.complete(claims[0], "run-a", "v1", [])
    assert catalog.release("run-a") == 2
    assert catalog.release("run-a") == 0
    counts = catalog.status_counts()
    assert counts["preprocessed"] == 3 and counts["inferred"] == 1 and counts["claimed"] == 0
    assert catalog.get(claims[1].observation_id)["claimed_by"] is None
    assert [o["id"] for o in catalog.observations(status="inferred")] == [claims[0].observation_id]
    assert len(catalog.observations()) == 4 and len(catalog.observations(limit=2)) == 2


def test_labelled_reads_without_claiming(catalog):
    catalog.register([obs(i) for i in range(3)])
    ids = catalog.register([obs(i, labelled=True, truth_uri=f"truth/{i}.json") for i in range(10, 15)])
    before = [catalog.get(i) for i in ids]
    view = catalog.labelled(3)
    assert [c.observation_id for c in view] == ids[:3]
    assert view[0].truth_uri == "truth/10.json" and view[0].run_id is None and view[0].lease_until is None
    assert catalog.labelled(3) == view  # deterministic
    assert [catalog.get(i) for i in ids] == before  # untouched
    assert len(catalog.labelled(100)) == 5
    assert catalog.status_counts() == {
        "ingested": 0,
        "preprocessed": 8,
        "claimed": 0,
        "inferred": 0,
        "failed": 0,
        "rejected": 0,
    }


# ---------------------------------------------------------------------- alerts


def test_alert_due_respects_cooldown(catalog):
    hour = timedelta(hours=1)
    assert catalog.alert_due("degraded:realtime", hour, payload={"rate": 0.5}, now=T0) is True
    assert catalog.alert_due("degraded:realtime", hour, payload={"rate": 0.4}, now=T0 + 0.5 * hour) is False
    assert catalog.alert_due("degraded:batch", hour, now=T0 + 0.5 * hour) is True  # other key
    assert catalog.alert_due("degraded:realtime", hour, now=T0 + 0.9 * hour) is False
    state = catalog.alert_state("degraded:realtime")
    assert (
        state["count"] == 1
        and state["suppressed"] == 2
        and json.loads(state["last_payload"]) == {"rate": 0.5}
    )
    assert catalog.alert_due("degraded:realtime", hour, payload="again", now=T0 + hour) is True
    state = catalog.alert_state("degraded:realtime")
    assert state["count"] == 2 and state["suppressed"] == 0 and state["last_payload"] == "again"
    assert state["last_sent_at"] == T0 + hour
    assert catalog.alert_state("never") is None


# ---------------------------------------------------------------------- misc


def test_default_catalog_url(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRID_CATALOG_URL", "postgresql://u@db/astrid")
    assert default_catalog_url() == "postgresql://u@db/astrid"
    monkeypatch.delenv("ASTRID_CATALOG_URL")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "af"))
    url = default_catalog_url()
    assert url == f"sqlite:///{tmp_path / 'af' / 'astrid' / 'catalog.db'}"
    assert (tmp_path / "af" / "astrid").is_dir()
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_catalog_url().endswith("/home/airflow/astrid/catalog.db")


def test_status_enum_and_exports():
    assert [s.value for s in ObservationStatus] == [
        "ingested",
        "preprocessed",
        "claimed",
        "inferred",
        "failed",
        "rejected",
    ]
    assert ObservationRow.__tablename__ == "observations"
    assert fake_detections(7) and len(fake_detections(7)) == 3
    assert "secret" not in repr(Catalog("postgresql://u:secret@h/db"))


def test_sqlite_connections_use_wal_and_busy_timeout(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        cat.migrate()  # turns foreign keys off for the migration, and on again after
        with cat.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        (oid,) = cat.register([obs(1)])
        (claim,) = cat.claim(1, "run-a", LEASE)
        cat.complete(claim, "run-a", "v1", [det(1, 1)])
        with cat.engine.begin() as conn:  # ON DELETE CASCADE works, i.e. foreign keys are on
            conn.execute(sa.delete(ObservationRow).where(ObservationRow.id == oid))
        assert cat.detections() == []
    finally:
        cat.dispose()


# ---------------------------------------------------------------------- 0002: ingestion, results


def test_reregistering_a_name_with_other_files_is_refused_and_registers_nothing(catalog):
    (oid,) = catalog.register([obs(1)])
    moved = obs(1)
    moved.science_uri = "elsewhere/science.fits"
    with pytest.raises(
        CatalogError, match=r"obs-0001.*science_uri.*night/obs-0001/science.fits.*another name"
    ):
        catalog.register([obs(2), moved])
    assert catalog.get(oid)["science_uri"] == "night/obs-0001/science.fits"
    with pytest.raises(CatalogError, match="obs-0002"):
        catalog.get("obs-0002")  # the batch is one transaction: its new rows went too
    no_difference = obs(1)
    no_difference.difference_uri = None
    with pytest.raises(CatalogError, match="difference_uri"):
        catalog.register([no_difference])
    assert catalog.register([obs(1)]) == [oid]  # the same files again: idempotent


def _hashed(i: int, digest: str, **kw) -> NewObservation:
    return obs(i, content_hash=digest, arrived_at=T0, meta={"user": {"night": "n1"}}, **kw)


def test_register_unique_is_idempotent_by_content_and_refuses_id_collisions(catalog):
    first = catalog.register_unique(_hashed(1, "a" * 64), status="ingested")
    assert first.created and first.status == "ingested" and first.arrived_at == T0
    row = catalog.get(first.observation_id)
    assert row["content_hash"] == "a" * 64 and row["meta"] == {"user": {"night": "n1"}}
    again = catalog.register_unique(_hashed(7, "a" * 64))  # same content, any name: the same one
    assert (again.observation_id, again.name, again.created) == (first.observation_id, "obs-0001", False)
    with pytest.raises(CatalogError, match=r"'obs-0001' is already taken by other files.*another"):
        catalog.register_unique(_hashed(1, "b" * 64))
    catalog.register([obs(2)])  # seeded, no hash
    with pytest.raises(CatalogError, match=r"'obs-0002' is already taken.*unhashed"):
        catalog.register_unique(_hashed(2, "c" * 64))
    assert catalog.status_counts()["ingested"] == 1 and len(catalog.observations()) == 2
    with pytest.raises(CatalogError, match="content_hash"):
        catalog.register_unique(obs(3))


def test_reprocessing_results_sit_beside_the_live_ones_and_resume(catalog):
    a, b, c, d = catalog.register(
        [obs(1, mjd=60001.0), obs(2, mjd=60002.0), obs(3, mjd=60003.0), obs(4, mjd=None)]
    )
    claims = catalog.claim(2, "live", LEASE)
    assert [x.observation_id for x in claims] == [a, b]
    catalog.complete(claims[0], "live", "v1", [det(1, 1), det(2, 2)])
    catalog.complete(claims[1], "live", "v1", [])
    live_before = catalog.detections(model_version="v1")
    assert [x.observation_id for x in catalog.reprocess_candidates("v1")] == [c, d]
    todo = catalog.reprocess_candidates("v2", mjd_from=60001.5, mjd_to=60003.5)
    assert [x.observation_id for x in todo] == [b, c] and all(x.run_id is None for x in todo)
    assert catalog.store_results(b, "reprocess-1", "v2", [det(5, 5, 0.7)]) == 1
    # resumable: what is done is no longer a candidate; the rest still is
    assert [x.observation_id for x in catalog.reprocess_candidates("v2")] == [a, c, d]
    assert [x.observation_id for x in catalog.reprocess_candidates("v2", after_id=a, limit=1)] == [c]
    assert catalog.store_results(b, "reprocess-2", "v2", [det(6, 6, 0.8)]) == 1  # replaced, not added
    assert [x["x"] for x in catalog.detections(b, "v2")] == [6.0]
    assert catalog.detections(model_version="v1") == live_before  # the live version untouched
    assert catalog.results(a) == {"v1": 2} and catalog.results(b) == {"v1": 0, "v2": 1}
    row = catalog.get(b)
    assert (row["status"], row["model_version"]) == ("inferred", "v1")  # no claim, no status change
    assert catalog.get(c)["status"] == "preprocessed"
    with pytest.raises(CatalogError, match="404"):
        catalog.store_results(404, "r", "v2", [])
    catalog.record_run(run_id="reprocess-1", dag_id="astrid_reprocess", kind="reprocess")


def test_upgrade_from_0001_keeps_rows_and_backfills_results(empty_url):
    cat = Catalog(empty_url)
    try:
        cat.migrate("0001")
        with cat.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO observations (name, survey, science_uri, reference_uri, status, "
                    "model_version, claimed_by, inferred_at) VALUES "
                    "('old', 's', 'a.fits', 'b.fits', 'inferred', 'v1', 'run-1', CURRENT_TIMESTAMP), "
                    "('new', 's', 'c.fits', 'd.fits', 'preprocessed', NULL, NULL, NULL)"
                )
            )
            old = conn.scalar(sa.text("SELECT id FROM observations WHERE name = 'old'"))
            conn.execute(
                sa.text(
                    "INSERT INTO detections (observation_id, model_version, x, y, score, run_id) "
                    "VALUES (:o, 'v1', 1, 2, 0.9, 'run-1'), (:o, 'v1', 3, 4, 0.8, 'run-1')"
                ),
                {"o": old},
            )
        cat.migrate()
        assert cat.revision() == cat.head_revision()
        assert len(cat.detections(old)) == 2  # the table copy did not cascade-delete them
        assert cat.results(old) == {"v1": 2}
        assert [x.name for x in cat.reprocess_candidates("v1")] == ["new"]
        # the CHECK constraints survived the table copy
        with pytest.raises(sa.exc.IntegrityError), cat.engine.begin() as conn:
            conn.execute(sa.text("UPDATE observations SET attempts = -1 WHERE id = :o"), {"o": old})
    finally:
        cat.dispose()


# ---------------------------------------------------------------------- 0003: photometry, stamps


def test_detections_keep_photometry_and_stamp_uri(catalog):
    from astrid.ml.detect import Detection

    (oid,) = catalog.register([obs(1)])
    (claim,) = catalog.claim(1, "run-a", LEASE)
    found = [
        Detection(10.0, 20.0, 150.0, 2.0, 0.95, 500.0, 25.0, 20.0, 21.5, 0.054, "file:///s/stamps/1-o/0000"),
        Detection(30.0, 40.0, None, None, 0.6, -3.0, 10.0, -0.3),  # no zero point, no stamp
    ]
    catalog.complete(claim, "run-a", "v1", found)
    first, second = catalog.detections(oid)
    assert (first["flux_err"], first["snr"], first["mag"], first["mag_err"]) == (25.0, 20.0, 21.5, 0.054)
    assert first["stamp_uri"] == "file:///s/stamps/1-o/0000"
    assert (second["mag"], second["mag_err"], second["stamp_uri"]) == (None, None, None)
    assert second["snr"] == -0.3
    # a non-finite measurement is refused, naming it, and nothing is written
    (oid2,) = catalog.register([obs(2)])
    (claim2,) = catalog.claim(1, "run-b", LEASE)
    with pytest.raises(CatalogError, match="non-finite snr"):
        catalog.complete(
            claim2, "run-b", "v1", [Detection(1.0, 2.0, None, None, 0.9, 5.0, 1.0, float("inf"))]
        )
    assert catalog.detections(oid2) == []


def test_0003_keeps_existing_detections_with_null_photometry(empty_url):
    cat = Catalog(empty_url)
    try:
        cat.migrate("0002")
        with cat.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO observations (name, survey, science_uri, reference_uri, status, model_version) "
                    "VALUES ('old', 's', 'a.fits', 'b.fits', 'inferred', 'v1')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO detections (observation_id, model_version, x, y, score, flux, run_id) "
                    "SELECT id, 'v1', 1, 2, 0.9, 7.5, 'run-1' FROM observations"
                )
            )
        cat.migrate()
        (row,) = cat.detections()
        assert (row["x"], row["flux"], row["flux_err"], row["snr"], row["stamp_uri"]) == (
            1,
            7.5,
            None,
            None,
            None,
        )
        indexes = {i["name"] for i in sa.inspect(cat.engine).get_indexes("detections")}
        assert {"ix_detections_run_id", "ix_detections_dec_ra"} <= indexes
    finally:
        cat.dispose()
