"""In-process storage backend (`memory:`), for tests and benchmarks.

Everything lives in dicts of this one process and is lost when it exits. Every method runs
synchronously inside its coroutine without awaiting, so each call is atomic with respect to
the event loop: a batch is all-or-nothing and concurrent appenders cannot interleave.

Records are frozen structs and are shared, not copied: a `metadata` dict handed in is stored
as is, so callers must treat it as immutable once appended (the server builds a fresh one
per message). `mark_read` replaces records rather than mutating them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from gurukul_fast.storage.base import (
    ChatRecord,
    NewMessage,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gurukul_fast.storage.loader import StorageOptions

__all__ = ["SCHEMA_VERSION", "MemoryStorage"]

# There is no schema; `migrate` reports this so callers can treat every backend alike.
SCHEMA_VERSION = 1


class _Chat:
    """One chat's state: summary fields, messages by seq, and its indexes."""

    __slots__ = (
        "agent_id",
        "by_client_id",
        "by_id",
        "chat_id",
        "created_at_ms",
        "members",
        "messages",
        "owner_id",
        "reads",
        "title",
        "updated_at_ms",
    )

    def __init__(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> None:
        self.chat_id = chat_id
        self.owner_id = owner_id
        self.title = title
        self.agent_id = agent_id
        self.created_at_ms = now_ms
        self.updated_at_ms = now_ms
        # messages[seq - 1] is the message with that seq: seqs have no gaps.
        self.messages: list[StoredMessage] = []
        self.by_id: dict[str, int] = {}  # server id -> index into messages
        self.by_client_id: dict[tuple[str, str], int] = {}  # (user, client id) -> index
        self.members: set[str] = {owner_id}
        self.reads: dict[str, set[str]] = {}  # user id -> ids of messages read

    def record(self) -> ChatRecord:
        last = self.messages[-1] if self.messages else None
        return ChatRecord(
            chat_id=self.chat_id,
            owner_id=self.owner_id,
            title=self.title,
            agent_id=self.agent_id,
            message_count=len(self.messages),
            last_message=last.content if last is not None else None,
            last_seq=last.seq if last is not None else 0,
            created_at_ms=self.created_at_ms,
            updated_at_ms=self.updated_at_ms,
        )


class MemoryStorage:
    """The `Storage` protocol over plain dicts; each instance is a separate, empty database.

    Costs: append is O(batch), history pages are list slices, `unread_count` is O(messages
    in the chat). Nothing survives `close` or a new instance on the same URL.
    """

    def __init__(self, url: str, options: StorageOptions) -> None:
        if not url.lower().startswith("memory:"):
            raise ValueError(f"not a memory storage URL: {url!r}")
        self._url = url
        self._options = options
        self._chats: dict[str, _Chat] = {}
        self._users: dict[str, tuple[bool, int]] = {}
        self._open = False

    @property
    def url(self) -> str:
        """The URL this backend was created with."""
        return self._url

    async def open(self) -> None:
        """Mark the store usable; there is nothing to connect to."""
        self._open = True

    async def close(self) -> None:
        """Mark the store closed; later calls raise `StorageUnavailable`. Data is kept."""
        self._open = False

    async def migrate(self) -> int:
        """Return `SCHEMA_VERSION`; there is no schema to change."""
        self._check_open()
        return SCHEMA_VERSION

    async def ping(self) -> bool:
        """Return True while open."""
        return self._open

    # chats and membership

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        """Return the chat's summary, or None. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        return chat.record() if chat is not None else None

    async def create_chat(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> ChatRecord:
        """Create the chat unless it exists; return it as stored. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = _Chat(chat_id, owner_id, title, agent_id, now_ms)
        return chat.record()

    async def add_member(self, chat_id: str, user_id: str) -> None:
        """Add `user_id` to the chat's members; unknown chats are ignored. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is not None:
            chat.members.add(user_id)

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        """Return True if the user owns or is a member of the chat. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        return chat is not None and user_id in chat.members

    async def list_members(self, chat_id: str) -> list[str]:
        """Return the chat's member ids, sorted. O(m log m)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        return sorted(chat.members) if chat is not None else []

    # messages

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store the batch atomically; return one record per input (see `Storage`). O(batch)."""
        self._check_open()
        chats = self._chats
        # Check every chat first so a bad batch changes nothing (all or nothing).
        for chat_id in {message.chat_id for message in batch}:
            if chat_id not in chats:
                raise StorageError(f"append to unknown chat {chat_id!r}")
        stored: list[StoredMessage] = []
        for message in batch:
            chat = chats[message.chat_id]
            key = None
            if message.client_message_id is not None:
                key = (message.user_id, message.client_message_id)
                index = chat.by_client_id.get(key)
                if index is not None:
                    # Covers earlier batches and earlier entries of this batch alike.
                    stored.append(msgspec.structs.replace(chat.messages[index], duplicate=True))
                    continue
            record = StoredMessage(
                id=message.id,
                chat_id=message.chat_id,
                seq=len(chat.messages) + 1,
                user_id=message.user_id,
                agent_id=message.agent_id,
                content=message.content,
                role=message.role,
                created_at_ms=message.created_at_ms,
                client_message_id=message.client_message_id,
                metadata=message.metadata,
            )
            index = len(chat.messages)
            chat.messages.append(record)
            chat.by_id[record.id] = index
            if key is not None:
                chat.by_client_id[key] = index
            # Clocks of different servers may disagree; keep updated_at from going backwards.
            chat.updated_at_ms = max(chat.updated_at_ms, message.created_at_ms)
            stored.append(record)
        return stored

    async def find_by_client_id(
        self, chat_id: str, user_id: str, client_message_id: str
    ) -> StoredMessage | None:
        """Return the message stored under this idempotency key, or None. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            return None
        index = chat.by_client_id.get((user_id, client_message_id))
        return chat.messages[index] if index is not None else None

    async def latest_messages(
        self, chat_id: str, limit: int, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """Return up to `limit` messages before `before_seq` (or the newest), oldest first."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None or limit <= 0:
            return []
        # seq n sits at index n - 1, so "seq < before_seq" is the slice [: before_seq - 1].
        end = len(chat.messages) if before_seq is None else max(0, before_seq - 1)
        end = min(end, len(chat.messages))
        return chat.messages[max(0, end - limit) : end]

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > `after_seq`, oldest first. O(limit)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None or limit <= 0:
            return []
        start = max(0, after_seq)
        return chat.messages[start : start + limit]

    async def get_message(self, chat_id: str, message_id: str) -> StoredMessage | None:
        """Return the message with this server id in this chat, or None. O(1)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            return None
        index = chat.by_id.get(message_id)
        return chat.messages[index] if index is not None else None

    # read state

    async def mark_read(
        self, chat_id: str, user_id: str, message_ids: Sequence[str], now_ms: int
    ) -> list[str]:
        """Record reads and set `metadata.read`; return the known ids, deduplicated, in order."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            return []
        read = chat.reads.setdefault(user_id, set())
        found: list[str] = []
        for message_id in dict.fromkeys(message_ids):
            index = chat.by_id.get(message_id)
            if index is None:
                continue
            found.append(message_id)
            read.add(message_id)
            message = chat.messages[index]
            if message.metadata.get("read") is not True:
                # Replace, not mutate: the old record may be held by callers.
                chat.messages[index] = msgspec.structs.replace(
                    message, metadata={**message.metadata, "read": True}
                )
        return found

    async def read_message_ids(self, chat_id: str, user_id: str) -> set[str]:
        """Return the ids of this chat's messages the user has read. O(reads)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            return set()
        return set(chat.reads.get(user_id, ()))

    async def unread_count(self, chat_id: str, user_id: str) -> int:
        """Count the chat's messages from others that the user has not read. O(messages)."""
        self._check_open()
        chat = self._chats.get(chat_id)
        if chat is None:
            return 0
        read = chat.reads.get(user_id, set())
        return sum(1 for m in chat.messages if m.user_id != user_id and m.id not in read)

    # presence

    async def set_online(self, user_id: str, online: bool, now_ms: int) -> None:
        """Record the user's status and last activity time. O(1)."""
        self._check_open()
        self._users[user_id] = (online, now_ms)

    async def get_user(self, user_id: str) -> tuple[bool, int] | None:
        """Return (is_online, last_active_ms), or None if never seen. O(1)."""
        self._check_open()
        return self._users.get(user_id)

    def _check_open(self) -> None:
        if not self._open:
            raise StorageUnavailable("memory storage is not open")
