"""Embedded storage backend (`sqlite:///path.db`), the default and the reference backend.

Theory of operation: sqlite3 calls block, so none runs on the event loop. All writes go
through one connection owned by one thread (a single-thread executor): SQLite allows one
writer at a time anyway, and a single writer thread turns contention into a queue instead
of busy-waiting on locks. Reads use their own connections on a small reader pool; in WAL
mode readers see the last committed state and never block the writer.

Durability: `journal_mode=WAL` with `synchronous=FULL` fsyncs the WAL on every commit, so a
batch acknowledged by `append_messages` survives `kill -9` and power loss. Each batch is one
`BEGIN IMMEDIATE … COMMIT`, so the group committer pays one fsync per batch, not per message.

URLs: `sqlite:///relative/path.db` (relative to the working directory), `sqlite:////abs.db`
(absolute), `sqlite:///:memory:` (private in-memory database; reads then share the writer
connection, since another connection would see a different database).

Every `sqlite3.Error` becomes `StorageUnavailable` (disk I/O errors, a full disk, the database
locked by another process past `busy_timeout`); connections are reopened on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gurukul_fast.storage.base import (
    ChatRecord,
    NewMessage,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    chat_from_columns,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gurukul_fast.storage.loader import StorageOptions

__all__ = ["MIGRATIONS", "SqliteStorage", "parse_sqlite_url"]

_T = TypeVar("_T")

# Ordered schema steps; step i (0-based) brings the database to version i + 1. Append new
# steps, never edit a released one. Each step is a tuple of statements because
# `executescript` would commit the surrounding transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE chats (
            id            TEXT PRIMARY KEY,
            owner_id      TEXT NOT NULL,
            title         TEXT NOT NULL,
            agent_id      TEXT,
            message_count INTEGER NOT NULL DEFAULT 0,
            last_message  TEXT,
            last_seq      INTEGER NOT NULL DEFAULT 0,
            created_at    INTEGER NOT NULL,  -- ms since the epoch, UTC
            updated_at    INTEGER NOT NULL   -- ms since the epoch, UTC
        )""",
        """CREATE TABLE chat_members (
            chat_id   TEXT NOT NULL,
            user_id   TEXT NOT NULL,
            PRIMARY KEY (chat_id, user_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE messages (
            id                TEXT PRIMARY KEY,
            chat_id           TEXT NOT NULL,
            seq               INTEGER NOT NULL,
            user_id           TEXT NOT NULL,
            agent_id          TEXT,
            content           TEXT NOT NULL,
            role              TEXT NOT NULL,
            timestamp         INTEGER NOT NULL,  -- ms since the epoch, UTC
            metadata          TEXT NOT NULL DEFAULT '{}',  -- JSON object
            client_message_id TEXT,
            UNIQUE (chat_id, seq)
        )""",
        # The idempotency key: one stored message per (chat, sender, client temp id).
        """CREATE UNIQUE INDEX messages_client_id
            ON messages (chat_id, user_id, client_message_id)
            WHERE client_message_id IS NOT NULL""",
        """CREATE TABLE message_reads (
            chat_id    TEXT NOT NULL,
            message_id TEXT NOT NULL,
            user_id    TEXT NOT NULL,
            read_at    INTEGER NOT NULL,  -- ms since the epoch, UTC
            PRIMARY KEY (chat_id, user_id, message_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE users (
            id          TEXT PRIMARY KEY,
            last_active INTEGER NOT NULL,  -- ms since the epoch, UTC
            is_online   INTEGER NOT NULL DEFAULT 0
        )""",
    ),
)

_DEFAULT_READERS = 4  # reader threads (and connections); reads are short, a few suffice
_MAX_SQL_VARIABLES = 500  # ids per `IN (…)`; well under SQLite's compiled-in limit

_MESSAGE_COLUMNS = (
    "id, chat_id, seq, user_id, agent_id, content, role, timestamp, client_message_id, metadata"
)
_CHAT_COLUMNS = (
    "id, owner_id, title, agent_id, message_count, last_message, last_seq, created_at, updated_at"
)

_encode_json = msgspec.json.Encoder().encode
_decode_metadata = msgspec.json.Decoder(dict[str, Any]).decode


