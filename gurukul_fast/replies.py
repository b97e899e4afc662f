"""Agent replies: the lifecycle of one AI answer, from typing-on to the stored reply.

A stored user message that names an agent starts one reply task: assistant typing on →
the agent generates (bounded by a global concurrency limit and a timeout) → the reply is
stored (idempotently: one reply per triggering message) → broadcast with the triggering
temp `messageId` → typing off (on every path) → `chat_update`. Failures reach the sender as
`error` frames (503 agent or storage unavailable, 504 timeout); the user's message stays
stored whatever happens here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from gurukul_fast import protocol as p
from gurukul_fast.agents import Agent, AgentError, AgentRequest, AgentTurn
from gurukul_fast.config import Config
from gurukul_fast.metrics import Metrics
from gurukul_fast.storage import NewMessage, Storage, StorageUnavailable, StoredMessage
from gurukul_fast.wire import ASSISTANT, new_message_id, now_ms, to_wire

if TYPE_CHECKING:
    from gurukul_fast.chat import Client

__all__ = ["AgentReplies", "ReplyHost"]

AGENT_CONTEXT_MESSAGES = 10  # earlier messages handed to an agent as context


class ReplyHost(Protocol):
    """What a reply needs from the chat service."""

    async def append(self, message: NewMessage) -> StoredMessage:
        """Store through the group committer."""
        ...

    def publish_event(self, chat_id: str, frame: bytes, kind: str, *, lossy: bool = False) -> None:
        """Send to every member of the chat."""
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


class AgentReplies:
    """Runs agent replies as tasks; at most `max_concurrent_agent_replies` generate at once."""

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
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}

    def start(
        self, client: Client, agent: Agent, trigger: StoredMessage, temp_id: str | None
    ) -> None:
        """Start the reply to `trigger` (a newly stored user message); returns at once."""
        key = (trigger.chat_id, trigger.id)
        task = self._spawn(self._reply(client, agent, trigger, temp_id))
        self._running[key] = task
        task.add_done_callback(lambda _: self._running.pop(key, None))

    def cancel(self, chat_id: str) -> bool:
        """Stop the replies in progress in `chat_id`; False if there were none."""
        cancelled = False
        for (reply_chat, _), task in tuple(self._running.items()):
            if reply_chat == chat_id:
                task.cancel()
                cancelled = True
        return cancelled

    async def _reply(
        self, client: Client, agent: Agent, trigger: StoredMessage, temp_id: str | None
    ) -> None:
        host = self._host
        chat_id = trigger.chat_id
        stored: StoredMessage | None = None
        async with self._slots:
            self._typing(chat_id, agent.agent_id, True)
            try:
                history = await self._storage.latest_messages(
                    chat_id, AGENT_CONTEXT_MESSAGES, before_seq=trigger.seq
                )
                request = AgentRequest(
                    chat_id=chat_id,
                    user_id=trigger.user_id,
                    agent_id=agent.agent_id,
                    content=trigger.content,
                    history=tuple(AgentTurn(m.role, m.content) for m in history),
                )
                reply = await asyncio.wait_for(agent.reply(request), self._config.agent_timeout)
                stored = await host.append(
                    NewMessage(
                        id=new_message_id(now_ms()),
                        chat_id=chat_id,
                        user_id=ASSISTANT,
                        agent_id=agent.agent_id,
                        content=reply.content,
                        role="assistant",
                        created_at_ms=now_ms(),
                        # One reply per trigger, even if this task were run twice.
                        client_message_id=f"reply:{trigger.id}",
                        metadata={
                            "confidence": reply.confidence,
                            "messageIndex": 1,
                            "totalMessages": 1,
                        },
                    )
                )
                if not stored.duplicate:
                    self._metrics.agent_replies.inc()
                    self._metrics.messages_stored.inc()
                    event = p.MessageEvent(
                        p.MessageEventData(chat_id, to_wire(stored), temp_id), now_ms()
                    )
                    host.publish_event(chat_id, p.encode(event), "message")
            except TimeoutError:
                host.send_error(client, "Agent timed out", 504, message_id=temp_id, chat_id=chat_id)
            except AgentError:
                host.send_error(
                    client, "Agent unavailable", 503, message_id=temp_id, chat_id=chat_id
                )
            except StorageUnavailable:
                host.send_error(
                    client, "Storage unavailable", 503, message_id=temp_id, chat_id=chat_id
                )
            finally:
                # Typing goes off on every path: success, error, timeout, cancel, shutdown.
                self._typing(chat_id, agent.agent_id, False)
        if stored is not None and not stored.duplicate:
            host.reply_stored(stored)

    def _typing(self, chat_id: str, agent_id: str, is_typing: bool) -> None:
        event = p.TypingEvent(p.TypingEventData(chat_id, ASSISTANT, agent_id, is_typing), now_ms())
        self._host.publish_event(chat_id, p.encode(event), "typing", lossy=is_typing)
