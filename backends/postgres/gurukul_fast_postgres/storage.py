"""`PostgresStorage`: the `Storage` protocol on PostgreSQL through an asyncpg pool.

Theory of operation: every call borrows a pooled connection for one statement (asyncpg
prepares and caches it per connection; only `migrate` runs a transaction of several), so no
call holds a connection across an await of the caller. `append_messages` is one call of
the `gf_append_messages` function (see `schema.py`): the whole batch in one round trip and
one transaction.

Errors: every driver or socket error is re-raised as `StorageUnavailable` with a one-line
reason; asyncpg closes connections that broke and the pool replaces them on the next
acquire, so after a server restart the same instance works again without being recreated.

On this backend's connections `timestamptz` travels as int milliseconds since the epoch
(the contract's unit) and `jsonb` as Python objects; see `_init_connection`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec

from gurukul_fast.storage.base import (
    ChatRecord,
    NewMessage,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    chat_from_columns,
)
from gurukul_fast_postgres.schema import UNKNOWN_CHAT_SQLSTATE, apply_migrations

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from asyncpg.pool import PoolConnectionProxy

    from gurukul_fast.storage.loader import StorageOptions

__all__ = ["PostgresStorage"]

_T = TypeVar("_T")

# Migrations may wait for another server's migration lock and may rewrite tables later on;
# they get a longer budget per statement than ordinary calls.
MIGRATION_TIMEOUT_S: Final = 300.0

# 2000-01-01T00:00:00Z, PostgreSQL's timestamp origin, in Unix milliseconds.
_PG_EPOCH_MS: Final = 946_684_800_000

# Exceptions of the driver and the socket; all of them mean "storage unavailable" to callers.
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)

_SCHEMES: Final = ("postgresql", "postgres")

_MESSAGE_COLUMNS: Final = (
    'id, chat_id, seq, user_id, agent_id, content, role, "timestamp", metadata, client_message_id'
)
_CHAT_COLUMNS: Final = (
    "id, owner_id, title, agent_id, message_count, last_message, last_seq, created_at, updated_at"
)

_APPEND = """
SELECT * FROM gf_append_messages($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::timestamptz[], $8::jsonb[], $9::text[])
"""
_GET_CHAT = f"SELECT {_CHAT_COLUMNS} FROM chats WHERE id = $1"
_CREATE_CHAT = f"""
WITH created AS (
    INSERT INTO chats (id, owner_id, title, agent_id, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $5)
    ON CONFLICT (id) DO NOTHING
    RETURNING {_CHAT_COLUMNS}
), owner_member AS (
    INSERT INTO chat_members (chat_id, user_id) SELECT id, owner_id FROM created
)
SELECT * FROM created
"""
_ADD_MEMBER = """
INSERT INTO chat_members (chat_id, user_id)
SELECT id, $2 FROM chats WHERE id = $1
ON CONFLICT DO NOTHING
"""
_IS_MEMBER = """
SELECT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = $1 AND user_id = $2)
    OR EXISTS (SELECT 1 FROM chats WHERE id = $1 AND owner_id = $2)
