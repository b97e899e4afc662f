"""Stop and start the machine's Redis and NATS services (fault tests).

The commands are the ones `.ci/services` starts them with. `redis_stopped()` and
`nats_stopped()` always start the service again on the way out, even when the test fails,
and wait until it answers. Nothing here skips: a service that does not come back is an
error that names it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"

REDIS_START = [
    "redis-server",
    "--daemonize", "yes",
    "--bind", "127.0.0.1", "-::1",
    "--port", "6379",
    "--save", "",
    "--appendonly", "no",
    "--dir", "/var/lib/redis",
    "--logfile", "/var/log/redis/ci.log",
]  # fmt: skip
NATS_START = [
    "start-stop-daemon", "--start", "--oknodo", "--background",
    "--exec", "/usr/sbin/nats-server", "--",
    "-a", "127.0.0.1", "-p", "4222", "-js",
    "-sd", "/var/lib/nats-server", "-l", "/var/log/nats-server.log",
]  # fmt: skip
NATS_STOP = ["start-stop-daemon", "--stop", "--oknodo", "--exec", "/usr/sbin/nats-server"]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate: object, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} (waited {timeout_s:g} s)")


def redis_up() -> bool:
    result = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"],
        capture_output=True,
        check=False,
        timeout=5,
    )
    return result.stdout.strip() == b"PONG"


def start_redis() -> None:
    if not redis_up():
        subprocess.run(REDIS_START, check=False, capture_output=True, timeout=30)
    _wait(redis_up, "Redis did not come back on 127.0.0.1:6379")


def stop_redis() -> None:
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
        check=False,
        capture_output=True,
        timeout=10,
    )
    _wait(lambda: not port_open(6379), "Redis did not stop")


def start_nats() -> None:
    if not port_open(4222):
        subprocess.run(NATS_START, check=False, capture_output=True, timeout=30)
    _wait(lambda: port_open(4222), "NATS did not come back on 127.0.0.1:4222")


def stop_nats() -> None:
    subprocess.run(NATS_STOP, check=False, capture_output=True, timeout=30)
    _wait(lambda: not port_open(4222), "NATS did not stop")


@contextlib.contextmanager
def redis_stopped() -> Iterator[None]:
    """Redis is down inside the block and up again (answering PING) after it."""
    stop_redis()
    try:
        yield
    finally:
        start_redis()


@contextlib.contextmanager
def nats_stopped() -> Iterator[None]:
    """NATS is down inside the block and up again (accepting connections) after it."""
    stop_nats()
    try:
        yield
    finally:
        start_nats()
