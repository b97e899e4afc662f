"""The OpenAI-compatible provider: streamed chat completions over HTTP with aiohttp.

Works with anything that serves `POST {base_url}/chat/completions` with `stream: true` and
answers in server-sent events: OpenAI, vLLM, llama.cpp's server, Ollama's `/v1` endpoint.

Theory of operation: `stream(request)` builds the messages (the agent's system prompt,
the chat's recent history trimmed to `context_messages`/`context_chars`, the new user
message), posts them, and yields an `AgentDelta` per content chunk. Before the first
byte of a reply, a connection error, a 429 or a 5xx is retried up to `AGENT_RETRIES`
times with exponential backoff (honouring `Retry-After`, capped); once text is flowing
nothing is retried, since a second attempt would repeat what the user already saw. Any
other failure is an `AgentError` (the sender gets 503), a timeout an `AgentTimeout` (504):
`AGENT_CONNECT_TIMEOUT` to connect, `AGENT_IDLE_TIMEOUT` between two reads. The server's
`AGENT_TIMEOUT` bounds the whole reply.

Cancelling the consumer closes the HTTP connection, which is how an upstream server learns
to stop generating. `SSEDecoder` and `parse_chunk` are pure, so the wire format is unit
tested without a socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec

from gurukul_fast.agents.base import (
    Agent,
    AgentDelta,
    AgentError,
    AgentReply,
    AgentRequest,
    AgentTimeout,
    AgentTurn,
)
from gurukul_fast.agents.prompts import PERSONA_NAMES, default_prompt
from gurukul_fast.config import AgentSpec, Config

__all__ = [
    "OPENAI_PROVIDER",
    "OpenAIChatAgent",
    "OpenAIProvider",
    "OpenAISettings",
    "SSEDecoder",
    "StreamChunk",
    "build_messages",
    "parse_chunk",
]

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_DELAY_S = 10.0  # a Retry-After longer than this is not waited for in full
MAX_LINE_BYTES = 1 << 20  # one SSE line at most; longer is a broken stream
DEFAULT_CONFIDENCE = 0.9  # metadata.confidence of an LLM reply that finished normally


class OpenAISettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one agent needs to talk to its endpoint, resolved from spec and config."""

    agent_id: str
    display_name: str
    base_url: str
    api_key: str | None
    model: str
    system_prompt: str
    temperature: float
    max_tokens: int
    context_messages: int
    context_chars: int
    confidence: float
    connect_timeout_s: float
    idle_timeout_s: float
    retries: int
    retry_backoff_s: float
    max_connections: int


# ---------------------------------------------------------------- wire format (pure)