"""
_LIST_MEMBERS = "SELECT user_id FROM chat_members WHERE chat_id = $1"
_FIND_BY_CLIENT_ID = f"""
SELECT {_MESSAGE_COLUMNS} FROM messages
WHERE chat_id = $1 AND user_id = $2 AND client_message_id = $3
"""
_LATEST = f"""
SELECT * FROM (
    SELECT {_MESSAGE_COLUMNS} FROM messages
    WHERE chat_id = $1 AND seq < $3
    ORDER BY seq DESC
    LIMIT $2
) newest ORDER BY seq
"""
_AFTER = f"""
SELECT {_MESSAGE_COLUMNS} FROM messages
WHERE chat_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""
_GET_MESSAGE = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND chat_id = $2"
# Rows to flag are locked in id order so two readers marking the same messages cannot
# deadlock; rows already flagged are not rewritten. The SPEC's jsonb_set sets the flag.
_MARK_READ = """
WITH found AS (
    SELECT id FROM messages WHERE chat_id = $1 AND id = ANY ($3::text[])
), to_flag AS (
    SELECT id FROM messages
    WHERE chat_id = $1 AND id = ANY ($3::text[]) AND metadata -> 'read' IS DISTINCT FROM 'true'
    ORDER BY id
    FOR NO KEY UPDATE
), flagged AS (
    UPDATE messages m SET metadata = jsonb_set(m.metadata, '{read}', 'true')
    FROM to_flag t WHERE m.id = t.id
), recorded AS (
    INSERT INTO message_reads (message_id, user_id, chat_id, read_at)
    SELECT id, $2, $1, $4 FROM found
    ON CONFLICT DO NOTHING
)
SELECT id FROM found
"""
_READ_IDS = "SELECT message_id FROM message_reads WHERE chat_id = $1 AND user_id = $2"
_UNREAD_COUNT = """
SELECT count(*) FROM messages m
WHERE m.chat_id = $1 AND m.user_id <> $2
  AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = m.id AND r.user_id = $2)
"""
_SET_ONLINE = """
INSERT INTO users (id, is_online, last_active) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET is_online = excluded.is_online, last_active = excluded.last_active
"""
_GET_USER = "SELECT is_online, last_active FROM users WHERE id = $1"


