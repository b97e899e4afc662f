"""One typed configuration, built once at start-up and passed down.

Sources, highest precedence first: command-line flags, environment variables, an optional
TOML file (`--config`), the defaults below. Keys keep SPEC's environment names (`WS_PORT`,
`JWT_SECRET`, …); the TOML file uses the same names, in any case. A bad value fails start-up
with one `ConfigError` line that names the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["Config", "ConfigError", "load_config"]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the server. Units are in the names or the comments."""

    # listener
    ws_host: str = "0.0.0.0"
    ws_port: int = 3001
    ws_path: str = "/ws"
    tls_cert: str | None = None  # PEM file; with tls_key serves wss:// and https://
    tls_key: str | None = None

    # identity
    jwt_secret: str | None = None  # HS256 secret; None = generated and kept in data_dir
    jwt_public_key: str | None = None  # PEM for RS256/ES256; when set, replaces the secret
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    # storage and fan-out
    storage_url: str = "sqlite:///./gurukul-data/gurukul.db"
    data_dir: str = "./gurukul-data"  # generated secret and default database live here
    broker_url: str = "memory:"
    storage_pool_size: int = 10  # connections at most, network backends
    commit_window_ms: float = 2.0  # group commit: wait this long for more messages
    commit_max_batch: int = 512  # group commit: messages per transaction at most
    batch_interval_ms: int = 100  # ?batch=1 clients: flush period

    # limits (DESIGN §5)
    max_connections: int = 10_000
    max_connections_per_user: int = 20
    message_rate_limit: int = 100  # `message` frames per user per minute
    typing_rate_limit: int = 600  # `typing` frames per user per minute
    receipt_rate_limit: int = 600  # `read_receipt` frames per user per minute
    control_rate_limit: int = 300  # join/leave/ping/history/auth per user per minute
    abuse_close_after: int = 50  # 429s in a row before the connection is closed 1008
    max_message_length: int = 4000  # characters of message content
    max_frame_bytes: int = 65_536  # one WebSocket message, bytes; larger closes 1009
    write_buffer_cap_bytes: int = 1_048_576  # unsent bytes per connection before 4008
    max_read_receipt_ids: int = 500  # message ids in one read_receipt frame
    history_page_size: int = 50  # messages sent on join
    max_history_page: int = 200  # messages in one `history` reply at most
    max_recovery_messages: int = 1000  # missed messages a rejoin can recover; more: latest page
    max_chat_id_length: int = 128

    # timers (seconds)
    ping_interval: float = 30.0  # protocol-level ping period
    ping_timeout: float = 20.0  # no pong within this after a ping: connection dropped
    connection_timeout: float = 10.0  # HTTP upgrade must complete within this
    typing_timeout: float = 6.0  # isTyping:true expires server-side after this
    typing_throttle: float = 1.0  # repeated isTyping:true relayed at most this often
    drain_timeout: float = 10.0  # SIGTERM: wait this long for commits and agent replies
    metrics_log_interval: float = 5.0  # SPEC's metrics line in the log; 0 disables
    agent_timeout: float = 30.0  # one agent reply at most
    max_concurrent_agent_replies: int = 64

    # agents and logging
    agent_provider: str = "builtin"
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json"

    @property
    def secret_file(self) -> Path:
        """Where a generated JWT secret is kept when `jwt_secret` is unset."""
        return Path(self.data_dir) / "jwt-secret"


_FIELDS = {name for name in Config.__struct_fields__}


def _coerce(key: str, raw: Any, field_type: type[Any]) -> Any:
    """Turn an env/TOML/CLI value into the field's type, or raise ConfigError naming `key`."""
    try:
        if isinstance(raw, str):
            if field_type is tuple or str(field_type).startswith("tuple"):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            return msgspec.convert(raw, field_type, strict=False)
        return msgspec.convert(raw, field_type, strict=False)
    except (msgspec.ValidationError, ValueError, TypeError):
        raise ConfigError(f"invalid value for {key.upper()}: {raw!r}") from None


def _field_types() -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for field in msgspec.structs.fields(Config):
        hints[field.name] = field.type
    return hints


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build the Config: `overrides` (flags) > `env` > `config_file` (TOML) > defaults.

    Call once at start-up. Raises `ConfigError` with one line naming the bad key.
    """
    environ = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}

    path = config_file or environ.get("GURUKUL_CONFIG")
    if path:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key, raw in document.items():
            name = key.lower()
            if name not in _FIELDS:
                raise ConfigError(f"unknown key in {path}: {key}")
            values[name] = _coerce(name, raw, types[name])

    for name in _FIELDS:
        raw_env = environ.get(name.upper())
        if raw_env is not None and raw_env != "":
            values[name] = _coerce(name, raw_env, types[name])

    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        name = key.lower()
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting: {key}")
        values[name] = _coerce(name, raw, types[name])

    config = Config(**values)
    _validate(config)
    return config


def _validate(config: Config) -> None:
    if not 0 <= config.ws_port <= 65535:
        raise ConfigError(f"invalid value for WS_PORT: {config.ws_port} (0..65535)")
    if not config.ws_path.startswith("/"):
        raise ConfigError(f"invalid value for WS_PATH: {config.ws_path!r} (must start with /)")
    positive = (
        "max_connections",
        "max_connections_per_user",
        "message_rate_limit",
        "typing_rate_limit",
        "receipt_rate_limit",
        "control_rate_limit",
        "max_message_length",
        "max_frame_bytes",
        "write_buffer_cap_bytes",
        "history_page_size",
        "batch_interval_ms",
        "commit_max_batch",
    )
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"invalid value for {name.upper()}: must be > 0")
    for name in ("ping_interval", "connection_timeout", "typing_timeout", "drain_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"invalid value for {name.upper()}: must be > 0 seconds")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS_CERT and TLS_KEY must be set together")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"invalid value for LOG_FORMAT: {config.log_format!r} (text or json)")