class SSEDecoder:
    """Server-sent events, line by line: feed lines, get each event's `data` when it ends.

    Only `data` matters for chat completions; `event`, `id`, `retry` and comments are
    skipped. Multi-line data is joined with newlines, as the SSE spec says.
    """

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: bytes) -> str | None:
        """Take one line (with or without its newline); return an event's data at its end."""
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        if not text:
            return self.flush()
        if text.startswith(":"):
            return None
        field, _, value = text.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """End the current event (blank line or end of stream); None if it had no data."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data.clear()
        return data


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    message: _Delta | None = None  # non-streamed completions
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    error: Any = None


class StreamChunk(msgspec.Struct, frozen=True):
    """What one `data:` event of a chat-completion stream says."""

    text: str
    finish_reason: str | None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


def parse_chunk(data: str | bytes) -> StreamChunk:
    """Decode one completion chunk (or a whole non-streamed completion).

    Raises `AgentError` for anything that is not one: invalid JSON, an `error` object.
    """
    try:
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError:
        raise AgentError("provider sent an invalid chunk") from None
    if chunk.error is not None:
        raise AgentError("provider reported an error in the stream")
    text: list[str] = []
    finish: str | None = None
    for choice in chunk.choices[:1]:  # n=1: the first choice is the reply
        part = choice.delta or choice.message
        if part is not None and part.content:
            text.append(part.content)
        finish = choice.finish_reason or finish
    return StreamChunk("".join(text), finish)


def build_messages(settings: OpenAISettings, request: AgentRequest) -> list[dict[str, str]]:
    """The `messages` of a request: system prompt, trimmed history, the new message.

    History keeps the latest `context_messages` turns, then drops the oldest until the
    total is within `context_chars`; the new message is always sent whole.
    """
    turns: Sequence[AgentTurn] = request.history[-settings.context_messages :]
    if settings.context_messages == 0:
        turns = ()
    budget = settings.context_chars
    kept: list[AgentTurn] = []
    for turn in reversed(turns):
        budget -= len(turn.content)
        if budget < 0:
            break
        kept.append(turn)
    messages = [{"role": "system", "content": settings.system_prompt}]
    for turn in reversed(kept):
        role = "assistant" if turn.role == "assistant" else "user"
        messages.append({"role": role, "content": turn.content})
    messages.append({"role": "user", "content": request.content})
    return messages


# ---------------------------------------------------------------- the agent


class OpenAIChatAgent:
    """One agent served by an OpenAI-compatible endpoint. Safe for concurrent chats."""

    def __init__(self, settings: OpenAISettings) -> None:
        self.settings = settings
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "gurukul-fast",
        }
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._headers = headers

    @property
    def agent_id(self) -> str:
        return self.settings.agent_id

    @property
    def display_name(self) -> str:
        return self.settings.display_name

    @property
    def context_messages(self) -> int:
        """How many earlier messages the server should hand over as history."""
        return self.settings.context_messages

    async def reply(self, request: AgentRequest) -> AgentReply:
        """The whole reply at once (for callers that do not stream)."""
        text: list[str] = []
        confidence = self.settings.confidence
        async for delta in self.stream(request):
            text.append(delta.text)
            if delta.confidence is not None:
                confidence = delta.confidence
        content = "".join(text)
        if not content.strip():
            raise AgentError("provider returned an empty reply")
        return AgentReply(content, confidence)

    async def stream(self, request: AgentRequest) -> AsyncIterator[AgentDelta]:
        """Yield the reply as the provider generates it; see the module docstring."""
        body = msgspec.json.encode(
            {
                "model": self.settings.model,
                "messages": build_messages(self.settings, request),
                "stream": True,
                "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens,
            }
        )
        response = await self._open(body)
        finished = False
        try:
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("application/json"):
                # A server that ignores `stream`: the whole completion in one body.
                chunk = parse_chunk(await response.read())
                finished = True
                yield AgentDelta(chunk.text)
                yield self._final(chunk.finish_reason)
                return
            async for delta in self._read_events(response):
                yield delta
            finished = True
        except TimeoutError:
            raise AgentTimeout("provider stalled mid-stream") from None
        except aiohttp.ClientPayloadError:
            raise AgentError("provider stream broke off") from None
        except aiohttp.ClientError:
            raise AgentError("provider connection failed mid-stream") from None
        finally:
            if finished:
                response.release()
            else:
                # Cancelled or failed: drop the connection so the server stops generating.
                response.close()

    async def aclose(self) -> None:
        """Close the HTTP session; call at shutdown."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---- internals

    async def _read_events(self, response: aiohttp.ClientResponse) -> AsyncIterator[AgentDelta]:
        decoder = SSEDecoder()
        finish: str | None = None
        content = response.content
        while True:
            try:
                line = await content.readuntil(b"\n")
            except ValueError:
                raise AgentError("provider sent an over-long line") from None
            if len(line) > MAX_LINE_BYTES:
                raise AgentError("provider sent an over-long line")
            data = decoder.feed(line) if line else decoder.flush()
            if data is not None:
                if data.strip() == "[DONE]":
                    yield self._final(finish)
                    return
                chunk = parse_chunk(data)
                finish = chunk.finish_reason or finish
                if chunk.text:
                    yield AgentDelta(chunk.text)
            if not line:  # end of body
                if finish is None:
                    raise AgentError("provider stream ended before the reply did")
                yield self._final(finish)  # some servers omit [DONE] after finish_reason
                return

    def _final(self, finish_reason: str | None) -> AgentDelta:
        truncated = finish_reason == "length"
        confidence = self.settings.confidence * (0.5 if truncated else 1.0)
        return AgentDelta("", confidence=round(confidence, 3), truncated=truncated)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            settings = self.settings
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=settings.connect_timeout_s,
                    sock_read=settings.idle_timeout_s,
                ),
                connector=aiohttp.TCPConnector(limit=settings.max_connections),
                read_bufsize=1 << 16,
            )
        return self._session

    async def _open(self, body: bytes) -> aiohttp.ClientResponse:
        """POST until a 200 arrives or the retries run out; see the module docstring."""
        settings = self.settings
        failure: AgentError = AgentError("provider unavailable")
        for attempt in range(settings.retries + 1):
            retry_after: float | None = None
            try:
                response = await self._client().post(self._url, data=body, headers=self._headers)
            except aiohttp.ConnectionTimeoutError:
                failure = AgentTimeout("provider connect timed out")
            except TimeoutError:
                # No response headers within the idle timeout: the model is stuck.
                raise AgentTimeout("provider did not answer in time") from None
            except aiohttp.ClientError as exc:
                failure = AgentError(f"provider connection failed: {type(exc).__name__}")
            else:
                if response.status == 200:
                    return response
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
                response.close()
                if status not in RETRYABLE_STATUSES:
                    raise AgentError(f"provider answered HTTP {status}")
                failure = AgentError(f"provider answered HTTP {status}")
            if attempt < settings.retries:
                delay = settings.retry_backoff_s * (2**attempt) * (0.75 + random.random() / 2)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                logger.info(
                    "agent %s: %s; retry %d in %.2fs",
                    settings.agent_id,
                    failure,
                    attempt + 1,
                    min(delay, MAX_RETRY_DELAY_S),
                )
                await asyncio.sleep(min(delay, MAX_RETRY_DELAY_S))
        raise failure


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta form only; dates are rare from LLMs)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


