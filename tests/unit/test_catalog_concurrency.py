"""Claims and migrations under real contention: spawned processes (and threads) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa

from astrid.catalog import Catalog, DetectionRow, NewObservation
from astrid.catalog.store import MIGRATION_LOCK_KEY
from tests.catalog_helpers import (
    fake_detections,
    postgres_unavailable,
    run_processes,
    temporary_postgres_database,
)

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
N_OBSERVATIONS = 200
N_PROCESSES = 8
BATCH = 7


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    """An empty database: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    reason = postgres_unavailable()
    if reason:
        pytest.skip(f"PostgreSQL tests need 127.0.0.1:5432: {reason}")
    with temporary_postgres_database() as pg:
        yield pg


def _seed(url: str, n: int) -> tuple[Catalog, list[int]]:
    catalog = Catalog(url)
    catalog.migrate()
    ids = catalog.register(
        NewObservation(
            name=f"c-{i:04d}",
            science_uri=f"s/{i}.fits",
            reference_uri=f"r/{i}.fits",
            mjd=60000.0 + (i % 17),  # many ties: ordering falls back to id
        )
        for i in range(n)
    )
    return catalog, ids


def test_processes_claim_each_observation_exactly_once(url):
    catalog, ids = _seed(url, N_OBSERVATIONS)
    try:
        results, seconds = run_processes(
            "claim_until_empty", [(url, f"run-{p}", BATCH) for p in range(N_PROCESSES)]
        )
        claimed = [oid for r in results for oid in r["claimed"]]
        duplicates = [oid for oid, n in Counter(claimed).items() if n > 1]
        assert duplicates == [], f"claimed more than once: {duplicates}"
        assert sorted(claimed) == sorted(ids), "observations lost"
        assert sum(1 for r in results if r["claimed"]) >= 2, "no contention happened"
        assert catalog.status_counts()["inferred"] == N_OBSERVATIONS
        assert catalog.stuck_claims() == [] and catalog.status_counts()["claimed"] == 0

        with catalog.engine.connect() as conn:
            query = sa.select(DetectionRow.observation_id, sa.func.count()).group_by(
                DetectionRow.observation_id
            )
            per_obs = {oid: n for oid, n in conn.execute(query)}
        expected = {oid: len(fake_detections(oid)) for oid in ids if fake_detections(oid)}
        assert per_obs == expected
        # which run completed an observation is recorded on its detections and the observation
        owner = {oid: r["run_id"] for r in results for oid in r["claimed"]}
        for row in catalog.detections()[:50]:
            assert row["run_id"] == owner[row["observation_id"]]
        rate = N_OBSERVATIONS / seconds
        print(
            f"\n{url.split(':')[0]}: {N_OBSERVATIONS} claim+complete by {N_PROCESSES} processes in {seconds:.2f} s ({rate:.0f}/s)"
        )
    finally:
        catalog.dispose()


def test_concurrent_migrate_from_processes(url):
    during = None
    if url.startswith("postgresql"):
        # Hold the migration lock ourselves: all three must queue on it (proof that migrate()
        # takes it), then race for it once released. Without the lock they would not wait.
        holder = sa.create_engine(url, poolclass=sa.pool.NullPool).connect()
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})

        def during() -> None:
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            deadline = time.monotonic() + 30
            while holder.execute(sa.text(waiting)).scalar() < 3:
                assert time.monotonic() < deadline, "migrate() did not wait on the advisory lock"
                time.sleep(0.05)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            holder.close()

    revisions, _ = run_processes("migrate", [(url,)] * 3, during=during)
    catalog = Catalog(url)
    try:
        assert set(revisions) == {catalog.head_revision()}
        with catalog.engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        catalog.dispose()


def test_threads_claim_disjoint_sets_and_alerts_fire_once(url):
    catalog, ids = _seed(url, 60)
    try:
        start = threading.Barrier(6)

        def work(n: int) -> list[int]:
            start.wait()
            got: list[int] = []
            while claims := catalog.claim(4, f"thread-{n}", timedelta(minutes=5)):
                for c in claims:
                    catalog.complete(c, f"thread-{n}", "v1", [])
                    got.append(c.observation_id)
            return got

        with ThreadPoolExecutor(6) as pool:
            claimed = [oid for got in pool.map(work, range(6)) for oid in got]
        assert sorted(claimed) == sorted(ids)

        gate = threading.Barrier(6)

        def alert(_: int) -> bool:
            gate.wait()
            return catalog.alert_due("run-failed:realtime", timedelta(minutes=60))

        with ThreadPoolExecutor(6) as pool:
            fired = list(pool.map(alert, range(6)))
        assert fired.count(True) == 1
        state = catalog.alert_state("run-failed:realtime")
        assert state["count"] == 1 and state["suppressed"] == 5
    finally:
        catalog.dispose()
