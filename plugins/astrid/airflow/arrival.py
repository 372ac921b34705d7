"""The realtime DAG's schedule: on arrival, or on its cron — whichever comes first.

``astrid ingest`` / ``POST /astrid/observations`` publish an "observation arrived" message after
the registration commits (:mod:`astrid.events`). Here the realtime DAG listens for it the way
Airflow 3 does event-driven scheduling: an :class:`~airflow.sdk.Asset` watched by an
:class:`~airflow.sdk.AssetWatcher` whose trigger is the common-messaging provider's
``MessageQueueTrigger`` — ``redis+pubsub`` (the redis provider's ``AwaitMessageTrigger``) or
``sqs`` (the amazon provider's ``SqsSensorTrigger``) — and the DAG is scheduled on
``AssetOrTimeSchedule(cron, [that asset])``. The message is a doorbell; the catalog is the mailbox:
runs still claim with leases, so the cron sweeps up whatever a lost message missed.

Parse time: importing ``MessageQueueTrigger`` initialises Airflow's providers manager (~220 ms
here), four times the 50 ms a DAG file may take. :class:`ArrivalTrigger` is what the DAG file
builds instead: it serialises *exactly* as ``MessageQueueTrigger(scheme=..., **kwargs)`` does (the
provider trigger's classpath and its full kwargs; ``tests/unit/test_arrival.py`` compares the two),
so the triggerer runs the provider's own trigger and never sees this class.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable
from airflow.triggers.base import BaseEventTrigger

from astrid.config import InferenceSchedulingConfig

ARRIVALS = "astrid_observation_arrivals"
ARRIVALS_URI = "x-astrid://observations/arrived"
EVENTS_CONN_ID = "astrid_events"  # the triggerer's Redis: same server as ASTRID_INFERENCE_EVENTS_URL
SQS_CONN_ID = "aws_default"
SQS_LONG_POLL_SECONDS = 20  # the longest SQS allows: a message returns the call at once

# scheme -> (the provider trigger MessageQueueTrigger dispatches to, its parameters with defaults)
PROVIDER_TRIGGERS: dict[str, tuple[str, dict[str, Any]]] = {
    "redis+pubsub": (
        "airflow.providers.redis.triggers.redis_await_message.AwaitMessageTrigger",
        {"channels": None, "redis_conn_id": "redis_default", "poll_interval": 60},
    ),
    "sqs": (
        "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
        {
            "sqs_queue": None,
            "aws_conn_id": "aws_default",
            "max_messages": 5,
            "num_batches": 1,
            "wait_time_seconds": 1,
            "visibility_timeout": None,
            "message_filtering": None,
            "delete_message_on_reception": True,
            "message_filtering_match_values": None,
            "message_filtering_config": None,
            "waiter_delay": 60,
            "region_name": None,
            "verify": None,
            "botocore_config": None,
        },
    ),
}


class ArrivalTrigger(BaseEventTrigger):
    """``MessageQueueTrigger(scheme=scheme, **kwargs)`` as the DAG file declares it, without its
    import cost: :meth:`serialize` gives what that trigger serialises to. Never run itself."""

    def __init__(self, *, scheme: str, **kwargs: Any) -> None:
        super().__init__()
        if scheme not in PROVIDER_TRIGGERS:
            raise ValueError(
                f"message queue scheme {scheme!r}: expected one of {', '.join(PROVIDER_TRIGGERS)}"
            )
        classpath, defaults = PROVIDER_TRIGGERS[scheme]
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise ValueError(f"{classpath.rsplit('.', 1)[1]} takes no {sorted(unknown)}")
        self.scheme, self.classpath = scheme, classpath
        self.kwargs = {**defaults, **kwargs}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self.classpath, dict(self.kwargs)

    async def run(self) -> Any:  # pragma: no cover - the triggerer runs the provider's class
        raise RuntimeError(
            "ArrivalTrigger is a parse-time declaration; the triggerer runs its serialize() target"
        )
        yield  # an async generator, like every trigger


def arrival_trigger(config: InferenceSchedulingConfig) -> ArrivalTrigger | None:
    """The trigger that listens for arrivals, or ``None`` when events are switched off."""
    if config.events_kind == "redis":
        return ArrivalTrigger(
            scheme="redis+pubsub",
            channels=[config.events_channel],
            redis_conn_id=EVENTS_CONN_ID,
            poll_interval=config.events_poll_seconds,
        )
    if config.events_kind == "sqs":
        return ArrivalTrigger(
            scheme="sqs",
            sqs_queue=config.events_url,
            aws_conn_id=SQS_CONN_ID,
            max_messages=10,  # one receive drains a burst: one asset event, one run
            wait_time_seconds=SQS_LONG_POLL_SECONDS,
            waiter_delay=max(1, round(config.events_poll_seconds)),
        )
    return None


def arrivals_asset(config: InferenceSchedulingConfig) -> Asset | None:
    """The asset an arrival message updates (``None`` when events are off)."""
    trigger = arrival_trigger(config)
    if trigger is None:
        return None
    return Asset(
        name=ARRIVALS,
        uri=ARRIVALS_URI,
        watchers=[AssetWatcher(name=f"{ARRIVALS}_{config.events_kind}", trigger=trigger)],
    )


def realtime_schedule(config: InferenceSchedulingConfig) -> Any:
    """The realtime DAG's ``schedule``: ``None`` when the realtime schedule is disabled, its cron
    when events are off, else "on arrival or on the cron" (``AssetOrTimeSchedule``)."""
    cron = config.schedule("realtime")
    asset = arrivals_asset(config)
    if cron is None or asset is None:
        return cron
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone=config.timezone), assets=[asset])
