"""Start and stop `mongoeco`, a MongoDB wire-protocol server, for the MongoDB backend's tests.

No real `mongod` can be installed on the development and CI machines, so the MongoDB
backend is tested over the wire, with the official driver, against mongoeco
(`mongoeco[wire]`), which needs Python >= 3.13 while the project runs on 3.11. It therefore
lives in its own venv and runs as a subprocess (`tests/support/mongoeco_launcher.py`):

    python -m tests.support.mongoeco_server --ensure-venv   # create the venv (CI does this)

    with MongoecoServer() as server:                       # in-memory, port picked by the OS
        url = server.url("mydb")
    with MongoecoServer(data_file=tmp_path / "db.sqlite") as server:  # survives restarts
        server.stop("kill")                                 # SIGKILL, like a crash
        server.start()                                      # same port, same data

Environment: `GURUKUL_MONGOECO_VENV` (default `~/.cache/gurukul-fast/mongoeco-venv`) and
`GURUKUL_PYTHON313` (a Python 3.13 interpreter; default: pyenv's 3.13.0). Anything missing
raises `MongoecoUnavailable` with the reason: a backend suite that cannot run must fail,
never skip.

What mongoeco is (4.11): the in-memory engine runs transactions optimistically (a commit
fails with an unlabeled "Write conflict" if anything else was written meanwhile); the
SQLite engine (`data_file`) persists across SIGKILL but runs one transaction at a time and
refuses every other session's operations while one is open. Unique indexes are checked by
scanning, so keep collections to hundreds of documents.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Literal

__all__ = [
    "MONGOECO_REQUIREMENT",
    "MongoecoServer",
    "MongoecoUnavailable",
    "ensure_venv",
]

MONGOECO_REQUIREMENT = "mongoeco[wire]==4.11.0"
MONGOECO_VERSION = "4.11.0"
LAUNCHER = pathlib.Path(__file__).with_name("mongoeco_launcher.py")
READY_PREFIX = "MONGOECO_PORT="  # what the launcher prints once it serves
START_TIMEOUT_S = 30.0  # first start imports a lot; later ones take about a second
STOP_TIMEOUT_S = 10.0

StopMethod = Literal["kill", "term"]


class MongoecoUnavailable(RuntimeError):
    """mongoeco cannot be installed or started; the message says what is missing."""


def _venv_dir() -> pathlib.Path:
    configured = os.environ.get("GURUKUL_MONGOECO_VENV")
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path.home() / ".cache" / "gurukul-fast" / "mongoeco-venv"


def _python313() -> pathlib.Path:
    configured = os.environ.get("GURUKUL_PYTHON313")
    if configured:
        path = pathlib.Path(configured).expanduser()
        if not path.exists():
            raise MongoecoUnavailable(f"GURUKUL_PYTHON313={configured} does not exist")
        return path
    candidates: list[pathlib.Path] = []
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        found = subprocess.run(
            [pyenv, "prefix", "3.13.0"], capture_output=True, text=True, check=False
        )
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(pathlib.Path(found.stdout.strip()) / "bin" / "python3")
    candidates.append(pathlib.Path.home() / ".pyenv" / "versions" / "3.13.0" / "bin" / "python3")
    on_path = shutil.which("python3.13")
    if on_path is not None:
        candidates.append(pathlib.Path(on_path))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise MongoecoUnavailable(
        "mongoeco needs Python 3.13 and none was found (tried `pyenv prefix 3.13.0`, "
        "~/.pyenv/versions/3.13.0, python3.13 on PATH); set GURUKUL_PYTHON313"
    )


def _venv_ready(python: pathlib.Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, mongoeco.wire.proxy; print(m.version('mongoeco'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return check.returncode == 0 and check.stdout.strip() == MONGOECO_VERSION


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise MongoecoUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")


# Venvs found ready by this process (checking costs a second: it imports mongoeco).
_checked: dict[pathlib.Path, pathlib.Path] = {}


def ensure_venv() -> pathlib.Path:
    """Return the venv's python with mongoeco installed, creating the venv if needed.

    Costs one subprocess on the first call of a process when the venv is ready (none after
    that); if it is not, the call creates it and installs
    mongoeco from the package index (a minute or so). Safe to call from several processes
    at once (a lock file serialises creation).
    """
    venv = _venv_dir()
    python = venv / "bin" / "python"
    if _checked.get(venv) == python or _venv_ready(python):
        _checked[venv] = python
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _venv_ready(python):
            return python
        if not python.exists():
            _run([str(_python313()), "-m", "venv", str(venv)], f"creating the venv {venv}")
        _run(
            [str(python), "-m", "pip", "install", "--quiet", MONGOECO_REQUIREMENT],
            f"pip install {MONGOECO_REQUIREMENT} into {venv}",
        )
        if not _venv_ready(python):
            raise MongoecoUnavailable(f"{venv} still cannot import mongoeco {MONGOECO_VERSION}")
    return python


class MongoecoServer:
    """One mongoeco server subprocess on 127.0.0.1; a context manager (sync, blocking).

    `port=0` lets the OS pick the first port; restarts reuse it, so clients reconnect to
    the same address. `data_file` selects the persistent SQLite engine (a path to a file
    that may not exist yet); without it the server keeps everything in memory.
    """

    def __init__(self, *, port: int = 0, data_file: pathlib.Path | None = None) -> None:
        self._port = port
        self._data_file = data_file
        self._process: subprocess.Popen[str] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="mongoeco-log-")
        self._log_path = pathlib.Path(self._log_dir.name) / "server.log"
        self._log: IO[str] | None = None

    def __enter__(self) -> MongoecoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        """The bound port (after the first `start`)."""
        if self._port == 0:
            raise RuntimeError("mongoeco server has not been started")
        return self._port

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The subprocess's id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def url(self, database: str = "", **options: str) -> str:
        """Return a `mongodb://` URL of this server, for `database`, with URL options."""
        query = "&".join(f"{name}={value}" for name, value in options.items())
        base = f"mongodb://127.0.0.1:{self.port}/{database}"
        return f"{base}?{query}" if query else base

    def start(self) -> None:
        """Start the subprocess and wait until it accepts connections; no-op if running."""
        if self.running:
            return
        python = ensure_venv()
        command = [str(python), str(LAUNCHER), "--port", str(self._port)]
        if self._data_file is not None:
            command += ["--data-file", str(self._data_file)]
        if self._log is None:
            self._log = open(self._log_path, "a")  # noqa: SIM115 - closed in close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            # stdin stays an open pipe: the launcher exits when it closes (we died).
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
            )
            port = self._wait_ready(process, deadline)
            if port is not None:
                break
            # Right after a kill the old port can be briefly unavailable; try again.
            process.wait()
            if time.monotonic() >= deadline:
                raise MongoecoUnavailable(
                    f"mongoeco did not start (exit {process.returncode}); log:\n{self._log_tail()}"
                )
            time.sleep(0.2)
        self._process = process
        self._port = port

    def stop(self, method: StopMethod = "term") -> None:
        """Stop the subprocess: "term" lets it close cleanly, "kill" is SIGKILL (a crash)."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if method == "kill" else signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def restart(self, method: StopMethod = "kill") -> None:
        """Stop (SIGKILL by default) and start again on the same port and data file."""
        self.stop(method)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its log."""
        self.stop("term")
        if self._log is not None:
            self._log.close()
            self._log = None
        self._log_dir.cleanup()

    def _wait_ready(self, process: subprocess.Popen[str], deadline: float) -> int | None:
        assert process.stdout is not None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                return None
            ready, _, _ = select.select([process.stdout], [], [], min(remaining, 0.5))
            if ready:
                line = process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return int(line[len(READY_PREFIX) :].strip())
                if not line:  # EOF: it exited
                    return None
            elif process.poll() is not None:
                return None

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log_path.read_text().splitlines()[-30:])
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    """`--ensure-venv`: create the venv and print its python; `--serve`: run a server."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.mongoeco_server")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--ensure-venv", action="store_true", help="create the mongoeco venv")
    action.add_argument("--serve", action="store_true", help="run a server until Ctrl-C")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-file", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.ensure_venv:
            print(ensure_venv())
            return 0
        with MongoecoServer(port=args.port, data_file=args.data_file) as server:
            print(server.url(), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except MongoecoUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
