"""The doorbell (astrid.events) against real queues: the local Redis, and SQS through moto's
server — published by our SqsDoorbell and received by the amazon provider's trigger exactly as the
realtime DAG declares it (astrid.airflow.arrival), i.e. the MWAA path without MWAA."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest

from astrid.events import Arrival, NoDoorbell, RedisDoorbell, SqsDoorbell, doorbell, ring_safely
from tests.integration.standalone import free_port, redis_unavailable

ARRIVAL = Arrival(
    observation_id=7, name="m31-0042", status="preprocessed", arrived_at="2026-12-01T20:00:00+00:00"
)


def _check(env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
    return subprocess.run(
        [sys.executable, "-m", "astrid.events", "--check"],
        env={**clean, **env},
        capture_output=True,
        text=True,
    )


def test_check_says_whether_the_queue_answers():
    if redis_unavailable():
        pytest.skip(redis_unavailable())
    ok = _check({})  # the default: the local Redis
    assert ok.returncode == 0 and "answers" in ok.stdout
    down = _check({"ASTRID_INFERENCE_EVENTS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "astrid events unavailable: ConnectionError" in down.stderr
    off = _check({"ASTRID_INFERENCE_EVENTS_ENABLED": "false"})
    assert off.returncode == 1 and "switched off" in off.stderr


def test_doorbell_follows_the_configuration():
    from astrid.config import InferenceSchedulingConfig as Config

    assert isinstance(doorbell(Config()), RedisDoorbell)
    sqs = doorbell(Config(events_url="https://sqs.eu-west-1.amazonaws.com/123456789012/q"))
    assert isinstance(sqs, SqsDoorbell)
    assert isinstance(doorbell(Config(events_enabled=False)), NoDoorbell)
    assert ring_safely(NoDoorbell(), ARRIVAL) is False  # off: nothing published, and it says so
    assert "secret" not in repr(RedisDoorbell("redis://:secret@127.0.0.1:6379/0", "c"))


@pytest.fixture
def sqs(monkeypatch):
    pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    import boto3

    client = boto3.client("sqs", region_name="us-east-1")
    url = client.create_queue(QueueName=f"astrid-arrivals-{uuid.uuid4().hex[:6]}")["QueueUrl"]
    yield endpoint, url, client
    server.stop()


def test_sqs_doorbell_is_heard_by_the_providers_trigger_as_the_dag_declares_it(sqs, monkeypatch):
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    from astrid.airflow.arrival import arrival_trigger
    from astrid.config import InferenceSchedulingConfig as Config

    endpoint, url, client = sqs
    bell = SqsDoorbell(url)
    bell.check()
    assert ring_safely(bell, ARRIVAL) is True
    # the trigger the DAG declares, with the test's connection and a short long-poll
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_MOTO",
        json.dumps({"conn_type": "aws", "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}),
    )
    _, kwargs = arrival_trigger(Config(events_url=url)).serialize()
    assert kwargs["wait_time_seconds"] == 20 and kwargs["max_messages"] == 10
    kwargs.update(aws_conn_id="aws_moto", wait_time_seconds=1, waiter_delay=1)
    trigger = MessageQueueTrigger(scheme="sqs", **kwargs)

    async def first_event():
        return await asyncio.wait_for(trigger.run().__anext__(), timeout=60)

    event = asyncio.run(first_event())
    bodies = [json.loads(m["Body"]) for m in event.payload["message_batch"]]
    assert bodies == [json.loads(ARRIVAL.to_json())]
    # deleted on reception: the queue is empty again (a message is a wake-up, not a work item)
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_an_unreachable_sqs_queue_never_fails_the_ring(sqs, caplog):
    _, url, _ = sqs
    assert ring_safely(SqsDoorbell(url + "-missing"), ARRIVAL) is False
    assert "could not be published" in caplog.text and "cron" in caplog.text


def test_a_full_claim_with_more_waiting_rings_for_another_run(tmp_path, caplog):
    """The realtime claim's follow-up ring, against the real local Redis and a real SQLite catalog:
    only when the claim took its whole limit and preprocessed observations still wait."""
    if redis_unavailable():
        pytest.skip(redis_unavailable())
    from datetime import timedelta

    import redis

    from astrid.catalog import Catalog
    from astrid.events import WAITING, ring_if_more_wait
    from tests.unit.test_catalog import obs

    catalog = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.migrate()
    catalog.register([obs(i) for i in range(5)])
    channel = f"astrid-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    listener = client.pubsub()
    listener.subscribe(channel)
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    bell = RedisDoorbell("redis://127.0.0.1:6379/0", channel)
    try:
        first = catalog.claim(3, "run-1", timedelta(minutes=5))
        assert ring_if_more_wait(catalog, len(first), 3, "run-1", bell) is True  # full, 2 wait
        body = json.loads(listener.get_message(timeout=5)["data"])
        assert body == {"event": WAITING, "waiting": 2, "run_id": "run-1"}
        assert "2 observation(s) still wait after run run-1: observations.waiting published" in caplog.text
        rest = catalog.claim(3, "run-2", timedelta(minutes=5))
        assert ring_if_more_wait(catalog, len(rest), 3, "run-2", bell) is False  # not full: the end
        assert ring_if_more_wait(catalog, 3, 3, "run-3", bell) is False  # full, but none waits
        assert listener.get_message(timeout=1) is None
        assert ring_if_more_wait(catalog, 3, 3, "run-4", NoDoorbell()) is False  # events off
        catalog.register([obs(9)])
        dead = RedisDoorbell(f"redis://127.0.0.1:{free_port()}/0", channel)
        assert ring_if_more_wait(catalog, 3, 3, "run-5", dead) is False  # never fails the run
        assert "1 observation(s) still wait after run run-5" in caplog.text
    finally:
        listener.close()
        client.close()
