"""Collections, indexes and versioned migrations of the MongoDB backend.

Documents (field names are the storage contract's, so a shell user can read them):

- `chats`: `_id` = chat id, `owner_id`, `title`, `agent_id`, `created_at_ms`, and the
  summary `message_count`, `last_message`, `last_seq` (the per-chat sequence counter that
  `append_messages` advances with `$inc`), `updated_at_ms`.
- `messages`: `_id` = the server's message id ("msg-…"), `chat_id`, `seq`, `user_id`,
  `agent_id`, `content`, `role`, `created_at_ms`, `metadata`, and `client_message_id` only
  when the client sent one (so the partial idempotency index skips server-made messages).
- `chat_members`: `chat_id`, `user_id`.
- `message_reads`: `chat_id`, `user_id` (the reader), `message_id`, `author_id` (who sent
  the message, so unread counts need no join), `read_at_ms`.
- `users`: `_id` = user id, `is_online`, `last_active_ms`.
- `schema`: one document `{_id: "version", version: N}`.

A migration only ever adds (indexes, fields with defaults), and `create_index` with an
identical spec is a no-op, so several servers migrating at once all succeed; the version
document moves with `$max`, never backwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase

__all__ = [
    "CHATS",
    "CHAT_MEMBERS",
    "IDEMPOTENCY_INDEX",
    "MESSAGES",
    "MESSAGE_READS",
    "MIGRATIONS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "USERS",
    "apply_migrations",
]

CHATS: Final = "chats"
MESSAGES: Final = "messages"
CHAT_MEMBERS: Final = "chat_members"
MESSAGE_READS: Final = "message_reads"
USERS: Final = "users"
SCHEMA: Final = "schema"

# Named so a duplicate-key error can be told apart from one on `_id` or `(chat_id, seq)`.
IDEMPOTENCY_INDEX: Final = "chat_user_client_message_id"

Database = AsyncDatabase[dict[str, Any]]


async def _v1_initial(db: Database) -> None:
    messages = db[MESSAGES]
    await messages.create_indexes(
        [
            # History order and recovery (`seq <`/`seq >` ranges, walked either way); unique,
            # so two writers can never store the same seq in a chat.
            IndexModel([("chat_id", ASCENDING), ("seq", ASCENDING)], name="chat_seq", unique=True),
            IndexModel(
                [("chat_id", ASCENDING), ("user_id", ASCENDING), ("client_message_id", ASCENDING)],
                name=IDEMPOTENCY_INDEX,
                unique=True,
                partialFilterExpression={"client_message_id": {"$type": "string"}},
            ),
        ]
    )
    await db[CHAT_MEMBERS].create_index(
        [("chat_id", ASCENDING), ("user_id", ASCENDING)], name="chat_user", unique=True
    )
    await db[MESSAGE_READS].create_index(
        [("chat_id", ASCENDING), ("user_id", ASCENDING), ("message_id", ASCENDING)],
        name="chat_reader_message",
        unique=True,
    )
    # `chats`, `users` and `schema` need only `_id`. The two collections a transaction writes
    # exist before the first one runs (MongoDB < 4.4 cannot create one inside it): `messages`
    # through its indexes above, `chats` through `create_chat`, which is never transactional.


# (version, what it does, step). Append only; never edit a released step.
MIGRATIONS: Final[tuple[tuple[int, str, Callable[[Database], Awaitable[None]]], ...]] = (
    (1, "collections and indexes", _v1_initial),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1][0]


async def apply_migrations(db: Database) -> int:
    """Run the steps newer than the database's version; return the version now in force.

    Costs one read, the steps' index builds (no-ops when present) and one write. A database
    migrated by a newer release keeps its higher version, which is returned as is.
    """
    found = await db[SCHEMA].find_one({"_id": "version"})
    current = int(found["version"]) if found is not None else 0
    for version, _, step in MIGRATIONS:
        if version > current:
            await step(db)
    if current < SCHEMA_VERSION:
        await db[SCHEMA].update_one(
            {"_id": "version"}, {"$max": {"version": SCHEMA_VERSION}}, upsert=True
        )
    return max(current, SCHEMA_VERSION)