def parse_sqlite_url(url: str) -> str:
    """Return the database path of a `sqlite:///…` URL (`:memory:` stays as is).

    `sqlite:///data/x.db` → `data/x.db`; `sqlite:////var/x.db` → `/var/x.db`.
    Raises ValueError for anything else (a host part, no path).
    """
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise ValueError(f"SQLite URL must look like sqlite:///path.db, got {url!r}")
    path = url[len(prefix) :].split("?", 1)[0]
    if not path:
        raise ValueError(f"SQLite URL has no database path: {url!r}")
    return path


def _message_from_row(row: tuple[Any, ...], *, duplicate: bool = False) -> StoredMessage:
    return StoredMessage(
        id=row[0],
        chat_id=row[1],
        seq=row[2],
        user_id=row[3],
        agent_id=row[4],
        content=row[5],
        role=row[6],
        created_at_ms=row[7],
        client_message_id=row[8],
        metadata=_decode_metadata(row[9]),
        duplicate=duplicate,
    )


class _ChatState:
    """A chat's summary while a batch is being written (loaded once per chat per batch)."""

    __slots__ = ("changed", "last_message", "last_seq", "message_count", "updated_at_ms")

    def __init__(self, message_count: int, last_seq: int, updated_at_ms: int) -> None:
        self.message_count = message_count
        self.last_seq = last_seq
        self.last_message: str | None = None
        self.updated_at_ms = updated_at_ms
        self.changed = False


