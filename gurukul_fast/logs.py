"""Logging set-up: human-readable lines by default, one JSON object per line with
`LOG_FORMAT=json`. Tokens never reach a log: the router logs no URLs or query strings."""

from __future__ import annotations

import logging
import sys
import time

import orjson

__all__ = ["configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, log_format: str) -> None:
    """Install one stderr handler on the root logger; call once at start-up."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every refused handshake at INFO; that is our metrics' job.
    logging.getLogger("picows").setLevel(max(logging.WARNING, root.level))
