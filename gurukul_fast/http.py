"""Plain HTTP answers on the WebSocket port (DESIGN §8), as (status, content type, body).

Pure: the transport turns these into picows responses. Bodies never carry exception text.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import NamedTuple

import orjson

__all__ = [
    "DEMO_PAGE_CONFIG_MARK",
    "DEV_TOKEN_TTL_S",
    "DEV_USER_RULE",
    "HttpAnswer",
    "demo_page",
    "dev_token",
    "health",
    "is_dev_user",
    "json_error",
    "metrics",
    "not_found",
]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# Where the page template takes its settings (a JSON data block, not executed script).
DEMO_PAGE_CONFIG_MARK = "/*GURUKUL_CONFIG*/{}"
# GET /dev/token (zero-config mode only): who may be named, and how long a token lasts.
DEV_TOKEN_TTL_S = 12 * 3600.0
DEV_USER_RULE = "user must be 1-64 letters, digits, '.', '_', '-' or '@', not 'assistant'"
_DEV_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_INLINE_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)


class HttpAnswer(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers


def json_error(status: int, message: str) -> HttpAnswer:
    """A short JSON error body, e.g. for a refused upgrade: {"error": …, "code": …}."""
    return HttpAnswer(status, "application/json", orjson.dumps({"error": message, "code": status}))


def health(
    *,
    draining: bool,
    storage_ok: bool,
    connections: int,
    active_chats: int,
    uptime_s: float,
    broker_ok: bool | None = None,
) -> HttpAnswer:
    """GET /ws/health: SPEC's fields plus storage (and broker) reachability; 503 while
    draining. `broker_ok` is None on a single node (no broker to report)."""
    if draining:
        status_text, status = "draining", 503
    elif not storage_ok or broker_ok is False:
        status_text, status = "degraded", 200
    else:
        status_text, status = "healthy", 200
    body: dict[str, object] = {
        "status": status_text,
        "connections": connections,
        "activeChats": active_chats,
        "uptime": round(uptime_s, 3),
        "storage": "ok" if storage_ok else "unavailable",
    }
    if broker_ok is not None:
        body["broker"] = "ok" if broker_ok else "unavailable"
    return HttpAnswer(status, "application/json", orjson.dumps(body))


def metrics(body: bytes) -> HttpAnswer:
    return HttpAnswer(200, PROMETHEUS_TEXT, body)


def not_found() -> HttpAnswer:
    return json_error(404, "Not found")


def demo_page(*, ws_path: str, dev_tokens: bool) -> HttpAnswer:
    """GET /: the demo chat page (package data `static/index.html`), with its settings.

    Call once at start-up and reuse the answer: it reads the package file and hashes the
    inline script and style for the Content-Security-Policy, which allows nothing else
    (no other scripts, no external resources, no framing).
    """
    template = resources.files("gurukul_fast").joinpath("static/index.html").read_text("utf-8")
    settings = orjson.dumps({"wsPath": ws_path, "devTokens": dev_tokens}).decode()
    # The JSON sits inside a <script type="application/json">: keep "</script>" out of it.
    settings = settings.replace("<", "\\u003c").replace(">", "\\u003e")
    page = template.replace(DEMO_PAGE_CONFIG_MARK, settings, 1)
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src " + _hashes(_INLINE_SCRIPT.findall(page)),
            "style-src " + _hashes(_INLINE_STYLE.findall(page)),
            "connect-src 'self' ws: wss:",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    headers = (
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )
    return HttpAnswer(200, "text/html; charset=utf-8", page.encode(), headers)


def dev_token(*, user: str, token: str, expires_at_s: int) -> HttpAnswer:
    """GET /dev/token (zero-config mode only): a token for the demo page."""
    body = {"user": user, "token": token, "expiresAt": expires_at_s * 1000}
    return HttpAnswer(200, "application/json", orjson.dumps(body))


def is_dev_user(user: str) -> bool:
    """May /dev/token mint a token for `user`? ("assistant" is the agents' identity.)"""
    return user != "assistant" and _DEV_USER.fullmatch(user) is not None


def _hashes(blocks: list[str]) -> str:
    if not blocks:
        return "'none'"
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()) for b in blocks)
    return " ".join(f"'sha256-{d.decode()}'" for d in digests)
