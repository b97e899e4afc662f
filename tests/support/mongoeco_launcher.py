"""Run a mongoeco MongoDB-wire server until stdin closes or SIGTERM arrives.

Runs under the Python 3.13 venv that `tests/support/mongoeco_server.py` creates (mongoeco
needs 3.13; the project runs on 3.11), never imported by the test process itself:

    $VENV/bin/python tests/support/mongoeco_launcher.py --port 0 [--data-file PATH]

It binds 127.0.0.1:PORT (0 = the kernel picks one) and prints one line,
`MONGOECO_PORT=<port>`, once clients can connect; the parent reads it to find the port. With
`--data-file` the documents live in a SQLite file (mongoeco's `SQLiteEngine`), so a server
killed with SIGKILL and started again on the same file keeps what was acknowledged; without
it they live in memory and vanish with the process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys

from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

READY_PREFIX = "MONGOECO_PORT="


async def serve(host: str, port: int, data_file: str | None) -> None:
    engine = SQLiteEngine(data_file) if data_file else MemoryEngine()
    server = AsyncMongoEcoProxyServer(engine=engine, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        # The parent dying closes our stdin pipe: stop then, so no orphan outlives a test run.
        loop.add_reader(sys.stdin.fileno(), stop.set)
    address = await server.start()
    print(f"{READY_PREFIX}{address.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-file", default=None, help="SQLite file; omit for in-memory")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.data_file))


if __name__ == "__main__":
    main()
