"""Run N worker processes on one port: fork, restart the ones that crash, drain on SIGTERM.

Theory of operation: the supervisor forks `n` children; each calls `serve_one()`, which
binds the listening port itself with `SO_REUSEPORT` (`reuse_port=True`, which
`picows.ws_create_server` forwards to `loop.create_server`), so the kernel spreads new
connections over the workers with no accept lock and no shared socket. The supervisor
holds no event loop: it blocks SIGCHLD, SIGTERM and SIGINT and waits for them with
`sigtimedwait`, which leaves no window for a lost signal.

- A worker that exits while we are not stopping is restarted after a backoff that doubles
  from `backoff_min_s` to `backoff_max_s` and resets once a worker stayed up
  `stable_after_s`. An exit status in `fatal_exit_codes` (2: the CLI's "bad config,
  storage unreachable") is not retried: the supervisor stops the others and returns it.
- SIGTERM or SIGINT is forwarded (as SIGTERM) to every worker, which drains; after
  `drain_timeout_s` the stragglers get SIGKILL. A second signal kills at once. Returns 0.

Call `run_workers` before anything starts threads or an event loop (fork copies only the
calling thread). The port is best fixed before forking: `reserve_port` binds it once in
the supervisor (and resolves port 0), so a taken port fails fast with one error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass

__all__ = ["WORKER_ENV", "reserve_port", "run_workers"]

logger = logging.getLogger(__name__)

WORKER_ENV = "GURUKUL_WORKER"  # set in each worker: its index, 0 … n-1
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


@dataclass(slots=True)
class _Slot:
    index: int
    pid: int = 0  # 0: not running
    started_at: float = 0.0
    failures: int = 0  # crashes in a row, for the backoff
    restart_at: float | None = None  # monotonic time of the scheduled restart


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind `host:port` with SO_REUSEPORT without listening; return the socket.

    Keep it open while the workers run: it resolves port 0 to a real port the workers then
    share, and it makes "address in use" fail here, once. Only listening sockets take
    connections, so this one never does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_workers(
    n: int,
    serve_one: Callable[[], int],
    *,
    drain_timeout_s: float = 15.0,
    backoff_min_s: float = 0.5,
    backoff_max_s: float = 30.0,
    stable_after_s: float = 30.0,
    fatal_exit_codes: Collection[int] = (2,),
) -> int:
    """Run `serve_one()` in `n` forked workers until SIGTERM/SIGINT; return the exit status.

    Returns 0 after a signal-initiated drain, or the status of a worker that exited with
    one of `fatal_exit_codes`. Blocks the calling process until then.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    slots = [_Slot(i) for i in range(n)]
    stopping = False
    deadline = 0.0
    status = 0
    try:
        for slot in slots:
            _spawn(slot, serve_one, old_mask)
        logger.info("supervisor %d: started %d workers", os.getpid(), n)
        while True:
            now = time.monotonic()
            waits = [s.restart_at - now for s in slots if s.restart_at is not None]
            if stopping:
                waits.append(deadline - now)
            timeout = max(0.0, min(waits, default=1.0))
            info = signal.sigtimedwait(_SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                if stopping:
                    logger.warning("supervisor: second signal, killing the workers")
                    _signal_all(slots, signal.SIGKILL)
                else:
                    logger.info("supervisor: %s, draining workers", signal.strsignal(info.si_signo))
                    stopping = True
                    deadline = time.monotonic() + drain_timeout_s
                    _signal_all(slots, signal.SIGTERM)
            for slot, code in _reap(slots):
                uptime = time.monotonic() - slot.started_at
                if stopping:
                    logger.info("worker %d (pid %d) exited with %d", slot.index, slot.pid, code)
                elif code in fatal_exit_codes:
                    logger.error(
                        "worker %d (pid %d) exited with %d: not restarting; stopping all",
                        slot.index,
                        slot.pid,
                        code,
                    )
                    status = code
                    stopping = True
                    deadline = time.monotonic() + drain_timeout_s
                    _signal_all(slots, signal.SIGTERM)
                else:
                    slot.failures = 1 if uptime >= stable_after_s else slot.failures + 1
                    delay = min(backoff_max_s, backoff_min_s * 2 ** (slot.failures - 1))
                    logger.error(
                        "worker %d (pid %d) died with %s after %.1f s; restarting in %.1f s",
                        slot.index,
                        slot.pid,
                        _describe(code),
                        uptime,
                        delay,
                    )
                    slot.restart_at = time.monotonic() + delay
                slot.pid = 0
            now = time.monotonic()
            if stopping:
                for slot in slots:
                    slot.restart_at = None
                if not any(slot.pid for slot in slots):
                    logger.info("supervisor: all workers stopped")
                    return status
                if now >= deadline:
                    logger.warning("supervisor: drain timeout, killing the remaining workers")
                    _signal_all(slots, signal.SIGKILL)
                    deadline = now + 3600.0  # only SIGCHLD matters from here on
            else:
                for slot in slots:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        _spawn(slot, serve_one, old_mask)
    finally:
        if any(slot.pid for slot in slots):  # an exception in the supervisor itself
            _signal_all(slots, signal.SIGKILL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _spawn(slot: _Slot, serve_one: Callable[[], int], mask: Collection[int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.environ[WORKER_ENV] = str(slot.index)
            code = serve_one()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    slot.pid = pid
    slot.started_at = time.monotonic()
    slot.restart_at = None
    logger.info("worker %d started (pid %d)", slot.index, pid)


def _reap(slots: list[_Slot]) -> list[tuple[_Slot, int]]:
    """Collect every exited worker: (its slot, exit code; -N for signal N)."""
    by_pid = {slot.pid: slot for slot in slots if slot.pid}
    done = []
    while by_pid:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        slot = by_pid.pop(pid, None)
        if slot is not None:
            done.append((slot, os.waitstatus_to_exitcode(wait_status)))
    return done


def _signal_all(slots: list[_Slot], signum: int) -> None:
    for slot in slots:
        if slot.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signum)


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"
