"""The chat service: what each client frame does (DESIGN §3–4).

Theory of operation: the transport decodes a frame and calls `ChatService.handle` on the
loop thread. Checks that need no I/O (rate limits, sizes, ids, typing throttle, ping) run
there, synchronously. Anything that needs the database or an agent runs in a task, so the
loop never waits on I/O. Every event for a chat goes out through `_publish`, encoded
once: to the local room (`RoomTable`) and, with several nodes, through the broker to the
nodes that have members of the chat (`deliver_remote` on their side).

Per-chat order is seq order: the group committer resolves one batch at a time, in order,
so the tasks waiting on it resume and publish in seq order; with several nodes writing to
one chat, `NodeLink` (nodes.py) re-establishes seq order on every node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import msgspec

from gurukul_fast import protocol as p
from gurukul_fast.agents import AgentRegistry
from gurukul_fast.auth import AuthError, Principal, TokenVerifier
from gurukul_fast.broker import Broker
from gurukul_fast.cluster import ClusterStore
from gurukul_fast.config import Config
from gurukul_fast.flusher import BatchFlusher
from gurukul_fast.framing import text_frame
from gurukul_fast.metrics import Metrics
from gurukul_fast.nodes import NodeLink
from gurukul_fast.replies import AgentReplies
from gurukul_fast.rooms import Peer, RoomEvent, RoomTable
from gurukul_fast.session import (
    AbuseError,
    ConnectionState,
    InputError,
    RateKind,
    RateLimits,
    TypingThrottle,
    UserRegistry,
    check_chat_id,
    clean_content,
)
from gurukul_fast.storage import (
    ChatRecord,
    NewMessage,
    Storage,
    StorageUnavailable,
    StoredMessage,
)
from gurukul_fast.storage.committer import GroupCommitter
from gurukul_fast.wire import ASSISTANT, iso_utc, new_message_id, now_ms, to_wire

__all__ = ["ChatService", "Client", "CloseCode"]


logger = logging.getLogger(__name__)


class CloseCode:
    """Close codes we send; 1xxx are RFC 6455, 4xxx are ours (DESIGN §5)."""

    GOING_AWAY = 1001  # server shutting down: reconnect elsewhere
    POLICY_VIOLATION = 1008  # auth expired or failed, persistent abuse: do not retry as is
    MESSAGE_TOO_BIG = 1009  # frame over MAX_FRAME_BYTES
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # over a cluster-wide limit right now
    SLOW_CONSUMER = 4008  # client stopped reading; reconnect and recover with lastMessageId


class Client(Peer, Protocol):
    """A connection as the service sees it (the transport implements it)."""

    @property
    def state(self) -> ConnectionState: ...

    @property
    def is_open(self) -> bool: ...

    def close(self, code: int, reason: str) -> None: ...


class _ChatInfo:
    """What the service caches about a chat it has seen: enough for the summaries."""

    __slots__ = ("agent_id", "message_count", "owner_id", "title", "updated_at_ms")

    def __init__(self, record: ChatRecord) -> None:
        self.owner_id = record.owner_id
        self.title = record.title
        self.agent_id = record.agent_id
        self.message_count = record.message_count
        self.updated_at_ms = record.updated_at_ms


class ChatService:
    """Owns the chat behaviour of one server process. Construct once; call `start()`."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        agents: AgentRegistry,
        verifier: TokenVerifier,
        metrics: Metrics,
        *,
        broker: Broker | None = None,
        cluster: ClusterStore | None = None,
    ) -> None:
        self.config = config
        self.storage = storage
        self.agents = agents
        self.verifier = verifier
        self.metrics = metrics
        self._loop = asyncio.get_running_loop()
        self.flusher = BatchFlusher(config.batch_interval_ms / 1000, self._loop)
        self.rooms = RoomTable(self.flusher)
        self.users = UserRegistry(config)
        self.clients: dict[int, Client] = {}
        self.committer = GroupCommitter(
            storage,
            max_batch=config.commit_max_batch,
            window_s=config.commit_window_ms / 1000,
            observer=metrics.observe_commit,
        )
        self.storage_ok = True  # last known storage health, for /ws/health
        self._typing = TypingThrottle(config.typing_throttle)
        self._typing_expiry: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._token_expiry: dict[int, asyncio.TimerHandle] = {}
        self._chats: dict[str, _ChatInfo] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Future[StoredMessage]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_conn_id = 0
        self._access_checks: dict[tuple[int, str], asyncio.Future[None]] = {}
        self.replies = AgentReplies(config, storage, self, metrics, self._spawn)
        # Several nodes: events cross through the broker and message events are put in
        # seq order per chat; limits and presence are counted cluster-wide.
        self._rate_limits = {
            RateKind.MESSAGE: config.message_rate_limit,
            RateKind.TYPING: config.typing_rate_limit,
            RateKind.RECEIPT: config.receipt_rate_limit,
            RateKind.CONTROL: config.control_rate_limit,
        }
        self.nodes: NodeLink | None = None
        if broker is not None:
            self.nodes = NodeLink(
                broker,
                cluster,
                storage,
                deliver=self._deliver_ready,
                has_members=lambda chat_id: bool(self.rooms.members(chat_id)),
                spawn=self._spawn,
                loop=self._loop,
                max_recovery=config.max_recovery_messages,
            )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.committer.start()

    async def drain(self, timeout_s: float) -> int:
        """Wait for in-flight work (commits, agent replies) up to `timeout_s`; cancel the rest.

        Returns how many tasks had to be cancelled.
        """
        self.replies.close()  # no new agent replies; queued and running ones may finish
        pending = set(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
        else:
            still = set()
        # Agent replies first, so each records why: stored as cancelled, typing off.
        self.replies.shutdown()
        for task in still:
            task.cancel()
        if still:
            # Cancelled replies still store their partial text: give the commits time.
            await asyncio.wait(still, timeout=2.0)
        await self.committer.stop()
        for handle in (*self._typing_expiry.values(), *self._token_expiry.values()):
            handle.cancel()
        return len(still)

    def next_conn_id(self) -> int:
        self._next_conn_id += 1
        return self._next_conn_id

    # ------------------------------------------------------------------ connections

    def can_accept(self, user_id: str) -> str | None:
        """Before an upgrade: None if a connection of `user_id` is allowed, else why not."""
        if len(self.clients) >= self.config.max_connections:
            return "Server at connection limit"
        if self.users.connection_count(user_id) >= self.config.max_connections_per_user:
            return "Too many connections for this user"
        return None

    @property
    def broker_ok(self) -> bool | None:
        """None on a single node; else whether the broker and cluster store are reachable."""
        return None if self.nodes is None else self.nodes.healthy

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def new_state(self, principal: Principal, batch: bool) -> ConnectionState:
        """State for a connection being upgraded; it counts once `connected` is called."""
        placeholder = RateLimits(self.config, time.monotonic())
        return ConnectionState(self.next_conn_id(), principal, placeholder, batch=batch)

    def connected(self, client: Client) -> None:
        """The upgrade finished; the client is live and shares its user's rate limits."""
        client.state.limits = self.users.attach(client.user_id, time.monotonic())
        self.clients[client.conn_id] = client
        self.metrics.connections.set(len(self.clients))
        self._schedule_token_expiry(client)
        if self.nodes is not None:
            self._spawn(self._open_on_cluster(client))
        elif self.users.connection_count(client.user_id) == 1:
            self._spawn(self._set_online(client.user_id, True))

    def disconnected(self, client: Client) -> None:
        """The socket is gone: leave every room, stop timers, update presence."""
        if self.clients.pop(client.conn_id, None) is None:
            return
        state = client.state
        for chat_id in tuple(state.joined):
            self._leave(client, chat_id)
        handle = self._token_expiry.pop(client.conn_id, None)
        if handle is not None:
            handle.cancel()
        last_here = self.users.detach(client.user_id)
        if self.nodes is not None:
            self._spawn(self.nodes.close_connection(client.user_id, str(client.conn_id)))
        elif last_here:
            self._spawn(self._set_online(client.user_id, False))
        self.metrics.connections.set(len(self.clients))
        self.metrics.active_chats.set(self.rooms.active_chats)

    # ------------------------------------------------------------------ dispatch

    def handle(self, client: Client, frame: p.ClientFrame | p.DecodeFailure) -> None:
        """Act on one decoded frame. Synchronous; never raises."""
        try:
            self._dispatch(client, frame)
        except _Handled:
            pass
        except InputError as exc:
            self.send_error(client, exc.message, exc.code, message_id=_message_id_of(frame))
        except AbuseError:
            self.send_error(client, "Rate limit exceeded repeatedly", 429)
            client.close(CloseCode.POLICY_VIOLATION, "Rate limit exceeded")
        except Exception:
            logger.exception("frame handler failed")
            self.send_error(client, "Internal error", 500)

    def _dispatch(self, client: Client, frame: p.ClientFrame | p.DecodeFailure) -> None:
        counters = self.metrics.frames_in
        if isinstance(frame, p.DecodeFailure):
            counters["invalid"].inc()
            self.send_error(client, frame.message, frame.code, detail=frame.detail)
            return
        if isinstance(frame, p.MessageFrame):
            counters["message"].inc()
            self._limit(client, RateKind.MESSAGE, frame.data.message_id or frame.message_id)
            self._on_message(client, frame)
        elif isinstance(frame, p.TypingFrame):
            counters["typing"].inc()
            self._limit(client, RateKind.TYPING)
            self._on_typing(client, frame.data)
        elif isinstance(frame, p.ReadReceiptFrame):
            counters["read_receipt"].inc()
            self._limit(client, RateKind.RECEIPT)
            self._on_read_receipt(client, frame.data)
        elif isinstance(frame, p.ChatUpdateFrame):
            counters["chat_update"].inc()
            self._limit(client, RateKind.CONTROL)
            chat_id = check_chat_id(frame.data.chat_id, self.config.max_chat_id_length)
            if frame.data.action == "join":
                self._spawn(self._guard(client, None, self._join(client, chat_id, frame.data)))
            else:
                self._leave(client, chat_id)
                self._send(client, self._chat_update_frame(chat_id, action="left"), "chat_update")
        elif isinstance(frame, p.PingFrame):
            counters["ping"].inc()
            self._limit(client, RateKind.CONTROL)
            pong = p.PongEvent(p.PongData(frame.data.timestamp), now_ms())
            self._send(client, p.encode(pong), "pong")
        elif isinstance(frame, p.AuthFrame):
            counters["auth"].inc()
            self._limit(client, RateKind.CONTROL)
            self._on_auth(client, frame.data.token)
        elif isinstance(frame, p.HistoryFrame):
            counters["history"].inc()
            self._limit(client, RateKind.CONTROL)
            chat_id = check_chat_id(frame.data.chat_id, self.config.max_chat_id_length)
            self._spawn(self._guard(client, None, self._history(client, chat_id, frame.data)))
        elif isinstance(frame, p.CancelFrame):
            counters["cancel"].inc()
            self._limit(client, RateKind.CONTROL)
            self._on_cancel(client, frame.data)

    def _limit(self, client: Client, kind: RateKind, message_id: str | None = None) -> None:
        wait = client.state.check_rate(kind, time.monotonic(), self.config.abuse_close_after)
        if wait == 0.0 and self.nodes is not None and kind is not RateKind.MESSAGE:
            wait = self.nodes.check_rate(client.user_id, kind.value, self._rate_limits[kind])
        if wait > 0.0:
            self.send_error(
                client,
                "Rate limit exceeded",
                429,
                message_id=message_id,
                retry_after=round(wait, 3),
            )
            raise _Handled

    # ------------------------------------------------------------------ messages

    def _on_message(self, client: Client, frame: p.MessageFrame) -> None:
        data = frame.data
        temp_id = data.message_id or frame.message_id
        chat_id = check_chat_id(data.chat_id, self.config.max_chat_id_length)
        content = clean_content(data.content, self.config.max_message_length)
        if temp_id is not None and len(temp_id) > 128:
            raise InputError("Invalid messageId", 400)
        self._spawn(
            self._guard(
                client,
                temp_id,
                self._store_message(client, chat_id, content, data.agent_id, temp_id),
            )
        )

    async def _store_message(
        self,
        client: Client,
        chat_id: str,
        content: str,
        agent_id: str | None,
        temp_id: str | None,
    ) -> None:
        if self.nodes is not None:
            # Messages are counted cluster-wide before they are stored.
            wait = await self.nodes.check_rate_now(
                client.user_id, RateKind.MESSAGE.value, self.config.message_rate_limit
            )
            if wait > 0.0:
                raise RateLimited(wait)
        info = await self._ensure_access(client, chat_id, create=True, agent_id=agent_id)
        self._join_room(client, chat_id, info)
        agent = self.agents.get(agent_id) if agent_id else None
        stored = await self._append_idempotent(
            NewMessage(
                id=new_message_id(now_ms()),
                chat_id=chat_id,
                user_id=client.user_id,
                agent_id=agent_id,
                content=content,
                role="user",
                created_at_ms=now_ms(),
                client_message_id=temp_id,
            )
        )
        event = p.encode(
            p.MessageEvent(p.MessageEventData(chat_id, to_wire(stored), temp_id), now_ms())
        )
        if stored.duplicate:
            # A retry after a reconnect: the room has it already; answer the sender only.
            self._send(client, event, "message")
            return
        self.metrics.messages_stored.inc()
        message_event = RoomEvent(chat_id, event, "message", message_seq=stored.seq)
        self._publish_together(message_event, self._summary_event(info, stored))
        if agent_id is None:
            return
        if agent is None:
            self.send_error(client, "Unknown agent", 404, message_id=temp_id, chat_id=chat_id)
            return
        self.replies.start(client, agent, stored, temp_id)

    async def _append_idempotent(self, message: NewMessage) -> StoredMessage:
        """Store via the group committer; concurrent retries of one temp id share a commit."""
        if message.client_message_id is None:
            return await self._append(message)
        key = (message.chat_id, message.user_id, message.client_message_id)
        pending = self._inflight.get(key)
        if pending is not None:
            first = await asyncio.shield(pending)
            return msgspec.structs.replace(first, duplicate=True)
        future: asyncio.Future[StoredMessage] = self._loop.create_future()
        self._inflight[key] = future
        try:
            stored = await self._append(message)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else StorageUnavailable())
                future.exception()  # mark retrieved: only retries that were waiting care
            raise
        finally:
            self._inflight.pop(key, None)
        future.set_result(stored)
        return stored

    async def _append(self, message: NewMessage) -> StoredMessage:
        try:
            stored = await self.committer.append(message)
        except StorageUnavailable:
            self.storage_ok = False
            raise
        self.storage_ok = True
        return stored

    def _publish_summary(self, info: _ChatInfo, stored: StoredMessage) -> None:
        """After a stored message: the room learns the new counts (SPEC `chat_update`)."""
        event = self._summary_event(info, stored)
        if self.nodes is not None:
            self.nodes.publish(event)
        self._deliver_local(event)

    def _summary_event(self, info: _ChatInfo, stored: StoredMessage) -> RoomEvent:
        # seq has no gaps, so the latest seq is the message count.
        info.message_count = max(info.message_count, stored.seq)
        info.updated_at_ms = stored.created_at_ms
        frame = self._chat_update_frame(stored.chat_id, info=info, last_message=stored.content)
        return RoomEvent(stored.chat_id, frame, "chat_update", coalesce_key="chat_update")

    # ------------------------------------------------------------------ ReplyHost

    async def append(self, message: NewMessage) -> StoredMessage:
        """Store one message through the group committer (agent replies use this)."""
        return await self._append(message)

    def publish_event(
        self, chat_id: str, frame: bytes, kind: str, *, lossy: bool = False, message_seq: int = 0
    ) -> None:
        # The agent's typing state, like a user's, keeps only its latest value in a batch.
        key = f"typing:{ASSISTANT}" if kind == "typing" else None
        self._publish(chat_id, frame, kind, lossy=lossy, coalesce_key=key, message_seq=message_seq)

    def publish_stream(self, chat_id: str, payload: bytes) -> int:
        """Partial agent text, only to the members that connected with `?stream=1`, on
        every node. Returns the local deliveries.

        Lossy and never batched: a client far behind loses deltas (it sees a gap in
        `offset`) but always gets the stored reply as a `message`.
        """
        if self.nodes is not None:
            self.nodes.publish(RoomEvent(chat_id, payload, "agent_stream", lossy=True))
        return self._deliver_stream(chat_id, payload)

    def _deliver_stream(self, chat_id: str, payload: bytes) -> int:
        frame: bytes | None = None
        delivered = 0
        for peer in self.rooms.members(chat_id):
            client = self.clients.get(peer.conn_id)
            if client is None or not client.state.stream:
                continue
            if frame is None:
                frame = text_frame(payload)
            client.deliver(frame, lossy=True)
            delivered += 1
        if delivered:
            self.metrics.frames_out["agent_stream"].inc(delivered)
        return delivered

    def reply_stored(self, stored: StoredMessage) -> None:
        info = self._chats.get(stored.chat_id)
        if info is not None:
            self._publish_summary(info, stored)

    def _on_cancel(self, client: Client, data: p.CancelData) -> None:
        chat_id = check_chat_id(data.chat_id, self.config.max_chat_id_length)
        if chat_id not in client.state.allowed:
            raise InputError("Access denied to chat", 403)
        if not self.replies.cancel(chat_id, data.message_id):
            raise InputError("No agent reply in progress", 404)

    # ------------------------------------------------------------------ typing

    def _on_typing(self, client: Client, data: p.TypingData) -> None:
        chat_id = check_chat_id(data.chat_id, self.config.max_chat_id_length)
        if chat_id not in client.state.joined:
            raise InputError("Join the chat first", 403)
        user_id = client.user_id
        if not self._typing.should_relay(user_id, chat_id, data.is_typing, time.monotonic()):
            return
        key = (user_id, chat_id)
        handle = self._typing_expiry.pop(key, None)
        if handle is not None:
            handle.cancel()
        if data.is_typing:
            self._typing_expiry[key] = self._loop.call_later(
                self.config.typing_timeout, self._expire_typing, user_id, chat_id
            )
        event = p.TypingEvent(
            p.TypingEventData(chat_id, user_id, data.agent_id, data.is_typing), now_ms()
        )
        # Typing is for the others: not echoed to any of the typist's connections.
        self._publish(
            chat_id,
            p.encode(event),
            "typing",
            exclude_user=user_id,
            lossy=data.is_typing,
            coalesce_key=f"typing:{user_id}",
        )

    def _expire_typing(self, user_id: str, chat_id: str) -> None:
        """No `isTyping:false` arrived in time: tell the room the user stopped."""
        self._typing_expiry.pop((user_id, chat_id), None)
        self._typing.forget(user_id, chat_id)
        event = p.TypingEvent(p.TypingEventData(chat_id, user_id, None, False), now_ms())
        self._publish(
            chat_id,
            p.encode(event),
            "typing",
            exclude_user=user_id,
            coalesce_key=f"typing:{user_id}",
        )

    # ------------------------------------------------------------------ receipts

    def _on_read_receipt(self, client: Client, data: p.ReadReceiptData) -> None:
        chat_id = check_chat_id(data.chat_id, self.config.max_chat_id_length)
        if len(data.message_ids) > self.config.max_read_receipt_ids:
            raise InputError(f"Too many messageIds (max {self.config.max_read_receipt_ids})", 413)
        ids = list(dict.fromkeys(i for i in data.message_ids if isinstance(i, str) and i))
        self._spawn(self._guard(client, None, self._store_receipt(client, chat_id, ids)))

    async def _store_receipt(self, client: Client, chat_id: str, ids: list[str]) -> None:
        await self._ensure_access(client, chat_id, create=False)
        try:
            known = await self.storage.mark_read(chat_id, client.user_id, ids, now_ms())
        except StorageUnavailable:
            self.storage_ok = False
            raise
        confirmation = p.ReadReceiptEvent(
            p.ReadReceiptEventData(chat_id, known, client.user_id, confirmed=True), now_ms()
        )
        self._send(client, p.encode(confirmation), "read_receipt")
        if known:
            relay = p.ReadReceiptEvent(
                p.ReadReceiptEventData(chat_id, known, client.user_id), now_ms()
            )
            self._publish(
                chat_id,
                p.encode(relay),
                "read_receipt",
                exclude=client.conn_id,
                receipt=(client.user_id, tuple(known)),
            )

    # ------------------------------------------------------------------ join / leave / history

    async def _join(self, client: Client, chat_id: str, data: p.ChatUpdateData) -> None:
        info = await self._ensure_access(
            client, chat_id, create=True, agent_id=data.agent_id, title=data.title
        )
        self._join_room(client, chat_id, info)
        if self.nodes is not None:
            # Subscribed before history is read: no message falls between the two.
            await self.nodes.settle()
        page = self.config.history_page_size
        messages: list[StoredMessage] = []
        has_more = False
        recovered: bool | None = None
        after_seq = await self._recovery_point(chat_id, data)
        if after_seq is not None and after_seq >= 0:
            limit = self.config.max_recovery_messages
            missed = await self.storage.messages_after(chat_id, after_seq, limit + 1)
            recovered = len(missed) <= limit
            if recovered:
                messages, has_more = missed, after_seq > 0
        elif after_seq is not None:
            recovered = False  # the client's lastMessageId is not in this chat
        if recovered is not True:
            latest = await self.storage.latest_messages(chat_id, page + 1)
            has_more = len(latest) > page
            messages = latest[-page:] if has_more else latest
        frame = self._chat_update_frame(
            chat_id,
            info=info,
            last_message=messages[-1].content if messages else None,
            action="joined",
            messages=[to_wire(m) for m in messages],
            has_more=has_more,
            recovered=recovered,
        )
        self._send(client, frame, "chat_update")

    async def _recovery_point(self, chat_id: str, data: p.ChatUpdateData) -> int | None:
        """The seq after which a rejoining client wants messages, or None for a plain join."""
        if data.since is not None:
            return max(0, data.since)
        if data.last_message_id is None:
            return None
        message = await self.storage.get_message(chat_id, data.last_message_id)
        return message.seq if message is not None else -1

    def _join_room(self, client: Client, chat_id: str, info: _ChatInfo) -> None:
        if client.conn_id not in self.clients:
            return  # it disconnected while we awaited storage: nothing to join
        if self.rooms.join(chat_id, client):
            client.state.joined.add(chat_id)
            self.metrics.active_chats.set(self.rooms.active_chats)
            if self.nodes is not None and len(self.rooms.members(chat_id)) == 1:
                # The first local member: this node starts receiving the chat.
                self.nodes.chat_joined(chat_id, info.message_count)

    def _leave(self, client: Client, chat_id: str) -> None:
        client.state.joined.discard(chat_id)
        if not self.rooms.leave(chat_id, client):
            return
        user_id = client.user_id
        if self._typing.is_typing(user_id, chat_id) and not any(
            m.user_id == user_id for m in self.rooms.members(chat_id)
        ):
            handle = self._typing_expiry.pop((user_id, chat_id), None)
            if handle is not None:
                handle.cancel()
            self._expire_typing(user_id, chat_id)
        if not self.rooms.members(chat_id):
            self._chats.pop(chat_id, None)
            if self.nodes is not None:
                self.nodes.chat_left(chat_id)
        self.metrics.active_chats.set(self.rooms.active_chats)

    async def _history(self, client: Client, chat_id: str, data: p.HistoryData) -> None:
        await self._ensure_access(client, chat_id, create=False)
        limit = max(
            1, min(data.limit or self.config.history_page_size, self.config.max_history_page)
        )
        rows = await self.storage.latest_messages(chat_id, limit + 1, before_seq=data.before)
        has_more = len(rows) > limit
        rows = rows[-limit:] if has_more else rows
        event = p.HistoryEvent(
            p.HistoryEventData(chat_id, [to_wire(m) for m in rows], has_more), now_ms()
        )
        self._send(client, p.encode(event), "history")

    async def _ensure_access(
        self,
        client: Client,
        chat_id: str,
        *,
        create: bool,
        agent_id: str | None = None,
        title: str | None = None,
    ) -> _ChatInfo:
        """Return the chat if the user may use it; create it for its first user if allowed.

        Costs nothing once the connection passed the check for this chat (cached). While a
        check is in flight, later frames of the same connection for the same chat wait for
        it and resume in arrival order, so a burst of sends to a new chat is stored in the
        order it was sent.
        """
        state = client.state
        info = self._chats.get(chat_id)
        if chat_id in state.allowed and info is not None:
            return info
        key = (client.conn_id, chat_id)
        earlier = self._access_checks.get(key)
        if earlier is not None:
            await asyncio.shield(earlier)
            info = self._chats.get(chat_id)
            if chat_id in state.allowed and info is not None:
                return info
        check: asyncio.Future[None] = self._loop.create_future()
        self._access_checks[key] = check
        try:
            return await self._check_access(client, chat_id, create, agent_id, title)
        finally:
            if self._access_checks.get(key) is check:
                del self._access_checks[key]
            check.set_result(None)

    async def _check_access(
        self,
        client: Client,
        chat_id: str,
        create: bool,
        agent_id: str | None,
        title: str | None,
    ) -> _ChatInfo:
        state = client.state
        user_id = client.user_id
        record = await self.storage.get_chat(chat_id)
        if record is None:
            if not create:
                raise InputError("Chat not found", 404)
            agent = self.agents.get(agent_id) if agent_id else None
            default_title = f"Chat with {agent.display_name}" if agent else "New chat"
            record = await self.storage.create_chat(
                chat_id, user_id, (title or default_title)[:200], agent_id, now_ms()
            )
        if record.owner_id != user_id and not await self.storage.is_member(chat_id, user_id):
            if chat_id not in state.principal.chats:
                raise InputError("Access denied to chat", 403)
            # The token grants this chat: remember the membership, as an accepted invite.
            await self.storage.add_member(chat_id, user_id)
        state.allowed.add(chat_id)
        info = self._chats.get(chat_id)
        if info is None:
            info = self._chats[chat_id] = _ChatInfo(record)
        return info

    # ------------------------------------------------------------------ auth

    def _on_auth(self, client: Client, token: str) -> None:
        try:
            principal = self.verifier.verify(token)
        except AuthError as exc:
            raise InputError(exc.reason, 401) from None
        if principal.user_id != client.user_id:
            raise InputError("Token is for another user", 401)
        client.state.principal = principal
        self._schedule_token_expiry(client)
        event = p.AuthEvent(p.AuthEventData(int(principal.expires_at * 1000)), now_ms())
        self._send(client, p.encode(event), "auth")

    def _schedule_token_expiry(self, client: Client) -> None:
        handle = self._token_expiry.pop(client.conn_id, None)
        if handle is not None:
            handle.cancel()
        delay = max(0.0, client.state.principal.expires_at - time.time())
        self._token_expiry[client.conn_id] = self._loop.call_later(
            delay, self._expire_token, client
        )

    def _expire_token(self, client: Client) -> None:
        self._token_expiry.pop(client.conn_id, None)
        if client.is_open:
            self.send_error(client, "Token expired", 401)
            client.close(CloseCode.POLICY_VIOLATION, "Token expired")

    def on_presence(self, user_id: str, online: bool) -> None:
        """Cluster store callback: a user went offline (or back online) cluster-wide."""
        self._spawn(self._set_online(user_id, online))

    async def _open_on_cluster(self, client: Client) -> None:
        """Cluster-wide per-user cap and presence for a new connection."""
        assert self.nodes is not None
        user_id = client.user_id
        allowed, came_online = await self.nodes.open_connection(
            user_id, str(client.conn_id), self.config.max_connections_per_user
        )
        if not allowed:
            self.send_error(client, "Too many connections for this user", 503)
            client.close(CloseCode.TRY_AGAIN_LATER, "Too many connections")
        elif came_online:
            await self._set_online(user_id, True)

    # ------------------------------------------------------------------ presence

    async def _set_online(self, user_id: str, online: bool) -> None:
        try:
            await self.storage.set_online(user_id, online, now_ms())
        except StorageUnavailable:
            self.storage_ok = False
            logger.debug("presence update for a user failed: storage unavailable")

    # ------------------------------------------------------------------ sending

    def send_error(
        self,
        client: Client,
        message: str,
        code: int,
        *,
        message_id: str | None = None,
        retry_after: float | None = None,
        chat_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.metrics.count_error(code)
        event = p.ErrorEvent(
            p.ErrorData(message, code, message_id, retry_after, chat_id, detail), now_ms()
        )
        self._send(client, p.encode(event), "error")

    def _send(self, client: Client, payload: bytes, kind: str) -> None:
        """Send one frame to one client (replies, errors): never batched."""
        self.metrics.frames_out[kind].inc()
        client.deliver(text_frame(payload))

    def _publish(
        self,
        chat_id: str,
        payload: bytes,
        kind: str,
        *,
        exclude: int = 0,
        exclude_user: str | None = None,
        lossy: bool = False,
        coalesce_key: str | None = None,
        receipt: tuple[str, tuple[str, ...]] | None = None,
        message_seq: int = 0,
    ) -> None:
        """Every event for a chat goes out here: to the local members and, with several
        nodes, through the broker to the nodes that have members of the chat."""
        event = RoomEvent(
            chat_id,
            payload,
            kind,
            exclude,
            exclude_user,
            lossy,
            coalesce_key,
            receipt,
            message_seq,
        )
        if self.nodes is not None:
            self.nodes.publish(event)
        self._deliver_local(event)

    def _publish_together(self, *events: RoomEvent) -> None:
        """Publish a message and the summary that follows it: one delivery per member.

        With several nodes each event goes its own way (the message through seq order).
        """
        if self.nodes is not None:
            for event in events:
                self.nodes.publish(event)
                self._deliver_local(event)
            return
        delivered = self.rooms.publish_together(events)
        if delivered:
            for event in events:
                self.metrics.frames_out[event.kind].inc(delivered)

    def deliver_remote(self, event: RoomEvent) -> None:
        """An event another node published for a chat with members here (broker callback)."""
        if event.kind == "agent_stream":
            self._deliver_stream(event.chat_id, event.payload)
        else:
            self._deliver_local(event)

    def _deliver_local(self, event: RoomEvent) -> None:
        if self.nodes is None:
            self._deliver_ready(event)
            return
        for ready in self.nodes.admit(event):
            self._deliver_ready(ready)

    def _deliver_ready(self, event: RoomEvent) -> None:
        delivered = self.rooms.publish(event)
        if delivered:
            self.metrics.frames_out[event.kind].inc(delivered)

    def _chat_update_frame(
        self,
        chat_id: str,
        *,
        info: _ChatInfo | None = None,
        last_message: str | None = None,
        action: str | None = None,
        messages: list[p.WireMessage] | None = None,
        has_more: bool | None = None,
        recovered: bool | None = None,
    ) -> bytes:
        updates = None
        if info is not None:
            updates = p.ChatSummary(
                title=info.title,
                message_count=info.message_count,
                last_message=last_message,
                agent_id=info.agent_id,
                updated_at=iso_utc(info.updated_at_ms),
            )
        data = p.ChatUpdateEventData(chat_id, updates, action, messages, has_more, recovered)
        return p.encode(p.ChatUpdateEvent(data, now_ms()))

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(
        self, client: Client, message_id: str | None, work: Coroutine[Any, Any, None]
    ) -> None:
        """Run a frame's async part; turn expected failures into error frames."""
        try:
            await work
        except RateLimited as exc:
            self.send_error(
                client,
                exc.message,
                429,
                message_id=message_id,
                retry_after=round(exc.retry_after, 3),
            )
        except InputError as exc:
            self.send_error(client, exc.message, exc.code, message_id=message_id)
        except StorageUnavailable:
            self.storage_ok = False
            self.send_error(client, "Storage unavailable", 503, message_id=message_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("frame task failed")
            self.send_error(client, "Internal error", 500, message_id=message_id)


class RateLimited(InputError):
    """Over a rate limit found after the frame was accepted (cluster-wide budgets)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("Rate limit exceeded", 429)
        self.retry_after = retry_after


class _Handled(InputError):
    """The error frame was already sent; stop handling this frame silently."""

    def __init__(self) -> None:
        super().__init__("", 0)


def _message_id_of(frame: object) -> str | None:
    if isinstance(frame, p.MessageFrame):
        return frame.data.message_id or frame.message_id
    return None
