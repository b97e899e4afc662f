"""Agent replies: the lifecycle of one AI answer, from typing-on to the stored reply.

Theory of operation. A stored user message that names an agent becomes one *job*
(`AgentReplies.start`). Jobs of one chat run one at a time, in the order their messages
were stored (a FIFO lock per chat: later messages queue, at most `AGENT_QUEUE_PER_CHAT`);
across chats at most `MAX_CONCURRENT_AGENT_REPLIES` generate at once. A job's life:

    queued ──(chat's turn)──▶ typing on ─▶ generating ──▶ storing ──▶ done
                                  │             │                     ▲
                                  └─ cancel / shutdown / error / timeout ┘  typing off

- *generating*: the chat's recent history is read, the agent streams `AgentDelta`s within
  `AGENT_TIMEOUT`; clients that connected with `?stream=1` get the partial text as
  `agent_stream` frames, coalesced to one every `AGENT_STREAM_INTERVAL_MS`.
- *storing*: the reply is stored idempotently (client id `reply:<trigger id>`, so a job
  that somehow ran twice stores once), split into parts of at most
  `AGENT_REPLY_PART_CHARS` with `messageIndex`/`totalMessages`, and each part is broadcast
  with the triggering temp `messageId`; then the chat's summary.
- *cancel* (the `cancel` frame, or shutdown after the drain timeout) stops the agent — for
  an HTTP provider that closes the upstream request — and stores the text generated so
  far with `metadata.cancelled = true`; nothing is stored if nothing was generated.
- *errors* reach the sender as `error` 503 (agent or storage unavailable) or 504 (timeout)
  with the triggering `messageId`; the user's message stays stored.

Typing goes off on every path once it went on. A retried temp `messageId` never gets here
twice (the chat service answers a duplicate with the stored copy), and a trigger already
queued or running is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import unicodedata
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from gurukul_fast import protocol as p
from gurukul_fast.agents import (
    Agent,
    AgentDelta,
    AgentError,
    AgentRequest,
    AgentTimeout,
    AgentTurn,
    StreamingAgent,
)
from gurukul_fast.config import Config
from gurukul_fast.metrics import Metrics
from gurukul_fast.storage import NewMessage, Storage, StorageUnavailable, StoredMessage
from gurukul_fast.wire import ASSISTANT, new_message_id, now_ms, to_wire

if TYPE_CHECKING:
    from gurukul_fast.chat import Client

__all__ = ["AgentReplies", "ReplyHost", "clean_reply", "split_reply"]

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 100_000  # a runaway provider is cut off here (the part stored, marked)
LATER_REPLIES_SEEN = 50  # replies stored after a queued trigger that its context may show

# C0/C1 control characters except \t and \n; DEL too (as for user messages).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ReplyHost(Protocol):
    """What a reply needs from the chat service."""

    async def append(self, message: NewMessage) -> StoredMessage:
        """Store through the group committer."""
        ...

    def publish_event(
        self, chat_id: str, frame: bytes, kind: str, *, lossy: bool = False, message_seq: int = 0
    ) -> None:
        """Send to every member of the chat."""
        ...

    def publish_stream(self, chat_id: str, payload: bytes) -> int:
        """Send an `agent_stream` frame to the members that opted in (`?stream=1`)."""
        ...

    def send_error(
        self,
        client: Client,
        message: str,
        code: int,
        *,
        message_id: str | None = None,
        chat_id: str | None = None,
    ) -> None: ...

    def reply_stored(self, stored: StoredMessage) -> None:
        """A reply was stored and broadcast: publish the chat's new summary."""
        ...


def clean_reply(text: str) -> str:
    """Agent text as it is stored: NFC, no control characters, no surrounding blank space."""
    return unicodedata.normalize("NFC", _CONTROL.sub("", text)).strip()


