"""Test helpers for code that uses the catalog (the tests' and the benchmarks', never the runtime's).

* :func:`postgres_unavailable` / :func:`temporary_postgres_database`: a throw-away database on the
  local PostgreSQL (``$ASTRID_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``).
* :func:`claim_until_empty`: a worker for multiprocessing (spawn) claim-contention tests; it lives
  here, in an importable module, so spawned children can unpickle it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def postgres_admin_url() -> str:
    return os.environ.get("ASTRID_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL)


def postgres_unavailable(timeout: float = 3.0) -> str | None:
    """``None`` when the test PostgreSQL answers, else the reason (for ``pytest.skip``)."""
    try:
        import psycopg2
    except ImportError as exc:  # pragma: no cover - psycopg2-binary is a pinned dependency
        return f"psycopg2 is not installed: {exc}"
    url = sa.make_url(postgres_admin_url())
    try:
        conn = psycopg2.connect(dsn(url), connect_timeout=max(1, int(timeout)))
    except psycopg2.OperationalError as exc:
        return f"PostgreSQL at {url.render_as_string(hide_password=True)} is unreachable: {exc}".strip()
    conn.close()
    return None


def dsn(url: sa.URL) -> str:
    parts = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


@contextmanager
def temporary_postgres_database(prefix: str = "astrid_test") -> Iterator[str]:
    """Create ``<prefix>_<uuid>`` (autocommit), yield its SQLAlchemy URL, drop it (forcefully) after."""
    import psycopg2

    admin = sa.make_url(postgres_admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(dsn(admin))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@dataclass(frozen=True)
class FakeDetection:
    """Duck-typed stand-in for ``astrid.ml.detect.Detection``."""

    x: float
    y: float
    ra: float | None
    dec: float | None
    score: float
    flux: float | None


def fake_detections(observation_id: int) -> list[FakeDetection]:
    """A deterministic number (``observation_id % 4``) of detections for an observation."""
    return [
        FakeDetection(x=float(i), y=float(observation_id), ra=None, dec=None, score=0.5 + i / 10, flux=1.0)
        for i in range(observation_id % 4)
    ]


def claim_until_empty(url: str, run_id: str, batch: int, model_version: str = "v-test") -> dict[str, Any]:
    """Claim ``batch`` at a time until nothing is left, completing each claim. Returns what was done."""
    from astrid.catalog.store import Catalog

    catalog = Catalog(url)
    try:
        claimed: list[int] = []
        calls = 0
        began = time.perf_counter()
        while True:
            claims = catalog.claim(batch, run_id, timedelta(minutes=10))
            calls += 1
            if not claims:
                break
            for claim in claims:
                claimed.append(claim.observation_id)
                catalog.complete(claim, run_id, model_version, fake_detections(claim.observation_id))
        return {"run_id": run_id, "claimed": claimed, "calls": calls, "seconds": time.perf_counter() - began}
    finally:
        catalog.dispose()


def migrate_worker(url: str) -> str | None:
    """Run ``Catalog(url).migrate()`` (for concurrent-migration tests); returns the revision."""
    from astrid.catalog.store import Catalog

    catalog = Catalog(url)
    try:
        catalog.migrate()
        return catalog.revision()
    finally:
        catalog.dispose()


_WORKERS: dict[str, Callable[..., Any]] = {"claim_until_empty": claim_until_empty, "migrate": migrate_worker}


def _child(queue: Any, barrier: Any, worker: str, args: tuple[Any, ...]) -> None:
    import traceback

    try:
        barrier.wait(timeout=120)  # everyone starts together, after the (slow) imports
        queue.put(("ok", _WORKERS[worker](*args)))
    except BaseException:
        queue.put(("error", traceback.format_exc()))


def run_processes(
    worker: str,
    arg_lists: list[tuple[Any, ...]],
    timeout: float = 120.0,
    during: Callable[[], None] | None = None,
) -> tuple[list[Any], float]:
    """Run ``worker`` once per argument tuple, each in its own *spawned* process, all released at
    once by a barrier; ``during()`` runs here right after the release, while they work.
    Returns (results in completion order, seconds from release to last result).
    A child's exception is re-raised here as an AssertionError carrying its traceback."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(arg_lists) + 1)
    procs = [ctx.Process(target=_child, args=(queue, barrier, worker, args)) for args in arg_lists]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=timeout)
        began = time.perf_counter()
        if during is not None:
            during()
        outcomes = [queue.get(timeout=timeout) for _ in procs]
        elapsed = time.perf_counter() - began
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():  # only our own children, by handle
                proc.kill()
    errors = [detail for status, detail in outcomes if status != "ok"]
    if errors:
        raise AssertionError("worker process failed:\n" + "\n".join(errors))
    return [detail for _status, detail in outcomes], elapsed
