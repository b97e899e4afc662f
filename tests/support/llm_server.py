"""A local OpenAI-compatible chat-completions server for tests: real HTTP, real SSE.

`run_llm()` starts it on 127.0.0.1 port 0 in the test's loop. Each request takes the next
queued `Script` (or the default one: a short reply streamed word by word) that says how to
misbehave: an error status, a hang before the headers, slow chunks, a connection cut
mid-stream, garbage instead of JSON, a non-streamed body. The server records what it was
asked (`requests`, `headers`), how many streams were running at once (`max_active`), and
how many the client abandoned (`aborted`, `aborted_event`): that is how tests see that a
cancel really stopped the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeLLM", "Script", "run_llm", "words"]


def words(text: str) -> list[str]:
    """Split `text` into token-like chunks that concatenate back to it."""
    parts = text.split(" ")
    return [part + " " for part in parts[:-1]] + [parts[-1]]


@dataclass
class Script:
    """How the server answers one request."""

    chunks: Sequence[str] = ("Hello ", "from ", "the ", "model.")
    status: int = 200
    body: str | None = None  # for error statuses
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds between chunks
    first_delay: float = 0.0  # seconds before the response headers
    disconnect_after: int | None = None  # cut the connection after this many chunks
    garbage: bool = False  # send a data event that is not JSON after the chunks
    finish_reason: str | None = "stop"
    done: bool = True  # send `data: [DONE]`
    non_streamed: bool = False  # answer with one application/json completion


class FakeLLM:
    """The server's state; `base_url` is what an agent's config points at."""

    def __init__(self) -> None:
        self.scripts: deque[Script] = deque()
        self.default: Callable[[dict[str, Any]], Script] = lambda _body: Script()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self.aborted = 0
        self.aborted_event = asyncio.Event()
        self.first_chunk_sent = asyncio.Event()
        self.received = asyncio.Event()  # a request arrived
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def enqueue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.received.set()
        script = self.scripts.popleft() if self.scripts else self.default(body)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._answer(request, script, body)
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted += 1
            self.aborted_event.set()
            raise
        finally:
            self.active -= 1

    async def _answer(
        self, request: web.Request, script: Script, body: dict[str, Any]
    ) -> web.StreamResponse:
        if script.first_delay:
            await asyncio.sleep(script.first_delay)
        if script.status != 200:
            return web.Response(
                status=script.status,
                text=script.body or '{"error":{"message":"scripted failure"}}',
                headers=script.headers,
                content_type="application/json",
            )
        if script.non_streamed:
            completion = {
                "id": "cmpl-test",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(script.chunks)},
                        "finish_reason": script.finish_reason,
                    }
                ],
            }
            self.completed += 1
            return web.json_response(completion)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": a comment line, which clients must skip\n\n")
        for index, text in enumerate(script.chunks):
            if script.disconnect_after is not None and index == script.disconnect_after:
                assert request.transport is not None
                request.transport.close()  # mid-stream: no final chunk, no [DONE]
                self.completed += 1
                return response
            chunk = {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.first_chunk_sent.set()
            if script.delay:
                await asyncio.sleep(script.delay)
        if script.garbage:
            await response.write(b"data: {this is not json\n\n")
        if script.finish_reason is not None:
            final = {"choices": [{"index": 0, "delta": {}, "finish_reason": script.finish_reason}]}
            await response.write(f"data: {json.dumps(final)}\n\n".encode())
        if script.done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.completed += 1
        return response


@contextlib.asynccontextmanager
async def run_llm() -> AsyncIterator[FakeLLM]:
    """A started fake LLM server; stopped on exit."""
    llm = FakeLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm.chat_completions)
    # handler_cancellation: a client that hangs up cancels the handler, even mid-sleep.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    llm.port = runner.addresses[0][1]
    try:
        yield llm
    finally:
        await runner.cleanup()
