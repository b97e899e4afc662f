"""Prometheus metrics for one server, in its own registry (tests run several servers).

The counters on the hot path (frames in and out, errors, messages stored) are plain
integers behind a custom collector: prometheus_client's counters take a lock on every
`inc()`, which a server on one event-loop thread does not need and pays per message.
Rare events keep prometheus_client's own types.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_FRAME_TYPES = (
    "message",
    "typing",
    "read_receipt",
    "chat_update",
    "ping",
    "auth",
    "history",
    "cancel",
    "pong",
    "agent_stream",
    "batch",
    "error",
    "invalid",
)
_ERROR_CODES = (400, 401, 403, 404, 413, 429, 500, 503, 504)


class LoopCounter:
    """A counter only the event-loop thread touches: `inc()` is one integer add."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _LoopCounters(Collector):
    """Exposes LoopCounters as Prometheus counters (name, help, label → counter)."""

    def __init__(self) -> None:
        self.families: list[tuple[str, str, str | None, dict[str, LoopCounter]]] = []

    def add(
        self, name: str, documentation: str, label: str | None, children: dict[str, LoopCounter]
    ) -> None:
        self.families.append((name, documentation, label, children))

    def collect(self) -> Iterator[Metric]:
        for name, documentation, label, children in self.families:
            family = CounterMetricFamily(name, documentation, labels=[label] if label else None)
            for value, counter in children.items():
                family.add_metric([value] if label else [], counter.value)
            yield family


class Metrics:
    """Counters and gauges of one server; `render()` produces the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("gurukul_connections", "Open WebSocket connections", registry=r)
        self.active_chats = Gauge("gurukul_active_chats", "Chats with a local member", registry=r)
        loop_counters = _LoopCounters()
        self.frames_in = {t: LoopCounter() for t in _FRAME_TYPES}
        self.frames_out = {t: LoopCounter() for t in _FRAME_TYPES}
        self.errors = {c: LoopCounter() for c in _ERROR_CODES}
        self.messages_stored = LoopCounter()
        self.agent_replies = LoopCounter()
        loop_counters.add("gurukul_frames_in", "Frames received, by type", "type", self.frames_in)
        loop_counters.add(
            "gurukul_frames_out", "Frames delivered, by type", "type", self.frames_out
        )
        loop_counters.add(
            "gurukul_errors",
            "Error frames sent, by code",
            "code",
            {str(code): counter for code, counter in self.errors.items()},
        )
        loop_counters.add(
            "gurukul_messages_stored", "Messages durably stored", None, {"": self.messages_stored}
        )
        loop_counters.add(
            "gurukul_agent_replies", "Agent replies stored", None, {"": self.agent_replies}
        )
        r.register(loop_counters)
        self.commit_seconds = Histogram(
            "gurukul_storage_commit_seconds",
            "Group commit latency",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.commit_batch = Histogram(
            "gurukul_storage_commit_batch_size",
            "Messages per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.commit_failures = Counter(
            "gurukul_storage_commit_failures", "Failed group commits", registry=r
        )
        self.slow_consumer_drops = Counter(
            "gurukul_slow_consumer_drops", "Connections closed 4008 (slow consumer)", registry=r
        )
        self.lossy_drops = Counter(
            "gurukul_lossy_frames_dropped", "Typing frames shed under back-pressure", registry=r
        )
        self.http_rejections = Counter(
            "gurukul_upgrade_rejections", "Upgrades refused, by status", ["status"], registry=r
        )

    def count_error(self, code: int) -> None:
        counter = self.errors.get(code)
        if counter is not None:
            counter.inc()

    def observe_commit(self, batch_size: int, seconds: float, ok: bool) -> None:
        """GroupCommitter observer."""
        if ok:
            self.commit_seconds.observe(seconds)
            self.commit_batch.observe(batch_size)
        else:
            self.commit_failures.inc()

    def stored_total(self) -> float:
        """Messages stored since start (for the periodic log line)."""
        return self.messages_stored.value

    def errors_total(self) -> float:
        return sum(counter.value for counter in self.errors.values())

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