def split_reply(text: str, limit: int) -> list[str]:
    """Cut `text` into parts of at most `limit` characters, at the best boundary in reach.

    Prefers paragraph breaks, then line breaks, then sentence ends, then spaces; a word
    longer than `limit` is cut where it must be. One part (the text itself) if it fits.
    """
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for separator in ("\n\n", "\n", ". ", "? ", "! ", " "):
            at = window.rfind(separator, limit // 2)
            if at > 0:
                cut = at + len(separator.rstrip(" ")) if separator.endswith(" ") else at
                break
        if cut <= 0:
            cut = limit
        part, rest = rest[:cut].rstrip(), rest[cut:].lstrip()
        if part:
            parts.append(part)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


class _Job:
    """One reply: what triggered it and how far it got."""

    __slots__ = (
        "agent",
        "cancel_reason",
        "client",
        "phase",
        "task",
        "temp_id",
        "text",
        "trigger",
    )

    def __init__(
        self, client: Client, agent: Agent, trigger: StoredMessage, temp_id: str | None
    ) -> None:
        self.client = client
        self.agent = agent
        self.trigger = trigger
        self.temp_id = temp_id
        self.phase = "queued"  # queued → generating → storing
        self.text: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason = "shutdown"  # overwritten by a user's cancel

    def cancel(self, reason: str) -> bool:
        """Stop the job unless its reply is already being stored; True if it was stopped."""
        if self.phase == "storing" or self.task is None or self.task.done():
            return False
        self.cancel_reason = reason
        self.task.cancel()
        return True


class _Streamer:
    """Partial text for `?stream=1` clients: at most one frame per interval, deltas only.

    Leading edge: the first text goes out at once (time to first token matters most),
    later text waits for the window to close and leaves as one frame.
    """

    __slots__ = (
        "_agent_id",
        "_chat_id",
        "_handle",
        "_host",
        "_interval",
        "_last",
        "_loop",
        "_offset",
        "_pending",
        "_reply_to",
        "_temp_id",
    )

    def __init__(self, host: ReplyHost, interval_s: float, job: _Job) -> None:
        self._host = host
        self._interval = interval_s
        self._loop = asyncio.get_running_loop()
        self._chat_id = job.trigger.chat_id
        self._temp_id = job.temp_id
        self._reply_to = job.trigger.id
        self._agent_id = job.agent.agent_id
        self._pending: list[str] = []
        self._offset = 0
        self._last = -1e9
        self._handle: asyncio.TimerHandle | None = None

    def push(self, text: str) -> None:
        self._pending.append(text)
        if self._handle is not None:
            return
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._handle = self._loop.call_later(wait, self.flush)

    def flush(self) -> None:
        """Send what is pending now (before the final message, and from the timer)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._pending:
            return
        delta = "".join(self._pending)
        self._pending.clear()
        self._send(delta)
        self._offset += len(delta)
        self._last = time.monotonic()

    def finish(self, status: str) -> None:
        """Flush, then tell stream clients this reply is over (completed/cancelled/failed)."""
        if status == "completed" or status == "cancelled":
            self.flush()
        else:
            self._pending.clear()
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
        self._send("", status=status)

    def _send(self, delta: str, status: str | None = None) -> None:
        data = p.AgentStreamData(
            chat_id=self._chat_id,
            message_id=self._temp_id,
            reply_to=self._reply_to,
            agent_id=self._agent_id,
            offset=self._offset,
            delta=delta,
            done=status is not None,
            status=status,
        )
        self._host.publish_stream(self._chat_id, p.encode(p.AgentStreamEvent(data, now_ms())))


class AgentReplies:
    """Runs agent replies as tasks: one at a time per chat, a global limit across chats."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        host: ReplyHost,
        metrics: Metrics,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
    ) -> None:
        self._config = config
        self._storage = storage
        self._host = host
        self._metrics = metrics
        self._spawn = spawn
        self._slots = asyncio.Semaphore(config.max_concurrent_agent_replies)
        self._jobs: dict[str, _Job] = {}  # trigger message id → job, queued or running
        self._chats: dict[str, list[_Job]] = {}  # chat id → its jobs, in order
        self._turns: dict[str, asyncio.Lock] = {}  # chat id → whose turn it is (FIFO)
        self._closed = False

    @property
    def in_progress(self) -> int:
        """Replies queued or running (for tests and the drain log)."""
        return len(self._jobs)

    def start(
        self, client: Client, agent: Agent, trigger: StoredMessage, temp_id: str | None
    ) -> None:
        """Queue the reply to `trigger` (a newly stored user message); returns at once."""
        chat_id = trigger.chat_id
        if self._closed:
            self._host.send_error(
                client, "Server shutting down", 503, message_id=temp_id, chat_id=chat_id
            )
            return
        if trigger.id in self._jobs:
            return  # that message is being answered already
        queue = self._chats.setdefault(chat_id, [])
        if len(queue) > self._config.agent_queue_per_chat:
            self._host.send_error(
                client,
                "Agent busy: too many replies waiting",
                429,
                message_id=temp_id,
                chat_id=chat_id,
            )
            return
        job = _Job(client, agent, trigger, temp_id)
        self._jobs[trigger.id] = job
        queue.append(job)
        job.task = self._spawn(self._run(job))

    def cancel(self, chat_id: str, message_id: str | None = None) -> bool:
        """Stop the replies of `chat_id` (only the one `message_id` triggered, if given).

        Returns False if there was nothing to stop. Replies being stored are not stopped.
        """
        cancelled = False
        for job in tuple(self._chats.get(chat_id, ())):
            if message_id is None or message_id in (job.temp_id, job.trigger.id):
                cancelled = job.cancel("user") or cancelled
        return cancelled

    def close(self) -> None:
        """Refuse new replies (shutdown has begun); queued and running ones go on."""
        self._closed = True

    def shutdown(self) -> int:
        """The drain timed out: cancel every reply; each stores its partial text as
        cancelled and turns typing off. Returns how many were cancelled."""
        self._closed = True
        return sum(job.cancel("shutdown") for job in tuple(self._jobs.values()))

    # ---- one job

    async def _run(self, job: _Job) -> None:
        chat_id = job.trigger.chat_id
        turn = self._turns.get(chat_id)
        if turn is None:
            turn = self._turns[chat_id] = asyncio.Lock()
        try:
            async with turn:
                await self._generate(job)
        finally:
            self._jobs.pop(job.trigger.id, None)
            queue = self._chats.get(chat_id)
            if queue is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(job)
                if not queue:
                    del self._chats[chat_id]
                    self._turns.pop(chat_id, None)

    async def _generate(self, job: _Job) -> None:
        host = self._host
        agent = job.agent
        chat_id = job.trigger.chat_id
        streamer = _Streamer(host, self._config.agent_stream_interval_ms / 1000, job)
        outcome = "failed"
        last: StoredMessage | None = None
        self._typing(chat_id, agent.agent_id, True)
        try:
            async with self._slots:
                job.phase = "generating"
                request = await self._request(job)
                confidence = 1.0
                truncated = False
                size = 0
                async with asyncio.timeout(self._config.agent_timeout):
                    async with contextlib.aclosing(_deltas(agent, request)) as deltas:
                        async for delta in deltas:
                            if delta.confidence is not None:
                                confidence = delta.confidence
                            truncated = truncated or delta.truncated
                            if not delta.text:
                                continue
                            job.text.append(delta.text)
                            streamer.push(delta.text)
                            size += len(delta.text)
                            if size > MAX_REPLY_CHARS:
                                truncated = True
                                break
                job.phase = "storing"
            content = clean_reply("".join(job.text))
            if not content:
                raise AgentError("the agent returned an empty reply")
            metadata: dict[str, Any] = {"confidence": confidence}
            if truncated:
                metadata["truncated"] = True
            streamer.flush()  # partial text never arrives after the final message
            last = await self._store(job, content, metadata)
            outcome = "completed"
        except (TimeoutError, AgentTimeout) as exc:
            self._fail(job, "Agent timed out", 504, exc)
        except AgentError as exc:
            self._fail(job, "Agent unavailable", 503, exc)
        except StorageUnavailable as exc:
            self._fail(job, "Storage unavailable", 503, exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            streamer.flush()
            last = await self._store_cancelled(job)
            raise
        except Exception as exc:
            logger.exception("agent %s failed with a bug", agent.agent_id)
            self._fail(job, "Agent unavailable", 503, exc, log=False)
        finally:
            # Typing goes off on every path: success, error, timeout, cancel, shutdown.
            streamer.finish(outcome)
            self._typing(chat_id, agent.agent_id, False)
            if last is not None:
                host.reply_stored(last)

    async def _request(self, job: _Job) -> AgentRequest:
        """What the agent is told: the trigger and the chat's recent history.

        The history is what came before the trigger plus the replies stored since (a
        queued message's context includes the answers to the messages queued before it).
        """
        trigger = job.trigger
        wanted: int = getattr(job.agent, "context_messages", self._config.agent_context_messages)
        turns: list[StoredMessage] = []
        if wanted > 0:
            storage = self._storage
            turns = await storage.latest_messages(trigger.chat_id, wanted, before_seq=trigger.seq)
            later = await storage.messages_after(trigger.chat_id, trigger.seq, LATER_REPLIES_SEEN)
            turns += [m for m in later if m.role == "assistant"]
        return AgentRequest(
            chat_id=trigger.chat_id,
            user_id=trigger.user_id,
            agent_id=job.agent.agent_id,
            content=trigger.content,
            history=tuple(AgentTurn(m.role, m.content) for m in turns[-wanted:] if wanted),
        )

    async def _store(
        self, job: _Job, content: str, metadata: dict[str, Any]
    ) -> StoredMessage | None:
        """Store the reply (in parts if long) and broadcast each part; return the last."""
        host = self._host
        trigger = job.trigger
        chat_id = trigger.chat_id
        parts = split_reply(content, self._config.agent_reply_part_chars)
        created = now_ms()
        messages = [
            NewMessage(
                id=new_message_id(created),
                chat_id=chat_id,
                user_id=ASSISTANT,
                agent_id=job.agent.agent_id,
                content=part,
                role="assistant",
                created_at_ms=created,
                # One reply per trigger, even if this job were run twice.
                client_message_id=_reply_key(trigger.id, index),
                metadata={**metadata, "messageIndex": index, "totalMessages": len(parts)},
            )
            for index, part in enumerate(parts, start=1)
        ]
        # Appended in one loop turn, the parts share a group commit and get adjacent seqs.
        stored = await asyncio.gather(*(host.append(message) for message in messages))
        last: StoredMessage | None = None
        for record in stored:
            if record.duplicate:
                continue
            self._metrics.messages_stored.inc()
            data = p.MessageEventData(chat_id, to_wire(record), job.temp_id)
            host.publish_event(
                chat_id,
                p.encode(p.MessageEvent(data, now_ms())),
                "message",
                message_seq=record.seq,
            )
            last = record
        if last is not None:
            self._metrics.agent_replies.inc()
        return last

    async def _store_cancelled(self, job: _Job) -> StoredMessage | None:
        """Keep what was generated before a cancel, marked; nothing if nothing was."""
        if job.phase != "generating":
            return None
        content = clean_reply("".join(job.text))
        if not content:
            return None
        metadata = {"confidence": 0.0, "cancelled": True, "cancelReason": job.cancel_reason}
        try:
            return await self._store(job, content, metadata)
        except (StorageUnavailable, asyncio.CancelledError):
            logger.warning("could not store a cancelled reply's partial text")
            return None

    def _fail(
        self, job: _Job, message: str, code: int, exc: BaseException, *, log: bool = True
    ) -> None:
        if log:
            logger.warning("agent %s reply failed: %s", job.agent.agent_id, exc or type(exc))
        chat_id = job.trigger.chat_id
        self._host.send_error(job.client, message, code, message_id=job.temp_id, chat_id=chat_id)

    def _typing(self, chat_id: str, agent_id: str, is_typing: bool) -> None:
        event = p.TypingEvent(p.TypingEventData(chat_id, ASSISTANT, agent_id, is_typing), now_ms())
        self._host.publish_event(chat_id, p.encode(event), "typing", lossy=is_typing)


def _reply_key(trigger_id: str, index: int) -> str:
    """The idempotency key of part `index` of the reply to `trigger_id`."""
    return f"reply:{trigger_id}" if index == 1 else f"reply:{trigger_id}:{index}"


async def _deltas(agent: Agent, request: AgentRequest) -> AsyncGenerator[AgentDelta, None]:
    """The agent's reply as deltas: streamed if it streams, else one delta with the lot."""
    # hasattr, not isinstance: a runtime-checkable Protocol check costs ~13 µs per reply.
    if hasattr(agent, "stream"):
        stream = cast(StreamingAgent, agent).stream(request)
        try:
            async for delta in stream:
                yield delta
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()  # releases the provider's connection at once
        return
    reply = await agent.reply(request)
    yield AgentDelta(reply.content, confidence=reply.confidence)
