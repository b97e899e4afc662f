"""The orchestrator's side of the load generator: fork workers, send commands, merge replies.

A `Session` is one server under test plus the worker processes connected to it. The
orchestrator itself runs no event loop: it only forks, writes commands to pipes and reads
the replies, so it costs the generator cores nothing while a measurement runs.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from bench.common import Server, generator_cpus
from bench.loadgen.worker import Plan, worker_main

__all__ = ["Session", "SessionError", "default_workers", "merge", "percentile", "source_ip"]

# One source IP per this many connections: Linux gives each (source IP, destination)
# pair the ephemeral port range (32768–60999 by default), about 28,000 ports.
CONNECTIONS_PER_SOURCE_IP = 20_000
# "fork" starts workers in milliseconds; "spawn" is safe in a process that already has
# threads (a test runner), at about 0.3 s per worker.
START_METHOD = "fork"


class SessionError(RuntimeError):
    """A worker failed or clients could not connect; the message says which."""


def default_workers() -> int:
    """One worker per generator core: more processes on one core only add switches."""
    return max(1, len(generator_cpus()))


def source_ip(index: int) -> str:
    return f"127.0.0.{1 + index // CONNECTIONS_PER_SOURCE_IP}"


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return float(sorted_values[index])


class Session:
    """Workers connected to one server. Use as a context manager; call `connect()` first.

    A plan with its own `url` connects there instead (the nodes of a cluster).
    """

    def __init__(self, server: Server, plans: list[Plan], workers: int) -> None:
        self.server = server
        self.plans = plans
        # Any: typeshed's BaseContext does not declare Process, every real context has it.
        context: Any = multiprocessing.get_context(START_METHOD)
        self._pipes: list[Connection] = []
        self._processes: list[BaseProcess] = []
        workers = max(1, min(workers, len(plans)))
        cpus = generator_cpus()
        for index in range(workers):
            mine = plans[index::workers]
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, server.url, mine, cpus),
                name=f"loadgen-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def workers(self) -> int:
        return len(self._pipes)

    def call(self, command: str, *args: Any, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        """Send one command to every worker at once; return their replies in worker order."""
        self.start(command, *args)
        return self.results(command, timeout_s)

    def start(self, command: str, *args: Any) -> None:
        """Send one command to every worker; collect the replies with `results()`."""
        for pipe in self._pipes:
            pipe.send((command, args))

    def results(self, command: str, timeout_s: float = 600.0) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        for index, pipe in enumerate(self._pipes):
            if not pipe.poll(timeout_s):
                raise SessionError(f"worker {index} did not answer {command!r} in {timeout_s}s")
            reply = pipe.recv()
            if isinstance(reply, dict) and "error" in reply:
                raise SessionError(f"worker {index} failed {command!r}: {reply['error']}")
            replies.append(reply)
        return replies

    def connect(self) -> dict[str, float]:
        """Connect every client; owners join first so each chat exists before its members join."""
        connected = failed = 0
        seconds = 0.0
        for owners in (True, False):
            for reply in self.call("connect", owners):
                connected += reply["connected"]
                failed += reply["failed"]
                seconds = max(seconds, reply["seconds"])
        if failed:
            tail = self.server.log_tail(5)
            raise SessionError(
                f"{failed} of {connected + failed} clients failed to connect to "
                f"{self.server.label}" + (f"; server log:\n{tail}" if tail else "")
            )
        return {"connected": connected, "seconds": seconds}

    def close(self) -> None:
        for pipe in self._pipes:
            try:
                pipe.send(("exit", ()))
                pipe.poll(10)
            except (OSError, EOFError):
                pass
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        self._pipes.clear()
        self._processes.clear()


def merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several workers' reports; merge and sort their latencies."""
    latencies = sorted(v for reply in replies for v in reply["latencies_us"])
    merged: dict[str, Any] = {
        key: sum(reply[key] for reply in replies)
        for key in (
            "measured",
            "loss",
            "gaps",
            "reordered",
            "fifo_errors",
            "errors",
            "other_frames",
            "closed",
            "cpu",
        )
    }
    merged["close_codes"] = sorted({code for reply in replies for code in reply["close_codes"]})
    merged["p50_ms"] = percentile(latencies, 0.50) / 1000
    merged["p99_ms"] = percentile(latencies, 0.99) / 1000
    merged["max_ms"] = (latencies[-1] / 1000) if latencies else float("nan")
    return merged
