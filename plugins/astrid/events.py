"""The doorbell: "an observation arrived", published after its registration commits.

A message never carries work, only a wake-up. The catalog is the mailbox (the one source of
truth): the realtime DAG, woken by the message through Airflow's ``MessageQueueTrigger``, claims
whatever is waiting there with leases. So a lost message (Redis pub/sub keeps nothing; the
triggerer may be down) only delays an observation until the next cron sweep, and a duplicate
message duplicates nothing.

* Redis pub/sub (``redis://host:port/db``, the default; Redis is in the compose stack);
* SQS (an SQS queue URL, for AWS/MWAA).

A realtime run whose claim took its full ``max_observations`` while more wait rings too
(:class:`Waiting`, :func:`ring_if_more_wait`): a burst bigger than one run's claim drains run
after run instead of waiting for the cron.

``ASTRID_INFERENCE_EVENTS_ENABLED=false`` switches it off (no message, cron only).
``python -m astrid.events --check`` exits 0 when the configured queue answers (``make up`` uses it
to choose between the event path and cron only).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from astrid.config import InferenceSchedulingConfig, load_config

log = logging.getLogger(__name__)

ARRIVED = "observation.arrived"
WAITING = "observations.waiting"
TIMEOUT_SECONDS = 2.0  # a doorbell that does not answer must not hold up an ingest


@dataclass(frozen=True)
class Arrival:
    """The message: which observation arrived, when, and in which state (JSON on the wire)."""

    observation_id: int
    name: str
    status: str
    arrived_at: str | None
    event: str = ARRIVED

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        return f"observation {self.observation_id} ({self.name}) is registered"


@dataclass(frozen=True)
class Waiting:
    """The message a realtime run sends when it claimed its limit and observations still wait.

    Arrivals during a run fold into one next run that claims at most ``max_observations``, so a
    burst larger than that would otherwise leave the rest for the cron. This ring asks for one
    more run; like an arrival it coalesces (``max_active_runs=1``: the next run starts when this
    one ends), and the chain stops by itself when a run finds fewer than its limit."""

    waiting: int
    run_id: str
    event: str = WAITING

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        return f"{self.waiting} observation(s) still wait after run {self.run_id}"


Message = Arrival | Waiting


class Doorbell(Protocol):
    def ring(self, message: Message) -> None:
        """Publish ``message``; raise on failure (callers use :func:`ring_safely`)."""
        ...

    def check(self) -> None:
        """Raise when the queue does not answer."""
        ...


class NoDoorbell:
    """Events switched off: nothing is published, the realtime DAG runs on its cron."""

    def ring(self, message: Message) -> None:
        return None

    def check(self) -> None:
        raise RuntimeError("events are switched off (ASTRID_INFERENCE_EVENTS_ENABLED=false)")

    def __repr__(self) -> str:
        return "NoDoorbell()"


class RedisDoorbell:
    """``PUBLISH channel message`` on a Redis server."""

    def __init__(self, url: str, channel: str) -> None:
        self.url, self.channel = url, channel
        self._client: Any = None

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        return f"RedisDoorbell({parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}, {self.channel!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS
            )
        return self._client

    def ring(self, message: Message) -> None:
        listeners = self.client.publish(self.channel, message.to_json())
        log.debug("%s: published on %s to %d listener(s)", message.describe(), self.channel, listeners)

    def check(self) -> None:
        self.client.ping()


class SqsDoorbell:
    """``SendMessage`` to an SQS queue (credentials: the usual AWS chain; region from the URL)."""

    def __init__(self, queue_url: str) -> None:
        self.queue_url = queue_url
        self._client: Any = None

    def __repr__(self) -> str:
        return f"SqsDoorbell({self.queue_url!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            host = urlsplit(self.queue_url).hostname or ""
            region = host.split(".")[1] if host.startswith("sqs.") and host.count(".") >= 3 else None
            self._client = boto3.client(
                "sqs",
                region_name=region,
                config=Config(
                    connect_timeout=TIMEOUT_SECONDS, read_timeout=TIMEOUT_SECONDS, retries={"max_attempts": 2}
                ),
            )
        return self._client

    def ring(self, message: Message) -> None:
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=message.to_json())

    def check(self) -> None:
        self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])


def doorbell(config: InferenceSchedulingConfig | None = None) -> Doorbell:
    """The doorbell the configuration asks for (:class:`NoDoorbell` when events are off)."""
    config = config or load_config()
    kind = config.events_kind
    if kind == "redis":
        return RedisDoorbell(config.events_url, config.events_channel)
    if kind == "sqs":
        return SqsDoorbell(config.events_url)
    return NoDoorbell()


def ring_safely(bell: Doorbell, message: Message) -> bool:
    """Ring; on failure log a warning and return False. The observation is registered either way,
    and the realtime DAG's cron sweep will find it: a doorbell failure never fails an ingest (nor
    a run). With events switched off nothing is published and the answer is False."""
    if isinstance(bell, NoDoorbell):
        return False
    try:
        bell.ring(message)
    except Exception as exc:
        log.warning(
            "%s, but the %s message could not be published via %r (%s: %s): the next cron run of "
            "the realtime DAG will process it",
            message.describe(),
            message.event,
            bell,
            type(exc).__name__,
            exc,
        )
        return False
    return True


def ring_if_more_wait(
    catalog: Any, claimed: int, limit: int, run_id: str, bell: Doorbell | None = None
) -> bool:
    """After a realtime claim: when it took its full ``limit`` and ``preprocessed`` observations
    still wait, ring once more (:class:`Waiting`) so another run follows this one instead of the
    rest waiting for the cron. Returns whether a message went out."""
    bell = bell if bell is not None else doorbell()
    if isinstance(bell, NoDoorbell) or claimed < limit:
        return False
    waiting = catalog.status_counts().get("preprocessed", 0)
    if not waiting:
        return False
    message = Waiting(waiting=waiting, run_id=run_id)
    rang = ring_safely(bell, message)
    if rang:
        log.info("%s: %s published, another realtime run follows", message.describe(), WAITING)
    return rang


def main(argv: list[str] | None = None) -> int:
    """``python -m astrid.events --check``: 0 when events are on and the queue answers, else 1
    (one line on stderr saying why)."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["--check"]:
        print("usage: python -m astrid.events --check", file=sys.stderr)
        return 2
    try:
        bell = doorbell()
        bell.check()
    except Exception as exc:
        print(f"astrid events unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"astrid events: {bell!r} answers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
