"""`gurukul-fast serve | token | migrate`.

Every failure the user can fix (bad config, unreachable database, unknown backend)
ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import uvloop

from gurukul_fast.auth import load_or_create_secret, mint_token
from gurukul_fast.config import Config, ConfigError, load_config
from gurukul_fast.logs import configure_logging
from gurukul_fast.server import GurukulServer, StartupError
from gurukul_fast.storage import StorageUnavailable, UnknownStorageScheme, load_storage
from gurukul_fast.supervisor import reserve_port, run_workers

__all__ = ["main"]

_TTL = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)\Z")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_ttl(text: str) -> float:
    match = _TTL.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid ttl {text!r} (e.g. 3600, 30m, 1h, 7d)")
    return float(match.group(1)) * _TTL_UNITS[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gurukul-fast", description=__doc__)
    parser.add_argument("--config", help="TOML file with the same keys as the env variables")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the WebSocket server")
    serve.add_argument("--host", dest="ws_host")
    serve.add_argument("--port", dest="ws_port")
    serve.add_argument("--path", dest="ws_path")
    serve.add_argument("--storage-url", dest="storage_url")
    serve.add_argument("--data-dir", dest="data_dir")
    serve.add_argument("--tls-cert", dest="tls_cert")
    serve.add_argument("--tls-key", dest="tls_key")
    serve.add_argument("--log-level", dest="log_level")
    serve.add_argument("--log-format", dest="log_format", choices=("text", "json"))
    serve.add_argument("--workers", dest="workers", help="processes sharing the port")
    serve.add_argument("--broker-url", dest="broker_url", help="redis://… or nats://…")

    token = commands.add_parser("token", help="mint a token with the server's secret")
    token.add_argument("user", help="the user id (the token's sub)")
    token.add_argument("--chats", default="", help="comma-separated chat ids to grant")
    token.add_argument("--ttl", type=_parse_ttl, default=3600.0, help="lifetime, e.g. 1h")
    token.add_argument("--data-dir", dest="data_dir")

    migrate = commands.add_parser("migrate", help="apply storage migrations and exit")
    migrate.add_argument("--storage-url", dest="storage_url")
    migrate.add_argument("--data-dir", dest="data_dir")
    return parser


_SETTINGS = (
    "ws_host",
    "ws_port",
    "ws_path",
    "storage_url",
    "data_dir",
    "tls_cert",
    "tls_key",
    "log_level",
    "log_format",
    "workers",
    "broker_url",
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {k: getattr(args, k, None) for k in _SETTINGS}
    try:
        config = load_config(overrides, config_file=args.config)
    except ConfigError as exc:
        print(f"gurukul-fast: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        if args.command == "serve":
            if config.workers > 1:
                return _serve_workers(config)
            return uvloop.run(_serve(config))
        if args.command == "token":
            return _token(config, args.user, args.chats, args.ttl)
        return uvloop.run(_migrate(config))
    except (StorageUnavailable, UnknownStorageScheme) as exc:
        print(f"gurukul-fast: storage {config.storage_url.split('@')[-1]}: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"gurukul-fast: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve_workers(config: Config) -> int:
    """`serve` with WORKERS > 1: N processes on one port, supervised.

    What must happen once happens here, before the fork: the generated secret (workers
    would race to create it), the migrations, and resolving the port (port 0 included).
    """
    load_or_create_secret(config)
    uvloop.run(_migrate(config, quiet=True))
    reserved = reserve_port(config.ws_host, config.ws_port)
    worker_config = msgspec.structs.replace(config, ws_port=reserved.getsockname()[1])
    try:
        return run_workers(
            config.workers,
            lambda: _serve_worker(worker_config),
            drain_timeout_s=config.drain_timeout + 5.0,
        )
    finally:
        reserved.close()


def _serve_worker(config: Config) -> int:
    """One worker process: exit status 2 (fatal: not restarted) for a start-up error."""
    try:
        return uvloop.run(_serve(config))
    except (StorageUnavailable, UnknownStorageScheme, StartupError) as exc:
        print(f"gurukul-fast: worker: {exc}", file=sys.stderr)
        return 2


async def _serve(config: Config) -> int:
    server = GurukulServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stopping.append(loop.create_task(server.stop())))
    await server.wait_stopped()
    await asyncio.gather(*stopping)
    return 0


def _token(config: Config, user: str, chats: str, ttl_s: float) -> int:
    secret, _ = load_or_create_secret(config)
    if secret is None:
        print(
            "gurukul-fast: tokens for RS256/ES256 keys are minted by your identity provider",
            file=sys.stderr,
        )
        return 2
    granted = [c.strip() for c in chats.split(",") if c.strip()]
    print(
        mint_token(
            secret,
            user,
            ttl_s=ttl_s,
            chats=granted or None,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
        )
    )
    return 0


async def _migrate(config: Config, *, quiet: bool = False) -> int:
    storage = load_storage(config.storage_url)
    await storage.open()
    try:
        version = await storage.migrate()
    finally:
        await storage.close()
    if not quiet:
        print(f"schema version {version} ({storage.url})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
