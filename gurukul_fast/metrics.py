"""Prometheus metrics for one server, in its own registry (tests run several servers).

Label children are bound once here so the hot path pays one `inc()` per event, not a
label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


class Metrics:
    """Counters and gauges of one server; `render()` produces the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("gurukul_connections", "Open WebSocket connections", registry=r)
        self.active_chats = Gauge("gurukul_active_chats", "Chats with a local member", registry=r)
        frames_in = Counter("gurukul_frames_in", "Frames received, by type", ["type"], registry=r)
        frames_out = Counter(
            "gurukul_frames_out", "Frames delivered, by type", ["type"], registry=r
        )
        errors = Counter("gurukul_errors", "Error frames sent, by code", ["code"], registry=r)
        self.frames_in = {t: frames_in.labels(t) for t in _FRAME_TYPES}
        self.frames_out = {t: frames_out.labels(t) for t in _FRAME_TYPES}
        self.errors = {c: errors.labels(str(c)) for c in _ERROR_CODES}
        self.messages_stored = Counter(
            "gurukul_messages_stored", "Messages durably stored", registry=r
        )
        self.agent_replies = Counter("gurukul_agent_replies", "Agent replies stored", registry=r)
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
        return _counter_value(self.messages_stored)

    def errors_total(self) -> float:
        return sum(_counter_value(c) for c in self.errors.values())

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _counter_value(counter: Counter) -> float:
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return float(sample.value)
    return 0.0
