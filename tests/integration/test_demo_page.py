"""GET / (the demo page) and GET /dev/token (zero-config mode only), over real sockets.

The page must be self-contained (no dependency, no external resource), locked down by a
Content-Security-Policy that allows only its own inline script and style, and never parse
chat content as HTML. /dev/token exists only when the server generated its secret: with a
configured JWT_SECRET or public key a page must not be able to reach the secret at all.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import orjson
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.server import ChatClient, http_get, run_server


def page_settings(body: bytes) -> dict[str, object]:
    match = re.search(
        rb'<script id="gurukul-config" type="application/json">(.*?)</script>', body, re.DOTALL
    )
    assert match is not None
    settings: dict[str, object] = orjson.loads(match.group(1))
    return settings


def csp_hash(block: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"


async def test_page_is_served_with_a_strict_policy(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        status, headers, body = await http_get(server.port, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    policy = dict(
        [*part.strip().split(" ", 1), ""][:2]
        for part in headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    # Exactly the page's own inline script and style may run: each by its hash.
    scripts = re.findall(rb"<script>(.*?)</script>", body, re.DOTALL)
    styles = re.findall(rb"<style>(.*?)</style>", body, re.DOTALL)
    assert len(scripts) == 1
    assert len(styles) == 1
    assert policy["script-src"] == csp_hash(scripts[0])
    assert policy["style-src"] == csp_hash(styles[0])
    assert "'unsafe-inline'" not in headers["content-security-policy"]


async def test_page_is_self_contained_and_renders_text_only(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:
        _, _, body = await http_get(server.port, "/")
    page = body.decode()
    # No dependency and no external resource: nothing is loaded from anywhere else.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page
    # Chat content never becomes markup.
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert sink not in page, sink
    assert "textContent" in page


async def test_page_settings_follow_the_config(tmp_path: Path) -> None:
    async with run_server(tmp_path, ws_path="/chat/socket") as server:
        _, _, body = await http_get(server.port, "/")
    assert page_settings(body) == {"wsPath": "/chat/socket", "devTokens": False}


async def test_page_settings_cannot_break_out_of_their_block(tmp_path: Path) -> None:
    async with run_server(tmp_path, ws_path="/x</script><script>alert(1)</script>") as server:
        _, _, body = await http_get(server.port, "/")
    assert body.count(b"<script>") == 1
    assert page_settings(body)["wsPath"] == "/x</script><script>alert(1)</script>"


async def test_dev_token_in_zero_config_mode(tmp_path: Path) -> None:
    async with run_server(tmp_path, jwt_secret=None) as server:
        assert server.secret_generated
        _, _, page = await http_get(server.port, "/")
        assert page_settings(page)["devTokens"] is True

        status, headers, body = await http_get(server.port, "/dev/token?user=asha")
        assert status == 200
        assert headers["content-type"] == "application/json"
        answer = orjson.loads(body)
        assert answer["user"] == "asha"
        assert answer["expiresAt"] > 0

        url = f"ws://127.0.0.1:{server.port}/ws?token={answer['token']}"
        async with websockets.connect(url) as connection:
            client = ChatClient(connection)
            await client.join("chat-dev")
            echo = await client.say("chat-dev", "hello", "temp-1")
            assert echo["data"]["message"]["userId"] == "asha"


@pytest.mark.parametrize(
    "query",
    ["", "?user=", "?user=assistant", "?user=a%20b", "?user=%3Cscript%3E", "?user=" + "x" * 65],
)
async def test_dev_token_refuses_bad_names(tmp_path: Path, query: str) -> None:
    async with run_server(tmp_path, jwt_secret=None) as server:
        status, _, body = await http_get(server.port, "/dev/token" + query)
    assert status == 400
    assert orjson.loads(body)["code"] == 400


async def test_no_dev_token_with_a_configured_secret(tmp_path: Path) -> None:
    async with run_server(tmp_path) as server:  # run_server configures JWT_SECRET
        assert not server.secret_generated
        status, _, _ = await http_get(server.port, "/dev/token?user=asha")
        assert status == 404
        _, _, page = await http_get(server.port, "/")
        assert page_settings(page)["devTokens"] is False
    assert not (tmp_path / "data" / "jwt-secret").exists()


async def test_no_dev_token_with_a_public_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(pem)
    async with run_server(
        tmp_path,
        jwt_secret=None,
        jwt_public_key=str(tmp_path / "public.pem"),
        jwt_algorithms="RS256",
    ) as server:
        assert not server.secret_generated
        status, _, _ = await http_get(server.port, "/dev/token?user=asha")
        assert status == 404
