"""A realtime run whose claim is full while observations still wait asks for the next run: the
shipped DAG run with ``dag.test()`` (real Airflow, SQLite catalog, real files, the shipped U-Net on
CPU), its doorbell on the real local Redis on a channel of this test's own."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.dag_runner import inprocess_env, run_dag
from tests.integration.standalone import redis_unavailable

SIZE = 128


@pytest.fixture
def listening(airflow_db, tmp_path):
    if redis_unavailable():
        pytest.skip(redis_unavailable())
    import redis

    channel = f"astrid-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    events = {
        "ASTRID_INFERENCE_EVENTS_ENABLED": "true",
        "ASTRID_INFERENCE_EVENTS_URL": "redis://127.0.0.1:6379/0",
        "ASTRID_INFERENCE_EVENTS_CHANNEL": channel,
    }
    with inprocess_env(tmp_path, **events):
        yield pubsub
    pubsub.close()
    client.close()


def test_a_full_claim_with_more_waiting_rings_for_the_next_run(listening):
    import os

    from astrid.airflow.hooks import CatalogHook
    from astrid.events import WAITING
    from astrid.storage import StorageRoot
    from astrid.survey import seed_survey

    storage = StorageRoot.from_uri(os.environ["ASTRID_STORAGE_ROOT"])
    seed_survey(
        5,
        size=SIZE,
        seed=7400,
        catalog_url=os.environ["ASTRID_CATALOG_URL"],
        storage_root=storage,
        prefix="bl",
    )
    catalog = CatalogHook().get_conn()

    first = run_dag("astrid_realtime_inference", {"max_observations": 3})
    assert str(first.state) == "success"
    body = json.loads(listening.get_message(timeout=5)["data"])
    assert body == {"event": WAITING, "waiting": 2, "run_id": first.run_id}
    # the next run takes the last two: not a full claim, so the chain ends here
    second = run_dag("astrid_realtime_inference", {"max_observations": 3})
    assert str(second.state) == "success"
    assert listening.get_message(timeout=2) is None
    assert len(catalog.observations(status="inferred")) == 5