# ---------------------------------------------------------------- the provider


class OpenAIProvider:
    """`provider = "openai"`: the entry point `openai` of `gurukul_fast.agents`."""

    def check(self, spec: AgentSpec, config: Config) -> None:
        if not (spec.model or config.agent_model):
            raise ValueError("the openai provider needs a model (model or AGENT_MODEL)")
        base_url = spec.base_url or config.agent_base_url
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if spec.api_key_env is not None and not os.environ.get(spec.api_key_env):
            raise ValueError(f"api_key_env names {spec.api_key_env}, which is not set")

    def create(self, spec: AgentSpec, config: Config) -> Agent:
        self.check(spec, config)
        api_key = spec.api_key or config.agent_api_key
        if spec.api_key_env is not None:
            api_key = os.environ.get(spec.api_key_env)
        model = spec.model or config.agent_model
        assert model is not None  # check() ensured it
        settings = OpenAISettings(
            agent_id=spec.id,
            display_name=spec.display_name or PERSONA_NAMES.get(spec.id, spec.id.capitalize()),
            base_url=spec.base_url or config.agent_base_url,
            api_key=api_key,
            model=model,
            system_prompt=spec.system_prompt or default_prompt(spec.persona or spec.id),
            temperature=spec.temperature
            if spec.temperature is not None
            else config.agent_temperature,
            max_tokens=spec.max_tokens or config.agent_max_tokens,
            context_messages=spec.context_messages
            if spec.context_messages is not None
            else config.agent_context_messages,
            context_chars=spec.context_chars or config.agent_context_chars,
            confidence=spec.confidence if spec.confidence is not None else DEFAULT_CONFIDENCE,
            connect_timeout_s=config.agent_connect_timeout,
            idle_timeout_s=config.agent_idle_timeout,
            retries=config.agent_retries,
            retry_backoff_s=config.agent_retry_backoff,
            max_connections=config.max_concurrent_agent_replies,
        )
        return OpenAIChatAgent(settings)


OPENAI_PROVIDER = OpenAIProvider()