class SqliteStorage:
    """The `Storage` protocol on a local SQLite file (stdlib sqlite3, WAL, one writer thread).

    Create with the URL, `await open()` inside the loop, `await close()` at shutdown. Each
    call costs one hop to a worker thread plus the query; a write costs one fsync.
    """

    def __init__(self, url: str, options: StorageOptions) -> None:
        self._url = url
        self._path = parse_sqlite_url(url)
        self._in_memory = self._path == ":memory:"
        self._busy_timeout_ms = max(1, int(options.command_timeout_s * 1000))
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        # Each worker thread keeps its own connection here; sqlite3 connections must not be
        # shared between threads while in use.
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The URL this backend was created with (SQLite URLs carry no password)."""
        return self._url

    async def open(self) -> None:
        """Start the worker threads, create the file's directory, and apply migrations."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            # An in-memory database exists only on its one connection: read through it too.
            self._readers = (
                self._writer
                if self._in_memory
                else ThreadPoolExecutor(_DEFAULT_READERS, thread_name_prefix="sqlite-reader")
            )
        await self.migrate()

    async def close(self) -> None:
        """Finish queued work, then close every connection and stop the threads."""
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        if writer is None:
            return
        # Joining threads blocks, so do it off the loop.
        await asyncio.to_thread(self._shutdown, writer, readers)

    def _shutdown(self, writer: ThreadPoolExecutor, readers: ThreadPoolExecutor | None) -> None:
        writer.shutdown(wait=True)
        if readers is not None and readers is not writer:
            readers.shutdown(wait=True)
        # No worker thread runs any more, so closing their connections from here is safe.
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    async def migrate(self) -> int:
        """Apply the pending `MIGRATIONS` in one transaction; return the schema version.

        `BEGIN IMMEDIATE` takes the write lock first, so servers migrating at once queue up
        and the later ones find nothing left to do.
        """
        return await self._write(self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> int:
        with _Transaction(db):
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
            )
            row = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0])
            if current > len(MIGRATIONS):
                raise StorageError(
                    f"database schema version {current} is newer than this server "
                    f"supports ({len(MIGRATIONS)}); upgrade gurukul-fast"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, int(time.time() * 1000)),
                )
        return len(MIGRATIONS)

    async def ping(self) -> bool:
        """Return True if the database file answers a query now (a reader-thread hop)."""
        try:
            # Read a table, not `SELECT 1`: that answers even when the file is unreadable.
            return await self._read(
                lambda db: db.execute("SELECT count(*) FROM schema_version").fetchone() is not None
            )
        except StorageUnavailable:
            return False

    # chats and membership

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        """Return the chat's summary, or None. One indexed lookup."""

        def query(db: sqlite3.Connection) -> ChatRecord | None:
            row = db.execute(f"SELECT {_CHAT_COLUMNS} FROM chats WHERE id = ?", (chat_id,))
            found = row.fetchone()
            return chat_from_columns(found) if found is not None else None

        return await self._read(query)

    async def create_chat(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> ChatRecord:
        """Create the chat and its owner's membership unless it exists; return it as stored."""

        def write(db: sqlite3.Connection) -> ChatRecord:
            with _Transaction(db):
                inserted = db.execute(
                    "INSERT INTO chats (id, owner_id, title, agent_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (chat_id, owner_id, title, agent_id, now_ms, now_ms),
                ).rowcount
                if inserted:
                    db.execute(
                        "INSERT OR IGNORE INTO chat_members (chat_id, user_id) VALUES (?, ?)",
                        (chat_id, owner_id),
                    )
                row = db.execute(
                    f"SELECT {_CHAT_COLUMNS} FROM chats WHERE id = ?", (chat_id,)
                ).fetchone()
            return chat_from_columns(row)

        return await self._write(write)

    async def add_member(self, chat_id: str, user_id: str) -> None:
        """Add `user_id` to the chat's members; a no-op if already one or the chat is unknown."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR IGNORE INTO chat_members (chat_id, user_id)"
                " SELECT ?, ? WHERE EXISTS (SELECT 1 FROM chats WHERE id = ?)",
                (chat_id, user_id, chat_id),
            )

        await self._write(write)

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        """Return True if the user owns or is a member of the chat. Two indexed lookups."""

        def query(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT EXISTS (SELECT 1 FROM chat_members WHERE chat_id = ? AND user_id = ?)"
                " OR EXISTS (SELECT 1 FROM chats WHERE id = ? AND owner_id = ?)",
                (chat_id, user_id, chat_id, user_id),
            ).fetchone()
            return bool(row[0])

        return await self._read(query)

    async def list_members(self, chat_id: str) -> list[str]:
        """Return the chat's member ids, sorted (an index range scan)."""

        def query(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT user_id FROM chat_members WHERE chat_id = ? ORDER BY user_id", (chat_id,)
            )
            return [row[0] for row in rows]

        return await self._read(query)

    # messages

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store the batch in one transaction (one fsync); return one record per input."""
        if not batch:
            return []
        return await self._write(lambda db: self._append(db, batch))

    def _append(self, db: sqlite3.Connection, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        chats: dict[str, _ChatState] = {}
        # Keys stored by this batch, so a repeat later in the same batch is a duplicate too.
        batch_keys: dict[tuple[str, str, str], StoredMessage] = {}
        stored: list[StoredMessage] = []
        rows: list[tuple[object, ...]] = []
        with _Transaction(db):
            for message in batch:
                key = None
                if message.client_message_id is not None:
                    key = (message.chat_id, message.user_id, message.client_message_id)
                    earlier = batch_keys.get(key)
                    if earlier is not None:
                        stored.append(msgspec.structs.replace(earlier, duplicate=True))
                        continue
                    row = db.execute(
                        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                        " WHERE chat_id = ? AND user_id = ? AND client_message_id = ?",
                        key,
                    ).fetchone()
                    if row is not None:
                        stored.append(_message_from_row(row, duplicate=True))
                        continue
                chat = chats.get(message.chat_id)
                if chat is None:
                    found = db.execute(
                        "SELECT message_count, last_seq, updated_at FROM chats WHERE id = ?",
                        (message.chat_id,),
                    ).fetchone()
                    if found is None:
                        raise StorageError(f"append to unknown chat {message.chat_id!r}")
                    chat = chats[message.chat_id] = _ChatState(*found)
                chat.last_seq += 1
                chat.message_count += 1
                chat.last_message = message.content
                # Clocks of different servers may disagree; keep updated_at from going back.
                chat.updated_at_ms = max(chat.updated_at_ms, message.created_at_ms)
                chat.changed = True
                record = StoredMessage(
                    id=message.id,
                    chat_id=message.chat_id,
                    seq=chat.last_seq,
                    user_id=message.user_id,
                    agent_id=message.agent_id,
                    content=message.content,
                    role=message.role,
                    created_at_ms=message.created_at_ms,
                    client_message_id=message.client_message_id,
                    metadata=message.metadata,
                )
                rows.append(
                    (
                        record.id,
                        record.chat_id,
                        record.seq,
                        record.user_id,
                        record.agent_id,
                        record.content,
                        record.role,
                        record.created_at_ms,
                        record.client_message_id,
                        _encode_json(record.metadata).decode(),
                    )
                )
                if key is not None:
                    batch_keys[key] = record
                stored.append(record)
            if rows:
                db.executemany(
                    f"INSERT INTO messages ({_MESSAGE_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.executemany(
                    "UPDATE chats SET message_count = ?, last_message = ?, last_seq = ?,"
                    " updated_at = ? WHERE id = ?",
                    [
                        (c.message_count, c.last_message, c.last_seq, c.updated_at_ms, chat_id)
                        for chat_id, c in chats.items()
                        if c.changed
                    ],
                )
        return stored

    async def find_by_client_id(
        self, chat_id: str, user_id: str, client_message_id: str
    ) -> StoredMessage | None:
        """Return the message stored under this idempotency key, or None (index lookup)."""

        def query(db: sqlite3.Connection) -> StoredMessage | None:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                " WHERE chat_id = ? AND user_id = ? AND client_message_id = ?",
                (chat_id, user_id, client_message_id),
            ).fetchone()
            return _message_from_row(row) if row is not None else None

        return await self._read(query)

    async def latest_messages(
        self, chat_id: str, limit: int, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """Return up to `limit` messages before `before_seq` (or the newest), oldest first."""
        if limit <= 0:
            return []
        # Newest-first over the (chat_id, seq) index, then reversed: O(limit), not O(chat).
        if before_seq is None:
            sql = (
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ?"
                " ORDER BY seq DESC LIMIT ?"
            )
            params: tuple[object, ...] = (chat_id, limit)
        else:
            sql = (
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?"
            )
            params = (chat_id, before_seq, limit)

        def query(db: sqlite3.Connection) -> list[StoredMessage]:
            rows = db.execute(sql, params).fetchall()
            return [_message_from_row(row) for row in reversed(rows)]

        return await self._read(query)

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > `after_seq`, oldest first (index range)."""
        if limit <= 0:
            return []

        def query(db: sqlite3.Connection) -> list[StoredMessage]:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE chat_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (chat_id, after_seq, limit),
            )
            return [_message_from_row(row) for row in rows]

        return await self._read(query)

    async def get_message(self, chat_id: str, message_id: str) -> StoredMessage | None:
        """Return the message with this server id in this chat, or None (index lookup)."""

        def query(db: sqlite3.Connection) -> StoredMessage | None:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ? AND chat_id = ?",
                (message_id, chat_id),
            ).fetchone()
            return _message_from_row(row) if row is not None else None

        return await self._read(query)

    # read state

    async def mark_read(
        self, chat_id: str, user_id: str, message_ids: Sequence[str], now_ms: int
    ) -> list[str]:
        """Record reads and set `metadata.read` (SPEC); return the known ids, in input order.

        One transaction; a repeat keeps the first `read_at`.
        """
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return []

        def write(db: sqlite3.Connection) -> list[str]:
            with _Transaction(db):
                existing: set[str] = set()
                for start in range(0, len(wanted), _MAX_SQL_VARIABLES):
                    chunk = wanted[start : start + _MAX_SQL_VARIABLES]
                    marks = ", ".join("?" * len(chunk))
                    rows = db.execute(
                        f"SELECT id FROM messages WHERE chat_id = ? AND id IN ({marks})",
                        (chat_id, *chunk),
                    )
                    existing.update(row[0] for row in rows)
                found = [message_id for message_id in wanted if message_id in existing]
                db.executemany(
                    "INSERT OR IGNORE INTO message_reads (chat_id, message_id, user_id, read_at)"
                    " VALUES (?, ?, ?, ?)",
                    [(chat_id, message_id, user_id, now_ms) for message_id in found],
                )
                # The SPEC's read flag; skip rows already flagged to avoid rewriting them.
                db.executemany(
                    "UPDATE messages SET metadata = json_set(metadata, '$.read', json('true'))"
                    " WHERE id = ? AND chat_id = ? AND json_extract(metadata, '$.read') IS NOT 1",
                    [(message_id, chat_id) for message_id in found],
                )
            return found

        return await self._write(write)

    async def read_message_ids(self, chat_id: str, user_id: str) -> set[str]:
        """Return the ids of this chat's messages the user has read (index range scan)."""

        def query(db: sqlite3.Connection) -> set[str]:
            rows = db.execute(
                "SELECT message_id FROM message_reads WHERE chat_id = ? AND user_id = ?",
                (chat_id, user_id),
            )
            return {row[0] for row in rows}

        return await self._read(query)

    async def unread_count(self, chat_id: str, user_id: str) -> int:
        """Count the chat's messages from others that the user has not read. O(chat)."""

        def query(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT count(*) FROM messages AS m WHERE m.chat_id = ? AND m.user_id != ?"
                " AND NOT EXISTS (SELECT 1 FROM message_reads AS r"
                "  WHERE r.chat_id = m.chat_id AND r.user_id = ? AND r.message_id = m.id)",
                (chat_id, user_id, user_id),
            ).fetchone()
            return int(row[0])

        return await self._read(query)

    # presence

    async def set_online(self, user_id: str, online: bool, now_ms: int) -> None:
        """Upsert the user's status and last activity time (one small write)."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO users (id, last_active, is_online) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET"
                " last_active = excluded.last_active, is_online = excluded.is_online",
                (user_id, now_ms, int(online)),
            )

        await self._write(write)

    async def get_user(self, user_id: str) -> tuple[bool, int] | None:
        """Return (is_online, last_active_ms), or None if never seen (index lookup)."""

        def query(db: sqlite3.Connection) -> tuple[bool, int] | None:
            row = db.execute(
                "SELECT is_online, last_active FROM users WHERE id = ?", (user_id,)
            ).fetchone()
            return (bool(row[0]), int(row[1])) if row is not None else None

        return await self._read(query)

    # threads and connections

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._submit(self._writer, work, writer=True)

    async def _read(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._submit(self._readers, work, writer=self._in_memory)

    async def _submit(
        self,
        executor: ThreadPoolExecutor | None,
        work: Callable[[sqlite3.Connection], _T],
        *,
        writer: bool,
    ) -> _T:
        if executor is None:
            raise StorageUnavailable("sqlite storage is not open")
        try:
            future = asyncio.get_running_loop().run_in_executor(executor, self._run, work, writer)
        except RuntimeError as exc:
            # The executor was shut down by a concurrent close().
            raise StorageUnavailable("sqlite storage is closed") from exc
        return await future

    def _run(self, work: Callable[[sqlite3.Connection], _T], writer: bool) -> _T:
        """Run `work` on this worker thread's connection; map sqlite3 errors (worker thread)."""
        try:
            db: sqlite3.Connection | None = getattr(self._local, "db", None)
            if db is None:
                db = self._connect(writer)
                self._local.db = db
            return work(db)
        except sqlite3.IntegrityError as exc:
            # A constraint the contract should have prevented (e.g. a reused server id); the
            # transaction was rolled back and the connection is fine.
            raise StorageUnavailable(f"sqlite: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            # I/O errors, a full disk, "database is locked" past busy_timeout, a replaced file:
            # start over with a fresh connection on the next call, so service resumes by itself.
            self._drop_connection()
            raise StorageUnavailable(f"sqlite: {type(exc).__name__}: {exc}") from exc

    def _connect(self, writer: bool) -> sqlite3.Connection:
        if writer and not self._in_memory:
            # Create the data directory on first use (e.g. ./gurukul-data/).
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, sqlite3 adds nothing.
        db = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,  # used by one thread; closed by another after it stops
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            if writer:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
            else:
                db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        with self._connections_lock:
            self._connections.append(db)
        return db

    def _drop_connection(self) -> None:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        self._local.db = None
        if db is None:
            return
        with self._connections_lock:
            if db in self._connections:
                self._connections.remove(db)
        with contextlib.suppress(sqlite3.Error):
            db.close()


class _Transaction:
    """`with _Transaction(db):` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any error.

    IMMEDIATE takes the write lock up front, so a transaction never fails half-way through
    for lock contention (it waits up to busy_timeout at BEGIN instead).
    """

    __slots__ = ("_db",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (e.g. disk I/O error) can leave the transaction open.
                self._rollback()
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            # The original error is the one worth reporting, not a failed rollback.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
