"""The storage contract every backend implements.

Theory of operation: the server never writes one message at a time. The group committer
(`gurukul_fast.storage.committer`) collects the messages that arrive while the previous
commit is in flight and hands them to `Storage.append_messages` as one batch; a backend
writes that batch in one transaction (one round trip where the database allows it) and
returns the stored records. A sender is answered only after that call returns, so an
acknowledged message is durable.

Per-chat order is the order of `seq`, assigned by the backend inside the same transaction
(1, 2, 3, … without gaps per chat). A message whose `(chat_id, user_id, client_message_id)`
was stored before is not stored again: the earlier record is returned in its place with
`duplicate=True`, so a client re-sending its queued messages after a reconnect is safe.

Backends are found by URL scheme through the entry-point group `gurukul_fast.storage`
(see `gurukul_fast.storage.loader`). The embedded SQLite backend is the reference
implementation; `tests/conformance/` runs one suite against every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "ChatRecord",
    "NewMessage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoredMessage",
    "chat_from_columns",
]


class StorageError(Exception):
    """Base class of the errors a backend raises on purpose."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or refused the write; clients get `error` 503.

    Backends raise this (not their driver's exception) for connection loss, timeouts and
    failed transactions, so the server can answer 503 and keep the connection open.
    """


class NewMessage(msgspec.Struct, frozen=True, gc=False):
    """A message the server wants stored; `seq` is assigned by the backend."""

    id: str  # server id, "msg-…"; kept only if this is not a duplicate
    chat_id: str
    user_id: str  # the authenticated sender, or "assistant" for agent replies
    agent_id: str | None
    content: str
    role: str  # "user" | "assistant"
    created_at_ms: int  # wall-clock milliseconds since the epoch, UTC
    client_message_id: str | None = None  # the client's temp id (idempotency key)
    metadata: dict[str, Any] = {}


class StoredMessage(msgspec.Struct, frozen=True, gc=False):
    """A message as stored; `duplicate` is True when an earlier copy was returned."""

    id: str
    chat_id: str
    seq: int
    user_id: str
    agent_id: str | None
    content: str
    role: str
    created_at_ms: int
    client_message_id: str | None = None
    metadata: dict[str, Any] = {}
    duplicate: bool = False


class ChatRecord(msgspec.Struct, frozen=True, gc=False):
    """A chat and the summary the server sends on join and after each message."""

    chat_id: str
    owner_id: str
    title: str
    agent_id: str | None
    message_count: int
    last_message: str | None  # content of the latest message, None while empty
    last_seq: int  # seq of the latest message, 0 while empty
    created_at_ms: int
    updated_at_ms: int


class _Row(Protocol):
    """A database row: sqlite3's tuple, asyncpg's Record."""

    def __getitem__(self, index: int, /) -> Any: ...


def chat_from_columns(row: _Row) -> ChatRecord:
    """A ChatRecord from a SQL row selected as (id, owner_id, title, agent_id,
    message_count, last_message, last_seq, created_at ms, updated_at ms)."""
    return ChatRecord(
        chat_id=row[0],
        owner_id=row[1],
        title=row[2],
        agent_id=row[3],
        message_count=row[4],
        last_message=row[5],
        last_seq=row[6],
        created_at_ms=row[7],
        updated_at_ms=row[8],
    )


@runtime_checkable
class Storage(Protocol):
    """What the server needs from a database. All methods are coroutines except `url`.

    Every method may raise `StorageUnavailable`; none may raise a driver exception.
    Methods that take a list accept an empty one and then do nothing.
    """

    @property
    def url(self) -> str:
        """The URL the backend was opened with, with any password masked (for logs)."""
        ...

    async def open(self) -> None:
        """Connect and apply pending migrations; raise `StorageUnavailable` if unreachable."""
        ...

    async def close(self) -> None:
        """Release connections; pending calls may fail afterwards."""
        ...

    async def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version now in force.

        Safe when several servers call it at once. `open` calls it too.
        """
        ...

    async def ping(self) -> bool:
        """Return True if the database answers now (used by `/ws/health`)."""
        ...

    # chats and membership

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        """Return the chat, or None if it does not exist."""
        ...

    async def create_chat(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> ChatRecord:
        """Create the chat owned by `owner_id` (also made a member) unless it exists.

        Returns the chat as stored: when two servers race, both get the winner's record.
        """
        ...

    async def add_member(self, chat_id: str, user_id: str) -> None:
        """Make `user_id` a member of the chat (no-op if already one)."""
        ...

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        """Return True if `user_id` owns the chat or is a member of it."""
        ...

    async def list_members(self, chat_id: str) -> list[str]:
        """Return the member ids of the chat (owner included), sorted."""
        ...

    # messages

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store a batch in one transaction; return one record per input, in input order.

        Assigns per-chat `seq`, updates each chat's `message_count`, `last_message`,
        `last_seq` and `updated_at_ms`. Chats must exist (the server creates them first).
        An input whose idempotency key was stored before (or appears earlier in the same
        batch) is returned as the earlier record with `duplicate=True` and changes nothing.
        All or nothing: on failure nothing of the batch is stored and `StorageUnavailable`
        is raised.
        """
        ...

    async def find_by_client_id(
        self, chat_id: str, user_id: str, client_message_id: str
    ) -> StoredMessage | None:
        """Return the message stored under this idempotency key, if any."""
        ...

    async def latest_messages(
        self, chat_id: str, limit: int, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """Return up to `limit` messages with seq < before_seq (or the newest), oldest first."""
        ...

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > after_seq, oldest first (recovery)."""
        ...

    async def get_message(self, chat_id: str, message_id: str) -> StoredMessage | None:
        """Return the message with this server id in this chat, or None."""
        ...

    # read state

    async def mark_read(
        self, chat_id: str, user_id: str, message_ids: Sequence[str], now_ms: int
    ) -> list[str]:
        """Record that `user_id` read these messages; return the ids that exist in the chat.

        Ids of other chats or unknown ids are ignored. Marking twice is harmless. Backends
        with a `metadata` column also set `metadata.read = true` on those messages (SPEC).
        """
        ...

    async def read_message_ids(self, chat_id: str, user_id: str) -> set[str]:
        """Return the ids of the messages of this chat that `user_id` has read."""
        ...

    async def unread_count(self, chat_id: str, user_id: str) -> int:
        """Return how many messages of the chat, not sent by `user_id`, they have not read."""
        ...

    # presence (SPEC: users.last_active, users.is_online)

    async def set_online(self, user_id: str, online: bool, now_ms: int) -> None:
        """Record the user's online status and last activity time (creates the user row)."""
        ...

    async def get_user(self, user_id: str) -> tuple[bool, int] | None:
        """Return (is_online, last_active_ms) for the user, or None if never seen."""
        ...
