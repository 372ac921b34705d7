"""A metrics client for tests of the core: it keeps what it was sent."""

from __future__ import annotations


class RecordingMetrics:
    """A Metrics implementation that keeps what it was sent (the core's only metrics interface)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, float]] = []

    def incr(self, stat: str, count: int = 1, rate: float = 1) -> None:
        self.sent.append(("incr", stat, count))

    def gauge(self, stat: str, value: float, rate: float = 1, delta: bool = False) -> None:
        self.sent.append(("gauge", stat, value))

    def timing(self, stat: str, dt: float) -> None:
        self.sent.append(("timing", stat, dt))
