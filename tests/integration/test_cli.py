"""The `gurukul-fast` command: zero-config serve, token, migrate, and one-line errors."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import orjson
import websockets

from tests.support.process import server_process
from tests.support.server import UNIT, frame


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "gurukul_fast.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


def test_bad_config_value_is_one_line_naming_the_key(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, WS_PORT="not-a-port")
    assert result.returncode == 2
    assert result.stderr.strip() == "gurukul-fast: invalid value for WS_PORT: 'not-a-port'"


def test_unknown_storage_scheme_is_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, STORAGE_URL="oracle://db/x", WS_PORT="0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "no storage backend for scheme 'oracle'" in lines[0]


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        cwd=tmp_path,
        WS_PORT="0",
        STORAGE_URL="postgresql://postgres@127.0.0.1:1/none",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gurukul-fast: storage ")
    assert "Traceback" not in result.stderr


def test_migrate_reports_the_schema_version(tmp_path: Path) -> None:
    result = run_cli("migrate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("schema version ")
    assert (tmp_path / "gurukul-data" / "gurukul.db").exists()


async def test_zero_config_serve_and_token_agree(tmp_path: Path) -> None:
    """No configuration: a generated secret in the data dir; `token` mints with it."""
    data_dir = tmp_path / "gurukul-data"
    env = {"JWT_SECRET": ""}
    async with server_process(f"sqlite:///{data_dir / 'gurukul.db'}", data_dir, **env) as srv:
        secret_file = data_dir / "jwt-secret"
        assert secret_file.exists()
        assert secret_file.stat().st_mode & 0o777 == 0o600
        minted = run_cli("token", "alice", "--chats", "a,b", "--ttl", "1h", cwd=tmp_path)
        assert minted.returncode == 0, minted.stderr
        issued = minted.stdout.strip()
        claims = jwt.decode(issued, secret_file.read_text().strip(), algorithms=["HS256"])
        assert claims["sub"] == "alice"
        assert claims["chats"] == ["a", "b"]
        assert 3590 <= claims["exp"] - claims["iat"] <= 3600
        async with websockets.connect(srv.url(issued)) as ws:
            await ws.send(frame("ping", {"timestamp": 1}))
            pong = orjson.loads(await asyncio.wait_for(ws.recv(), 5 * UNIT))
            assert pong["type"] == "pong"


def test_missing_tls_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        cwd=tmp_path,
        WS_PORT="0",
        TLS_CERT=str(tmp_path / "no.pem"),
        TLS_KEY=str(tmp_path / "no.key"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "gurukul-fast: TLS_CERT/TLS_KEY cannot be loaded: No such file or directory"
    )


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", cwd=tmp_path, WS_HOST="127.0.0.1", WS_PORT=str(port))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"gurukul-fast: cannot listen on 127.0.0.1:{port}")
