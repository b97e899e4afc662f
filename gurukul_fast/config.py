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
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["AgentSpec", "Config", "ConfigError", "load_config"]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One `[[agents]]` table of the TOML file: an AI guide and the provider that answers.

    An agent whose `id` is a built-in persona replaces it; any other id adds an agent.
    Unset provider settings fall back to the `AGENT_*` keys below.
    """

    id: str  # what clients put in `agentId`
    display_name: str | None = None  # shown in chat titles; default: the id, capitalised
    provider: str | None = None  # entry point in `gurukul_fast.agents`; default AGENT_PROVIDER
    persona: str | None = None  # builtin provider: which built-in persona; default: the id
    system_prompt: str | None = None  # LLM providers: default the built-in persona's prompt
    base_url: str | None = None  # e.g. "http://127.0.0.1:8080/v1"; default AGENT_BASE_URL
    api_key: str | None = None  # prefer api_key_env: files get copied, environments less
    api_key_env: str | None = None  # name of the environment variable holding the key
    model: str | None = None  # default AGENT_MODEL
    temperature: float | None = None  # 0..2; default AGENT_TEMPERATURE
    max_tokens: int | None = None  # tokens per reply at most; default AGENT_MAX_TOKENS
    context_messages: int | None = None  # earlier chat messages sent as context
    context_chars: int | None = None  # characters of that history at most (oldest dropped)
    confidence: float | None = None  # metadata.confidence of this agent's replies, 0..1
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # for third-party providers


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
    broker_url: str = "memory:"  # redis://… or nats://… to share chats between nodes
    cluster_store_url: str | None = None  # limits and presence; default: BROKER_URL if redis
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); >1 needs a network broker
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
    agent_provider: str = "builtin"  # provider of the built-in persona ids (builtin | openai)
    agents: tuple[AgentSpec, ...] = ()  # TOML `[[agents]]` tables (file or flags, not env)
    agent_base_url: str = "https://api.openai.com/v1"  # OpenAI-compatible endpoint
    agent_api_key: str | None = None  # Bearer token for it; never logged
    agent_model: str | None = None  # model name; required by the openai provider
    agent_temperature: float = 0.7
    agent_max_tokens: int = 1024  # tokens per reply at most
    agent_context_messages: int = 10  # earlier chat messages handed to an agent as context
    agent_context_chars: int = 16_000  # characters of that history at most
    agent_connect_timeout: float = 5.0  # seconds to connect to the provider
    agent_idle_timeout: float = 20.0  # seconds without a byte from the provider: 504
    agent_retries: int = 2  # retries on 429/5xx/connect errors before the first token
    agent_retry_backoff: float = 0.5  # seconds before the first retry; doubles each time
    agent_queue_per_chat: int = 16  # replies waiting in one chat at most; more get 429
    agent_stream_interval_ms: int = 40  # ?stream=1 clients: partial text at most this often
    agent_reply_part_chars: int = 4000  # longer replies are stored as several parts
    log_level: str = "INFO"
    log_format: str = "text"  # "text" or "json"

    @property
    def secret_file(self) -> Path:
        """Where a generated JWT secret is kept when `jwt_secret` is unset."""
        return Path(self.data_dir) / "jwt-secret"


_FIELDS = {name for name in Config.__struct_fields__}
# Tables, not scalars: only the TOML file and flags can carry them.
_NOT_FROM_ENV = frozenset({"agents"})


def _coerce(key: str, raw: Any, field_type: type[Any]) -> Any:
    """Turn an env/TOML/CLI value into the field's type, or raise ConfigError naming `key`."""
    if key == "agents":
        return _coerce_agents(raw)
    try:
        if isinstance(raw, str):
            if field_type is tuple or str(field_type).startswith("tuple"):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            return msgspec.convert(raw, field_type, strict=False)
        return msgspec.convert(raw, field_type, strict=False)
    except (msgspec.ValidationError, ValueError, TypeError):
        raise ConfigError(f"invalid value for {key.upper()}: {raw!r}") from None


