"""The realtime DAG's arrival schedule (astrid.airflow.arrival): the parse-time trigger serialises
exactly as the providers' MessageQueueTrigger does, and the DAG is "on arrival or on the cron"."""

from __future__ import annotations

import pytest

from astrid.airflow.arrival import ARRIVALS, ArrivalTrigger, arrival_trigger, realtime_schedule
from astrid.config import InferenceSchedulingConfig as Config

SQS = "https://sqs.eu-west-1.amazonaws.com/123456789012/astrid-arrivals"


@pytest.mark.parametrize(
    "kwargs",
    [
        {
            "scheme": "redis+pubsub",
            "channels": ["astrid.observations"],
            "redis_conn_id": "astrid_events",
            "poll_interval": 0.5,
        },
        {"scheme": "redis+pubsub", "channels": ["c"]},
        {
            "scheme": "sqs",
            "sqs_queue": SQS,
            "aws_conn_id": "aws_default",
            "max_messages": 10,
            "wait_time_seconds": 20,
            "waiter_delay": 1,
        },
    ],
)
def test_arrival_trigger_serialises_as_message_queue_trigger(kwargs):
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    assert ArrivalTrigger(**kwargs).serialize() == MessageQueueTrigger(**kwargs).serialize()


def test_arrival_trigger_refuses_what_the_provider_would():
    with pytest.raises(ValueError, match="kafka"):
        ArrivalTrigger(scheme="kafka", topics=["x"])
    with pytest.raises(ValueError, match="poll_intervall"):
        ArrivalTrigger(scheme="redis+pubsub", channels=["c"], poll_intervall=1)


def test_schedule_follows_the_configuration():
    from airflow.sdk import AssetOrTimeSchedule

    schedule = realtime_schedule(Config())
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "*/15 * * * *"
    (asset,) = schedule.asset_condition.objects
    assert asset.name == ARRIVALS
    classpath, kwargs = asset.watchers[0].trigger.serialize()
    assert classpath.endswith("AwaitMessageTrigger")
    assert kwargs == {
        "channels": ["astrid.observations"],
        "redis_conn_id": "astrid_events",
        "poll_interval": 0.5,
    }
    assert realtime_schedule(Config(events_enabled=False)) == "*/15 * * * *"
    assert realtime_schedule(Config(realtime_enabled=False)) is None  # manual only, events or not
    sqs = arrival_trigger(Config(events_url=SQS, events_poll_seconds=0.2)).serialize()
    assert sqs[0].endswith("SqsSensorTrigger") and sqs[1]["sqs_queue"] == SQS and sqs[1]["waiter_delay"] == 1


def test_the_realtime_dag_serialises_with_its_watcher(airflow_db):
    """Through Airflow's DagBag and DAG serialisation (what the dag-processor stores)."""
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    dags = Path(__file__).resolve().parents[2] / "dags"
    dag = DagBag(dag_folder=str(dags / "astrid_realtime_inference.py")).dags["astrid_realtime_inference"]
    data = DagSerialization.to_dict(dag)
    timetable = data["dag"]["timetable"]
    assert timetable["__type"].endswith("AssetOrTimeSchedule"), timetable["__type"]
    text = str(timetable)
    assert "AwaitMessageTrigger" in text and "astrid_events" in text and ARRIVALS in text
