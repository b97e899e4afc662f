"""The demo page over https:// and wss:// in headless Chromium.

The server's certificate comes from a CA made in the test (trustme). Chromium is told to
accept exactly that certificate's key (`--ignore-certificate-errors-spki-list`), not every
certificate: a test-only flag, in a browser of its own.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.browser.cdp import launch_browser
from tests.browser.demo_page import DemoPage
from tests.support.server import run_server, token


def spki_hash(cert_pem: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): how Chromium names a key to accept."""
    public_key = x509.load_pem_x509_certificate(cert_pem).public_key()
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


async def test_demo_page_over_https_and_wss(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    accept = f"--ignore-certificate-errors-spki-list={spki_hash(cert.cert_chain_pems[0].bytes())}"

    async with (
        run_server(tmp_path, tls_cert=str(cert_path), tls_key=str(key_path)) as server,
        launch_browser([accept]) as browser,
    ):
        page = DemoPage(await browser.new_page(), "alice")
        await page.open(
            f"https://127.0.0.1:{server.port}/", token("alice"), "chat-tls", agent="therapist"
        )
        assert await page.page.evaluate("location.protocol") == "https:"
        assert await page.page.evaluate("window.isSecureContext") is True
        await page.send("I feel anxious about my exams")
        replies = await page.wait_for_reply(1)
        assert replies[0]
        # The socket the page opened is the server's only client, and it is wss://.
        entries = await page.page.evaluate(
            "performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert not any(name.startswith("ws://") for name in entries)
        assert len(server.service.clients) == 1
        assert page.page.errors == []