def _coerce_agents(raw: Any) -> tuple[AgentSpec, ...]:
    """`[[agents]]` tables → AgentSpecs; an unknown or bad key fails naming its table."""
    try:
        return msgspec.convert(raw, tuple[AgentSpec, ...], strict=False)
    except msgspec.ValidationError as exc:
        # msgspec says "… - at `$[1].temperature`"; name it as the file does: AGENTS[1].
        message, _, where = str(exc).partition(" - at `$")
        place = f"AGENTS{where.rstrip('`')}" if where else "AGENTS"
        raise ConfigError(f"invalid value for {place}: {message}") from None


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

    for name in _FIELDS - _NOT_FROM_ENV:
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
    if config.abuse_close_after <= 0:
        raise ConfigError("invalid value for ABUSE_CLOSE_AFTER: must be > 0")
    for name in (
        "ping_interval",
        "ping_timeout",
        "connection_timeout",
        "typing_timeout",
        "drain_timeout",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"invalid value for {name.upper()}: must be > 0 seconds")
    if config.workers < 1:
        raise ConfigError("invalid value for WORKERS: must be >= 1")
    if config.workers > 1 and config.broker_url.split(":", 1)[0].lower() == "memory":
        raise ConfigError(
            "WORKERS > 1 needs a network broker: set BROKER_URL=redis://… or nats://…"
        )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS_CERT and TLS_KEY must be set together")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"invalid value for LOG_FORMAT: {config.log_format!r} (text or json)")
    _validate_agents(config)


def _validate_agents(config: Config) -> None:
    """Agent settings: ranges, unique ids, providers that exist (by entry point)."""
    for name in (
        "agent_max_tokens",
        "agent_context_chars",
        "agent_queue_per_chat",
        "agent_stream_interval_ms",
        "agent_reply_part_chars",
        "max_concurrent_agent_replies",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"invalid value for {name.upper()}: must be > 0")
    for name in ("agent_timeout", "agent_connect_timeout", "agent_idle_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"invalid value for {name.upper()}: must be > 0 seconds")
    if config.agent_retries < 0 or config.agent_retry_backoff < 0:
        raise ConfigError("invalid value for AGENT_RETRIES/AGENT_RETRY_BACKOFF: must be >= 0")
    if config.agent_context_messages < 0:
        raise ConfigError("invalid value for AGENT_CONTEXT_MESSAGES: must be >= 0")
    if not 0.0 <= config.agent_temperature <= 2.0:
        raise ConfigError("invalid value for AGENT_TEMPERATURE: must be within 0..2")
    providers = _agent_providers()
    if config.agent_provider not in providers:
        raise ConfigError(
            f"invalid value for AGENT_PROVIDER: {config.agent_provider!r} "
            f"(installed: {', '.join(sorted(providers))})"
        )
    seen: set[str] = set()
    for index, spec in enumerate(config.agents):
        where = f"AGENTS[{index}]"
        if not spec.id or len(spec.id) > 64:
            raise ConfigError(f"invalid value for {where}.id: 1 to 64 characters")
        if spec.id in seen:
            raise ConfigError(f"invalid value for {where}.id: {spec.id!r} is defined twice")
        seen.add(spec.id)
        provider = spec.provider or config.agent_provider
        if provider not in providers:
            raise ConfigError(
                f"invalid value for {where}.provider: {provider!r} "
                f"(installed: {', '.join(sorted(providers))})"
            )
        if spec.temperature is not None and not 0.0 <= spec.temperature <= 2.0:
            raise ConfigError(f"invalid value for {where}.temperature: must be within 0..2")
        if spec.confidence is not None and not 0.0 <= spec.confidence <= 1.0:
            raise ConfigError(f"invalid value for {where}.confidence: must be within 0..1")
        for key in ("max_tokens", "context_chars"):
            value = getattr(spec, key)
            if value is not None and value <= 0:
                raise ConfigError(f"invalid value for {where}.{key}: must be > 0")
        if spec.context_messages is not None and spec.context_messages < 0:
            raise ConfigError(f"invalid value for {where}.context_messages: must be >= 0")
        if spec.api_key_env is not None and spec.api_key is not None:
            raise ConfigError(f"invalid value for {where}: set api_key or api_key_env, not both")
        _check_with_provider(providers[provider], spec, config, where)
    if config.agent_provider != "builtin":
        # The built-in persona ids are served by AGENT_PROVIDER unless a table replaces them.
        from gurukul_fast.agents.builtin import BUILTIN_AGENT_IDS

        for agent_id in BUILTIN_AGENT_IDS:
            if agent_id not in seen:
                spec = AgentSpec(id=agent_id)
                where = "AGENT_PROVIDER"
                _check_with_provider(providers[config.agent_provider], spec, config, where)


def _agent_providers() -> dict[str, EntryPoint]:
    """The installed agent providers by name (entry-point group `gurukul_fast.agents`)."""
    return {entry.name: entry for entry in entry_points(group="gurukul_fast.agents")}


def _check_with_provider(entry: EntryPoint, spec: AgentSpec, config: Config, where: str) -> None:
    """Let the provider refuse a spec it cannot serve (say, no model) at start-up."""
    provider = entry.load()
    try:
        provider.check(spec, config)
    except ValueError as exc:
        raise ConfigError(f"invalid value for {where}: {exc}") from None
