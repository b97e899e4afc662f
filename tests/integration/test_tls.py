"""wss:// and https:// with TLS_CERT/TLS_KEY, using a certificate authority made per test.

`trustme` makes a throwaway CA and a server certificate for 127.0.0.1; clients trust that CA
only, so the tests exercise real certificate verification (no verification switched off).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import trustme
import websockets

from gurukul_fast.server import GurukulServer
from tests.support.server import UNIT, ChatClient, http_get, run_server, token


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_server(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[GurukulServer]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        with cert_path.open("ab") as handle:
            handle.write(extra.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    async with run_server(tmp_path, tls_cert=str(cert_path), tls_key=str(key_path)) as server:
        yield server


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


async def test_wss_chat_with_the_therapist(tls_server: GurukulServer, ca: trustme.CA) -> None:
    url = f"wss://127.0.0.1:{tls_server.port}/ws?token={token('alice')}"
    async with websockets.connect(url, ssl=client_context(ca)) as connection:
        client = ChatClient(connection)
        await client.join("chat-tls")
        await client.say("chat-tls", "I feel anxious", "temp-1", agent_id="therapist")
        reply = await client.expect("message", chatId="chat-tls", messageId="temp-1")
        while reply["data"]["message"]["role"] != "assistant":
            reply = await client.expect("message", chatId="chat-tls", messageId="temp-1")
        assert reply["data"]["message"]["agentId"] == "therapist"


async def test_health_and_page_over_https(tls_server: GurukulServer, ca: trustme.CA) -> None:
    context = client_context(ca)
    status, headers, body = await http_get(tls_server.port, "/ws/health", ssl=context)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body)["status"] == "healthy"

    status, headers, body = await http_get(tls_server.port, "/", ssl=context)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"<title>Gurukul chat</title>" in body

    status, _, body = await http_get(tls_server.port, "/metrics", ssl=context)
    assert status == 200
    assert b"# TYPE" in body


async def test_client_without_the_ca_is_refused(tls_server: GurukulServer) -> None:
    url = f"wss://127.0.0.1:{tls_server.port}/ws?token={token('alice')}"
    with pytest.raises(ssl.SSLCertVerificationError):
        await websockets.connect(url, ssl=ssl.create_default_context(), open_timeout=5 * UNIT)


async def test_plain_ws_to_a_tls_port_gets_no_upgrade(tls_server: GurukulServer) -> None:
    url = f"ws://127.0.0.1:{tls_server.port}/ws?token={token('alice')}"
    with pytest.raises((websockets.exceptions.InvalidMessage, ConnectionError, EOFError)):
        await websockets.connect(url, open_timeout=5 * UNIT)


async def test_certificate_for_another_host_is_refused(tmp_path: Path, ca: trustme.CA) -> None:
    """The server's certificate must name the host the client dialled."""
    cert = ca.issue_cert("chat.example.org")
    cert_path, key_path = tmp_path / "other.pem", tmp_path / "other.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    async with run_server(tmp_path, tls_cert=str(cert_path), tls_key=str(key_path)) as server:
        url = f"wss://127.0.0.1:{server.port}/ws?token={token('alice')}"
        with pytest.raises(ssl.SSLCertVerificationError):
            await websockets.connect(url, ssl=client_context(ca), open_timeout=5 * UNIT)
