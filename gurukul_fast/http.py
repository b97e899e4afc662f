"""Plain HTTP answers on the WebSocket port (DESIGN §8), as (status, content type, body).

Pure: the transport turns these into picows responses. Bodies never carry exception text.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

__all__ = ["HttpAnswer", "health", "json_error", "metrics", "not_found"]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class HttpAnswer(NamedTuple):
    status: int
    content_type: str
    body: bytes


def json_error(status: int, message: str) -> HttpAnswer:
    """A short JSON error body, e.g. for a refused upgrade: {"error": …, "code": …}."""
    return HttpAnswer(status, "application/json", orjson.dumps({"error": message, "code": status}))


def health(
    *, draining: bool, storage_ok: bool, connections: int, active_chats: int, uptime_s: float
) -> HttpAnswer:
    """GET /ws/health: SPEC's fields plus storage reachability; 503 while draining."""
    if draining:
        status_text, status = "draining", 503
    elif not storage_ok:
        status_text, status = "degraded", 200
    else:
        status_text, status = "healthy", 200
    body = {
        "status": status_text,
        "connections": connections,
        "activeChats": active_chats,
        "uptime": round(uptime_s, 3),
        "storage": "ok" if storage_ok else "unavailable",
    }
    return HttpAnswer(status, "application/json", orjson.dumps(body))


def metrics(body: bytes) -> HttpAnswer:
    return HttpAnswer(200, PROMETHEUS_TEXT, body)


def not_found() -> HttpAnswer:
    return json_error(404, "Not found")