class PostgresStorage:
    """The `Storage` protocol on PostgreSQL (`postgresql://…` or `postgres://…` URLs).

    Construct with `PostgresStorage(url, options)`, then `await open()` (connects, migrates).
    The pool keeps `options.pool_min_size` to `options.pool_max_size` connections; every
    statement, and every wait for a free connection, is bounded by `command_timeout_s`.
    """

    def __init__(self, url: str, options: StorageOptions) -> None:
        self._dsn = _driver_dsn(url)
        self._url = _mask_password(url)
        self._options = options
        self._timeout = options.command_timeout_s
        self._pool: asyncpg.Pool | None = None

    @property
    def url(self) -> str:
        """The URL this backend was created with, password masked."""
        return self._url

    async def open(self) -> None:
        """Connect the pool and apply pending migrations; no-op if already open.

        Raises `StorageUnavailable` within about `command_timeout_s` if the server cannot be
        reached or refuses the login.
        """
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._options.pool_min_size,
                max_size=self._options.pool_max_size,
                command_timeout=self._timeout,
                timeout=self._timeout,  # connecting, per connection
                init=_init_connection,
            )
        except _DRIVER_ERRORS as exc:
            raise _unavailable(f"cannot connect to {self._url}", exc) from None
        self._pool = pool
        try:
            await self.migrate()
        except BaseException:
            self._pool = None
            pool.terminate()
            raise

    async def close(self) -> None:
        """Close the pool, waiting up to `command_timeout_s` for borrowed connections."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._timeout)
        except _DRIVER_ERRORS:
            pool.terminate()  # a connection is stuck or broken: drop them all without goodbye
        except asyncio.CancelledError:
            pool.terminate()
            raise

    async def migrate(self) -> int:
        """Apply pending migrations (see `schema.py`); return the schema version in force."""

        async def run(connection: PoolConnectionProxy) -> int:
            return await apply_migrations(connection, MIGRATION_TIMEOUT_S)

        return await self._with_connection(run, "migrate", MIGRATION_TIMEOUT_S)

    async def ping(self) -> bool:
        """Return True if the server answers `SELECT 1` within `command_timeout_s`."""
        try:
            answer = await self._with_connection(lambda c: c.fetchval("SELECT 1"), "ping")
        except StorageUnavailable:
            return False
        return bool(answer == 1)

    # chats and membership

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        """Return the chat's summary, or None. One indexed lookup."""
        row = await self._fetchrow(_GET_CHAT, chat_id)
        return chat_from_columns(row) if row is not None else None

    async def create_chat(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> ChatRecord:
        """Create the chat (owner made a member) unless it exists; return it as stored.

        One statement; a second read only when the chat existed or another server won the
        race (the first statement's snapshot cannot see the winner's row).
        """
        row = await self._fetchrow(_CREATE_CHAT, chat_id, owner_id, title, agent_id, now_ms)
        if row is None:
            row = await self._fetchrow(_GET_CHAT, chat_id)
        if row is None:  # only if someone deleted it in between
            raise StorageUnavailable(f"chat {chat_id!r} vanished while being created")
        return chat_from_columns(row)

    async def add_member(self, chat_id: str, user_id: str) -> None:
        """Add `user_id` to the chat's members; unknown chats are ignored."""
        await self._execute(_ADD_MEMBER, chat_id, user_id)

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        """Return True if the user owns or is a member of the chat."""
        return bool(await self._fetchval(_IS_MEMBER, chat_id, user_id))

    async def list_members(self, chat_id: str) -> list[str]:
        """Return the chat's member ids, sorted by code point (as Python sorts)."""
        rows = await self._fetch(_LIST_MEMBERS, chat_id)
        return sorted(row[0] for row in rows)

    # messages

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store the batch in one round trip and one transaction; see `Storage`.

        Raises `StorageError` if a chat of the batch does not exist, `StorageUnavailable`
        for everything else; in both cases nothing of the batch is stored.
        """
        if not batch:
            return []
        columns = (
            [m.id for m in batch],
            [m.chat_id for m in batch],
            [m.user_id for m in batch],
            [m.agent_id for m in batch],
            [m.content for m in batch],
            [m.role for m in batch],
            [m.created_at_ms for m in batch],
            [m.metadata for m in batch],
            [m.client_message_id for m in batch],
        )

        async def run(connection: PoolConnectionProxy) -> list[asyncpg.Record]:
            try:
                return await connection.fetch(_APPEND, *columns)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate == UNKNOWN_CHAT_SQLSTATE:
                    raise StorageError(exc.message) from None
                raise

        rows = await self._with_connection(run, "append")
        stored: list[StoredMessage] = []
        for message, row in zip(batch, rows, strict=True):
            ord_, first_ord, seq = row[0], row[1], row[2]
            if row[3] is not None:  # stored by an earlier batch
                stored.append(
                    StoredMessage(
                        id=row[3],
                        chat_id=message.chat_id,
                        seq=seq,
                        user_id=row[4],
                        agent_id=row[5],
                        content=row[6],
                        role=row[7],
                        created_at_ms=row[8],
                        metadata=row[9],
                        client_message_id=row[10],
                        duplicate=True,
                    )
                )
                continue
            first = batch[first_ord - 1]
            stored.append(
                StoredMessage(
                    id=first.id,
                    chat_id=first.chat_id,
                    seq=seq,
                    user_id=first.user_id,
                    agent_id=first.agent_id,
                    content=first.content,
                    role=first.role,
                    created_at_ms=first.created_at_ms,
                    client_message_id=first.client_message_id,
                    metadata=first.metadata,
                    duplicate=first_ord != ord_,
                )
            )
        return stored

    async def find_by_client_id(
        self, chat_id: str, user_id: str, client_message_id: str
    ) -> StoredMessage | None:
        """Return the message stored under this idempotency key, or None. One index lookup."""
        row = await self._fetchrow(_FIND_BY_CLIENT_ID, chat_id, user_id, client_message_id)
        return _stored_message(row) if row is not None else None

    async def latest_messages(
        self, chat_id: str, limit: int, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """Return up to `limit` messages before `before_seq` (or the newest), oldest first."""
        if limit <= 0:
            return []
        bound = before_seq if before_seq is not None else 2**63 - 1
        return [_stored_message(row) for row in await self._fetch(_LATEST, chat_id, limit, bound)]

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > `after_seq`, oldest first."""
        if limit <= 0:
            return []
        return [
            _stored_message(row) for row in await self._fetch(_AFTER, chat_id, after_seq, limit)
        ]

    async def get_message(self, chat_id: str, message_id: str) -> StoredMessage | None:
        """Return the message with this server id in this chat, or None."""
        row = await self._fetchrow(_GET_MESSAGE, message_id, chat_id)
        return _stored_message(row) if row is not None else None

    # read state

    async def mark_read(
        self, chat_id: str, user_id: str, message_ids: Sequence[str], now_ms: int
    ) -> list[str]:
        """Record reads and set `metadata.read`; return the known ids, deduplicated, in order.

        One statement; a message already flagged read is not rewritten.
        """
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return []
        found = {row[0] for row in await self._fetch(_MARK_READ, chat_id, user_id, wanted, now_ms)}
        return [message_id for message_id in wanted if message_id in found]

    async def read_message_ids(self, chat_id: str, user_id: str) -> set[str]:
        """Return the ids of this chat's messages the user has read."""
        return {row[0] for row in await self._fetch(_READ_IDS, chat_id, user_id)}

    async def unread_count(self, chat_id: str, user_id: str) -> int:
        """Count the chat's messages from others that the user has not read.

        Scans the chat's messages: O(messages in the chat).
        """
        return int(await self._fetchval(_UNREAD_COUNT, chat_id, user_id))

    # presence

    async def set_online(self, user_id: str, online: bool, now_ms: int) -> None:
        """Record the user's status and last activity time (creates the user row)."""
        await self._execute(_SET_ONLINE, user_id, online, now_ms)

    async def get_user(self, user_id: str) -> tuple[bool, int] | None:
        """Return (is_online, last_active_ms), or None if never seen."""
        row = await self._fetchrow(_GET_USER, user_id)
        return (bool(row[0]), int(row[1])) if row is not None else None

    # one statement on a pooled connection, driver errors translated

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await self._with_connection(lambda c: c.fetch(query, *args), "query")

    async def _fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        return await self._with_connection(lambda c: c.fetchrow(query, *args), "query")

    async def _fetchval(self, query: str, *args: object) -> Any:
        return await self._with_connection(lambda c: c.fetchval(query, *args), "query")

    async def _execute(self, query: str, *args: object) -> None:
        await self._with_connection(lambda c: c.execute(query, *args), "query")

    async def _with_connection(
        self,
        call: Callable[[PoolConnectionProxy], Awaitable[_T]],
        what: str,
        timeout_s: float | None = None,
    ) -> _T:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable(f"{self._url} is not open")
        try:
            async with pool.acquire(timeout=timeout_s or self._timeout) as connection:
                return await call(connection)
        except _DRIVER_ERRORS as exc:
            raise _unavailable(f"{what} failed on {self._url}", exc) from exc


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Set this backend's codecs on a new pooled connection (the pool's `init`)."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_json,
        decoder=msgspec.json.decode,
        format="text",
    )
    # Tuple format: microseconds since 2000-01-01 UTC, exact both ways; no datetime objects.
    await connection.set_type_codec(
        "timestamptz",
        schema="pg_catalog",
        encoder=_encode_timestamp_ms,
        decoder=_decode_timestamp_ms,
        format="tuple",
    )


def _encode_json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _encode_timestamp_ms(unix_ms: int) -> tuple[int]:
    return ((unix_ms - _PG_EPOCH_MS) * 1000,)


def _decode_timestamp_ms(value: tuple[int]) -> int:
    return value[0] // 1000 + _PG_EPOCH_MS


def _stored_message(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        chat_id=row[1],
        seq=row[2],
        user_id=row[3],
        agent_id=row[4],
        content=row[5],
        role=row[6],
        created_at_ms=row[7],
        metadata=row[8],
        client_message_id=row[9],
    )


def _unavailable(context: str, exc: BaseException) -> StorageUnavailable:
    """Build the one-line error callers see: what failed and the driver's short reason."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageUnavailable(f"{context}: {reason}")


def _driver_dsn(url: str) -> str:
    """Return `url` as asyncpg wants it: `postgresql://`, any `+driver` suffix dropped."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower().split("+", 1)[0] not in _SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {_mask_password(url)!r}")
    return f"postgresql://{rest}"


def _mask_password(url: str) -> str:
    """Return `url` with the password (in the authority or the query) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostinfo}" if colon else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
