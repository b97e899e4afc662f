"""`MongoStorage`: the storage contract on MongoDB through PyMongo's async API.

Theory of operation. One `AsyncMongoClient` per backend (it pools connections and
reconnects by itself when the server comes back). Every driver error becomes
`StorageUnavailable` in one place (`_driver_errors`), and every operation is bounded by
`StorageOptions.command_timeout_s` (the client's `timeoutMS`, which also caps server
selection), so a dead server turns into a 503 within that time, not a hung sender.

A batch of messages (`append_messages`, called by the group committer) costs:

1. one `find` with `$or` over the batch's ids and idempotency keys: earlier copies are
   answered with `duplicate=True` and never reserve a seq (check, then reserve);
2. one `find_one_and_update` per chat in the batch: `$inc` of `last_seq` (and
   `message_count`) by the number of new messages reserves their seq range atomically,
   and the same update sets `last_message` and `updated_at_ms`;
3. one `insert_many(ordered=False)` of every new message of every chat.

Where the server supports transactions (replica sets, sharded clusters; probed at `open`)
the three steps run in one transaction, so a batch is all or nothing and seqs have no
gaps: when another server stores the same idempotency key first, the duplicate-key error
aborts the transaction and the retry finds the winner's record. A retry is also safe when a
commit's outcome is unknown, because a message's `_id` is its server id: a stored copy
with our own id is our own earlier commit and is returned as stored.

A standalone `mongod` has no transactions. The same steps then run one by one, with a
logged warning at `open`, and two guarantees weaken: a batch that fails after step 2
leaves its reserved seqs unused (a gap) and its chat counts ahead; a batch that fails
during step 3 may have stored some of its messages although the senders were told it
failed (a client's re-send then gets them back as duplicates). A duplicate-key race in
step 3 is answered with the winner's record and also leaves a gap. Acknowledged messages
are never lost in either mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import msgspec
from bson.errors import BSONError
from pymongo import AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from gurukul_fast.storage.base import (
    ChatRecord,
    NewMessage,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)
from gurukul_fast.storage.loader import StorageOptions
from gurukul_fast_mongodb import schema
from gurukul_fast_mongodb.documents import (
    chat_document,
    chat_record,
    message_document,
    same_message,
    stored_message,
)

__all__ = ["DEFAULT_DATABASE", "MongoStorage"]

logger = logging.getLogger(__name__)

DEFAULT_DATABASE: Final = "gurukul"

Document = dict[str, Any]
Collection = AsyncCollection[Document]

# Transaction retries: jittered exponential backoff from 5 ms up to 200 ms between attempts,
# at most this many attempts, and none started later than command_timeout_s after the first.
_MAX_TRANSACTION_ATTEMPTS: Final = 50
_BACKOFF_FIRST_S: Final = 0.005
_BACKOFF_MAX_S: Final = 0.2

# Clauses of one `$or` lookup (see `_stored_copies`).
_OR_CLAUSES_PER_FIND: Final = 200

_DUPLICATE_KEY: Final = 11000
_WRITE_CONFLICT: Final = 112
_NO_SUCH_TRANSACTION: Final = 251
_ILLEGAL_OPERATION: Final = 20  # standalone mongod: "Transaction numbers are only allowed…"

# A MongoDB database name may not contain these (nor be empty or over 63 bytes).
_BAD_DATABASE_CHARACTERS: Final = frozenset('/\\. "$\x00')


@contextlib.contextmanager
def _driver_errors(action: str) -> Iterator[None]:
    """Turn any driver error raised inside into `StorageUnavailable` (the one place)."""
    try:
        yield
    except (PyMongoError, BSONError) as exc:
        summary = str(exc).split("\n", 1)[0][:200]
        raise StorageUnavailable(f"mongodb {action}: {type(exc).__name__}: {summary}") from exc


def _key(message: NewMessage) -> tuple[str, str, str] | None:
    if message.client_message_id is None:
        return None
    return (message.chat_id, message.user_id, message.client_message_id)


def _document_key(document: Document) -> tuple[str, str, str]:
    return (document["chat_id"], document["user_id"], document["client_message_id"])


def _is_idempotency_violation(error: Document) -> bool:
    """True for a write error on the idempotency index (a key stored meanwhile)."""
    if error.get("code") != _DUPLICATE_KEY:
        return False
    key_pattern = error.get("keyPattern") or {}
    return "client_message_id" in key_pattern or schema.IDEMPOTENCY_INDEX in str(
        error.get("errmsg", "")
    )


def _worth_retrying(exc: PyMongoError) -> bool:
    """Return True if a failed transaction may succeed when run again from the start.

    Re-running is always safe (a failed transaction stored nothing; an unknown commit is
    recognised by message ids), so this only decides whether it is likely to help.
    """
    if exc.has_error_label("TransientTransactionError") or exc.has_error_label(
        "UnknownTransactionCommitResult"
    ):
        return True
    if isinstance(exc, ExecutionTimeout | NetworkTimeout | ServerSelectionTimeoutError):
        return False  # the time budget is spent or the server is gone
    if isinstance(exc, BulkWriteError):
        codes = {error.get("code") for error in exc.details.get("writeErrors", [])}
        return codes == {_DUPLICATE_KEY}
    if isinstance(exc, OperationFailure):
        if exc.code in (_DUPLICATE_KEY, _WRITE_CONFLICT, _NO_SUCH_TRANSACTION):
            return True
        # Servers that speak the protocol without MongoDB's error codes and labels (mongoeco
        # reports "Write conflict during transaction commit" and "…has an active transaction
        # bound to another session" with no code) still deserve the retry MongoDB would label.
        message = str(exc).lower()
        return not exc.code and ("conflict" in message or "transaction" in message)
    return False


def _discard_server_session(session: AsyncClientSession) -> None:
    """Keep the server session of a failed transaction out of the driver's session pool.

    Why: a server may still hold that session's transaction open after a failed commit
    (mongoeco 4.11 does, and then runs every later command of that session id inside the
    dead transaction, so even plain writes would never be committed). The driver discards
    sessions marked dirty, as it does itself after network errors; a new one costs nothing.
    The attribute is private, hence the defensive lookups.
    """
    mark_dirty = getattr(getattr(session, "_server_session", None), "mark_dirty", None)
    if callable(mark_dirty):
        mark_dirty()


class _Plan(msgspec.Struct):
    """What `append_messages` does with each input, before anything is written."""

    results: list[StoredMessage | None]  # set: answered from what is stored
    copies: list[tuple[int, int]]  # (input, earlier input with the same idempotency key)
    new_by_chat: dict[str, list[int]]  # chat id -> inputs to store, in input order


def _plan(batch: Sequence[NewMessage], existing: list[Document]) -> _Plan:
    by_id = {document["_id"]: document for document in existing}
    by_key = {
        _document_key(document): document
        for document in existing
        if isinstance(document.get("client_message_id"), str)
    }
    plan = _Plan(results=[None] * len(batch), copies=[], new_by_chat={})
    first_with_key: dict[tuple[str, str, str], int] = {}
    for index, message in enumerate(batch):
        key = _key(message)
        own = by_id.get(message.id)
        if own is not None:
            if not same_message(own, message):
                raise StorageError(f"message id {message.id!r} is taken by another message")
            plan.results[index] = stored_message(own)
            if key is not None:
                first_with_key.setdefault(key, index)
            continue
        if key is not None:
            earlier = by_key.get(key)
            if earlier is not None:
                plan.results[index] = stored_message(earlier, duplicate=True)
                continue
            first = first_with_key.get(key)
            if first is not None:
                plan.copies.append((index, first))
                continue
            first_with_key[key] = index
        plan.new_by_chat.setdefault(message.chat_id, []).append(index)
    return plan


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def _url_timeout_s(url_options: dict[str, str]) -> float | None:
    """Return the URL's `timeoutMS` in seconds if it sets a positive one."""
    try:
        timeout_ms = float(url_options.get("timeoutms", "0"))
    except ValueError:
        raise ValueError("invalid timeoutMS in MongoDB storage URL") from None
    return timeout_ms / 1000 if timeout_ms > 0 else None


def _database_name(url: str) -> str:
    name = unquote(urlsplit(url).path.lstrip("/")) or DEFAULT_DATABASE
    if len(name.encode()) > 63 or _BAD_DATABASE_CHARACTERS.intersection(name):
        raise ValueError(f"invalid MongoDB database name in storage URL: {name!r}")
    return name


class MongoStorage:
    """The `Storage` protocol on MongoDB; construct with `MongoStorage(url, options)`.

    `url` is a MongoDB connection string (`mongodb://` or `mongodb+srv://`); its path names
    the database (default `gurukul`) and its options reach the driver unchanged, overriding
    the defaults derived from `options` (a `timeoutMS` there also replaces
    `options.command_timeout_s` as the time budget of one call). `transactions` forces
    multi-document transactions on (`True`) or off (`False`); by default `open` finds out
    whether the server has them. Construction does no I/O; call `open` inside the running
    loop before anything else.
    """

    def __init__(
        self, url: str, options: StorageOptions, *, transactions: bool | None = None
    ) -> None:
        scheme = url.split(":", 1)[0].lower()
        if scheme not in ("mongodb", "mongodb+srv"):
            raise ValueError(f"not a MongoDB storage URL: {_mask_password(url)!r}")
        self._url = url
        self._database_name = _database_name(url)
        self._options = options
        self._url_options = {name.lower(): value for name, value in parse_qsl(urlsplit(url).query)}
        self._timeout_s = _url_timeout_s(self._url_options) or options.command_timeout_s
        self._want_transactions = transactions
        self._transactions = False
        self._client: AsyncMongoClient[Document] | None = None
        # One batch at a time per backend: the group committer sends them one by one anyway,
        # and a second concurrent transaction of ours could only conflict with the first.
        self._append_lock = asyncio.Lock()

    @property
    def url(self) -> str:
        """The URL the backend was opened with, with any password masked (for logs)."""
        return _mask_password(self._url)

    @property
    def uses_transactions(self) -> bool:
        """True once `open` found (or was told) that batches run in transactions."""
        return self._transactions

    async def open(self) -> None:
        """Connect, apply pending migrations and probe for transactions.

        Raises `StorageUnavailable` if the server does not answer within the timeout.
        """
        if self._client is not None:
            return
        with _driver_errors("open"):
            self._client = AsyncMongoClient(self._url, **self._client_options())
        try:
            await self.migrate()
            if self._want_transactions is None:
                with _driver_errors("open"):
                    self._transactions = await self._probe_transactions()
            else:
                self._transactions = self._want_transactions
        except BaseException:
            await self.close()
            raise
        if not self._transactions:
            logger.warning(
                "MongoDB at %s: %s, so a failed batch may leave seq gaps or partly stored "
                "messages; run MongoDB as a replica set for all-or-nothing batches",
                self.url,
                "transactions are switched off"
                if self._want_transactions is False
                else "the server has no multi-document transactions (standalone?)",
            )

    async def close(self) -> None:
        """Close the client's connections; later calls raise `StorageUnavailable`."""
        client, self._client = self._client, None
        if client is not None:
            with _driver_errors("close"):
                await client.close()

    async def migrate(self) -> int:
        """Apply pending schema migrations; return the version in force. Safe to race."""
        with _driver_errors("migrate"):
            return await schema.apply_migrations(self._db())

    async def ping(self) -> bool:
        """Return True if the server answers a `ping` now (used by `/ws/health`)."""
        if self._client is None:
            return False
        try:
            await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    # chats and membership

    async def get_chat(self, chat_id: str) -> ChatRecord | None:
        """Return the chat, or None. One `find_one` by `_id`."""
        with _driver_errors("get_chat"):
            document = await self._collection(schema.CHATS).find_one({"_id": chat_id})
        return chat_record(document) if document is not None else None

    async def create_chat(
        self, chat_id: str, owner_id: str, title: str, agent_id: str | None, now_ms: int
    ) -> ChatRecord:
        """Create the chat unless it exists (an upsert); return it as stored, owner a member.

        When two servers race, the loser's `$setOnInsert` does nothing and both get the
        winner's document; only the winner's owner becomes a member.
        """
        chats = self._collection(schema.CHATS)
        with _driver_errors("create_chat"):
            try:
                document = await chats.find_one_and_update(
                    {"_id": chat_id},
                    {"$setOnInsert": chat_document(chat_id, owner_id, title, agent_id, now_ms)},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                # Two upserts raced on `_id` and this one lost: the chat exists now.
                document = await chats.find_one({"_id": chat_id})
            if document is None:
                raise StorageUnavailable(f"mongodb create_chat: chat {chat_id!r} vanished")
            record = chat_record(document)
            await self._add_member(record.chat_id, record.owner_id)
        return record

    async def add_member(self, chat_id: str, user_id: str) -> None:
        """Make `user_id` a member; a no-op for members and for chats that do not exist."""
        with _driver_errors("add_member"):
            chat = await self._collection(schema.CHATS).find_one(
                {"_id": chat_id}, projection={"_id": True}
            )
            if chat is not None:
                await self._add_member(chat_id, user_id)

    async def is_member(self, chat_id: str, user_id: str) -> bool:
        """Return True if `user_id` owns or is a member of the chat. One or two reads."""
        with _driver_errors("is_member"):
            member = await self._collection(schema.CHAT_MEMBERS).find_one(
                {"chat_id": chat_id, "user_id": user_id}, projection={"_id": True}
            )
            if member is not None:
                return True
            # The owner is made a member on creation; this covers a create cut short.
            owned = await self._collection(schema.CHATS).find_one(
                {"_id": chat_id, "owner_id": user_id}, projection={"_id": True}
            )
        return owned is not None

    async def list_members(self, chat_id: str) -> list[str]:
        """Return the member ids (owner included), sorted; [] for an unknown chat."""
        with _driver_errors("list_members"):
            chat = await self._collection(schema.CHATS).find_one(
                {"_id": chat_id}, projection={"owner_id": True}
            )
            if chat is None:
                return []
            members = {chat["owner_id"]}
            cursor = self._collection(schema.CHAT_MEMBERS).find(
                {"chat_id": chat_id}, projection={"user_id": True, "_id": False}
            )
            async for document in cursor:
                members.add(document["user_id"])
        return sorted(members)

    # messages

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store a batch (see `Storage`); return one record per input, in input order.

        Costs one `find`, one `find_one_and_update` per chat in the batch, one
        `insert_many` and, with transactions, the commit; each operation has the command
        timeout, and conflicting transactions are retried only within it. Raises
        `StorageError` if a chat does not exist (nothing is stored) and
        `StorageUnavailable` on any database failure.
        """
        if not batch:
            return []
        async with self._append_lock:
            with _driver_errors("append_messages"):
                if self._transactions:
                    return await self._append_in_transactions(batch)
                return await self._append_step_by_step(batch)

    async def find_by_client_id(
        self, chat_id: str, user_id: str, client_message_id: str
    ) -> StoredMessage | None:
        """Return the message stored under this idempotency key. One indexed `find_one`."""
        with _driver_errors("find_by_client_id"):
            document = await self._collection(schema.MESSAGES).find_one(
                {"chat_id": chat_id, "user_id": user_id, "client_message_id": client_message_id}
            )
        return stored_message(document) if document is not None else None

    async def latest_messages(
        self, chat_id: str, limit: int, before_seq: int | None = None
    ) -> list[StoredMessage]:
        """Return up to `limit` messages with seq < before_seq (or the newest), oldest first."""
        if limit <= 0:
            return []
        query: Document = {"chat_id": chat_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        with _driver_errors("latest_messages"):
            cursor = self._collection(schema.MESSAGES).find(query).sort("seq", -1).limit(limit)
            newest_first = [stored_message(document) async for document in cursor]
        newest_first.reverse()
        return newest_first

    async def messages_after(self, chat_id: str, after_seq: int, limit: int) -> list[StoredMessage]:
        """Return up to `limit` messages with seq > after_seq, oldest first (recovery)."""
        if limit <= 0:
            return []
        with _driver_errors("messages_after"):
            cursor = (
                self._collection(schema.MESSAGES)
                .find({"chat_id": chat_id, "seq": {"$gt": after_seq}})
                .sort("seq", 1)
                .limit(limit)
            )
            return [stored_message(document) async for document in cursor]

    async def get_message(self, chat_id: str, message_id: str) -> StoredMessage | None:
        """Return the message with this server id in this chat. One `find_one` by `_id`."""
        with _driver_errors("get_message"):
            document = await self._collection(schema.MESSAGES).find_one(
                {"_id": message_id, "chat_id": chat_id}
            )
        return stored_message(document) if document is not None else None

    # read state

    async def mark_read(
        self, chat_id: str, user_id: str, message_ids: Sequence[str], now_ms: int
    ) -> list[str]:
        """Record reads and set `metadata.read`; return the known ids, deduplicated, in order.

        Costs one `find`, one unordered bulk of upserts and one `update_many`.
        """
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return []
        messages = self._collection(schema.MESSAGES)
        with _driver_errors("mark_read"):
            authors = {
                document["_id"]: document["user_id"]
                async for document in messages.find(
                    {"_id": {"$in": wanted}, "chat_id": chat_id}, projection={"user_id": True}
                )
            }
            found = [message_id for message_id in wanted if message_id in authors]
            if not found:
                return []
            reads = [
                UpdateOne(
                    {"chat_id": chat_id, "user_id": user_id, "message_id": message_id},
                    {"$setOnInsert": {"author_id": authors[message_id], "read_at_ms": now_ms}},
                    upsert=True,
                )
                for message_id in found
            ]
            try:
                await self._collection(schema.MESSAGE_READS).bulk_write(reads, ordered=False)
            except BulkWriteError as exc:
                # A concurrent mark of the same message won the upsert: already recorded.
                codes = {error.get("code") for error in exc.details.get("writeErrors", [])}
                if codes != {_DUPLICATE_KEY}:
                    raise
            await messages.update_many(
                {"_id": {"$in": found}, "chat_id": chat_id, "metadata.read": {"$ne": True}},
                {"$set": {"metadata.read": True}},
            )
        return found

    async def read_message_ids(self, chat_id: str, user_id: str) -> set[str]:
        """Return the ids of the chat's messages `user_id` has read. One indexed `find`."""
        with _driver_errors("read_message_ids"):
            cursor = self._collection(schema.MESSAGE_READS).find(
                {"chat_id": chat_id, "user_id": user_id},
                projection={"message_id": True, "_id": False},
            )
            return {document["message_id"] async for document in cursor}

    async def unread_count(self, chat_id: str, user_id: str) -> int:
        """Return how many of the chat's messages from others `user_id` has not read.

        Two counts, no join: messages from others minus reads of messages from others
        (each read records its message's author).
        """
        with _driver_errors("unread_count"):
            from_others = await self._collection(schema.MESSAGES).count_documents(
                {"chat_id": chat_id, "user_id": {"$ne": user_id}}
            )
            read = await self._collection(schema.MESSAGE_READS).count_documents(
                {"chat_id": chat_id, "user_id": user_id, "author_id": {"$ne": user_id}}
            )
        return max(0, from_others - read)

    # presence

    async def set_online(self, user_id: str, online: bool, now_ms: int) -> None:
        """Record the user's status and last activity time (an upsert)."""
        with _driver_errors("set_online"):
            await self._collection(schema.USERS).update_one(
                {"_id": user_id},
                {"$set": {"is_online": online, "last_active_ms": now_ms}},
                upsert=True,
            )

    async def get_user(self, user_id: str) -> tuple[bool, int] | None:
        """Return (is_online, last_active_ms), or None if never seen. One `find_one`."""
        with _driver_errors("get_user"):
            document = await self._collection(schema.USERS).find_one({"_id": user_id})
        if document is None:
            return None
        return bool(document["is_online"]), int(document["last_active_ms"])

    # internals

    def _client_options(self) -> dict[str, Any]:
        timeout_ms = max(1, round(self._timeout_s * 1000))
        defaults: dict[str, Any] = {
            # Bounds every operation, server selection included: a dead server is a
            # StorageUnavailable after this long, never a hang.
            "timeoutMS": timeout_ms,
            "serverSelectionTimeoutMS": timeout_ms,
            "connectTimeoutMS": timeout_ms,
            "maxPoolSize": self._options.pool_max_size,
            "minPoolSize": min(self._options.pool_min_size, self._options.pool_max_size),
            "appname": "gurukul-fast",
        }
        # Options written in the URL win over the derived defaults.
        return {
            name: value for name, value in defaults.items() if name.lower() not in self._url_options
        }

    def _db(self) -> AsyncDatabase[Document]:
        if self._client is None:
            raise StorageUnavailable("mongodb storage is not open")
        return self._client[self._database_name]

    def _collection(self, name: str) -> Collection:
        return self._db()[name]

    async def _probe_transactions(self) -> bool:
        """Return True if the server runs multi-document transactions (one tiny read)."""
        assert self._client is not None
        async with self._client.start_session() as session:
            try:
                async with await session.start_transaction():
                    await self._collection(schema.SCHEMA).find_one(
                        {"_id": "version"}, session=session
                    )
            except OperationFailure as exc:
                if exc.code != _ILLEGAL_OPERATION:
                    logger.info("transaction probe failed (%s); assuming none", exc)
                return False
        return True

    async def _add_member(self, chat_id: str, user_id: str) -> None:
        # DuplicateKeyError: a concurrent add of the same member won the upsert.
        with contextlib.suppress(DuplicateKeyError):
            await self._collection(schema.CHAT_MEMBERS).update_one(
                {"chat_id": chat_id, "user_id": user_id},
                {"$setOnInsert": {"chat_id": chat_id, "user_id": user_id}},
                upsert=True,
            )

    async def _append_in_transactions(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        assert self._client is not None
        deadline = time.monotonic() + self._timeout_s
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._client.start_session() as session:
                    try:
                        # The context commits on exit and aborts if the block raises.
                        async with await session.start_transaction():
                            return await self._append_once(batch, session)
                    except PyMongoError as exc:
                        if not isinstance(exc, ServerSelectionTimeoutError):
                            await self._end_server_session(session)
                        raise
                    except BaseException:
                        _discard_server_session(session)
                        raise
            except PyMongoError as exc:
                backoff = random.uniform(0, min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2**attempt))
                if (
                    not _worth_retrying(exc)
                    or attempt >= _MAX_TRANSACTION_ATTEMPTS
                    or time.monotonic() + backoff >= deadline
                ):
                    raise
                logger.debug("append transaction attempt %d failed, retrying: %s", attempt, exc)
            await asyncio.sleep(backoff)

    async def _end_server_session(self, session: AsyncClientSession) -> None:
        """Best effort: end a failed transaction's session on the server, and drop it.

        Why: the driver cannot abort a transaction whose commit failed, nor one whose abort
        failed, and such a transaction may stay open on the server (MongoDB ends it after
        `transactionLifetimeLimitSeconds`; mongoeco never, and its SQLite engine refuses
        every other session meanwhile). `endSessions` aborts it. Costs one round trip, on
        failures only.
        """
        _discard_server_session(session)
        assert self._client is not None
        with contextlib.suppress(PyMongoError):
            await self._client.admin.command("endSessions", [session.session_id])

    async def _append_once(
        self, batch: Sequence[NewMessage], session: AsyncClientSession
    ) -> list[StoredMessage]:
        """Steps 1-3 inside one transaction; any failure aborts it (see the module doc)."""
        plan = _plan(batch, await self._stored_copies(batch, session))
        seqs = await self._reserve(batch, plan, session)
        documents = [message_document(batch[index], seqs[index]) for index in seqs]
        if documents:
            await self._collection(schema.MESSAGES).insert_many(
                documents, ordered=False, session=session
            )
        return self._results(plan, documents, seqs)

    async def _append_step_by_step(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        """Steps 1-3 without a transaction; see the module doc for what a failure leaves."""
        plan = _plan(batch, await self._stored_copies(batch, None))
        if plan.new_by_chat:
            # Check every chat before reserving anything, so this error leaves no gap.
            wanted = list(plan.new_by_chat)
            found = {
                document["_id"]
                async for document in self._collection(schema.CHATS).find(
                    {"_id": {"$in": wanted}}, projection={"_id": True}
                )
            }
            missing = [chat_id for chat_id in wanted if chat_id not in found]
            if missing:
                raise StorageError(f"append to unknown chat {missing[0]!r}")
        seqs = await self._reserve(batch, plan, None)
        indexes = list(seqs)
        documents = [message_document(batch[index], seqs[index]) for index in indexes]
        if documents:
            try:
                await self._collection(schema.MESSAGES).insert_many(documents, ordered=False)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if not errors or not all(_is_idempotency_violation(e) for e in errors):
                    raise
                # Another server stored these keys between our check and our insert.
                lost = {indexes[error["index"]] for error in errors}
                await self._answer_lost_races(batch, plan, lost)
                documents = [
                    document
                    for index, document in zip(indexes, documents, strict=True)
                    if index not in lost
                ]
                for index in lost:
                    del seqs[index]
        return self._results(plan, documents, seqs)

    async def _answer_lost_races(
        self, batch: Sequence[NewMessage], plan: _Plan, lost: set[int]
    ) -> None:
        """Answer inputs that lost an idempotency race with the winner's record.

        Their reserved seqs stay unused (a gap); the chat's `message_count` is corrected.
        """
        winners = {
            _document_key(document): document
            for document in await self._stored_copies([batch[index] for index in lost], None)
            if isinstance(document.get("client_message_id"), str)
        }
        uncounted: dict[str, int] = {}
        for index in lost:
            key = _key(batch[index])
            winner = winners.get(key) if key is not None else None
            if winner is None:
                raise StorageUnavailable("mongodb append_messages: duplicate key vanished")
            plan.results[index] = stored_message(winner, duplicate=True)
            uncounted[batch[index].chat_id] = uncounted.get(batch[index].chat_id, 0) + 1
        await self._collection(schema.CHATS).bulk_write(
            [
                UpdateOne({"_id": chat_id}, {"$inc": {"message_count": -count}})
                for chat_id, count in uncounted.items()
            ]
        )

    async def _stored_copies(
        self, batch: Sequence[NewMessage], session: AsyncClientSession | None
    ) -> list[Document]:
        """Step 1: the stored messages with a batch message's id or idempotency key.

        One `find` per `_OR_CLAUSES_PER_FIND` senders (one for any batch of ordinary size):
        keys are grouped by (chat, sender) into `$in` lists, because some servers compile a
        long `$or` into a nested expression with a depth limit (mongoeco's: 1000).
        """
        client_ids: dict[tuple[str, str], dict[str, None]] = {}
        for message in batch:
            if message.client_message_id is not None:
                sender = (message.chat_id, message.user_id)
                client_ids.setdefault(sender, {})[message.client_message_id] = None
        clauses: list[Document] = [{"_id": {"$in": [message.id for message in batch]}}]
        clauses.extend(
            {"chat_id": chat_id, "user_id": user_id, "client_message_id": {"$in": list(ids)}}
            for (chat_id, user_id), ids in client_ids.items()
        )
        messages = self._collection(schema.MESSAGES)
        found: list[Document] = []
        for start in range(0, len(clauses), _OR_CLAUSES_PER_FIND):
            query = {"$or": clauses[start : start + _OR_CLAUSES_PER_FIND]}
            found.extend([document async for document in messages.find(query, session=session)])
        return found

    async def _reserve(
        self, batch: Sequence[NewMessage], plan: _Plan, session: AsyncClientSession | None
    ) -> dict[int, int]:
        """Step 2: reserve each chat's seq range and update its summary; input -> seq."""
        chats = self._collection(schema.CHATS)
        seqs: dict[int, int] = {}
        for chat_id, indexes in plan.new_by_chat.items():
            count = len(indexes)
            document = await chats.find_one_and_update(
                {"_id": chat_id},
                {
                    "$inc": {"last_seq": count, "message_count": count},
                    "$set": {"last_message": batch[indexes[-1]].content},
                    # Clocks of different servers may disagree; never move backwards.
                    "$max": {"updated_at_ms": max(batch[i].created_at_ms for i in indexes)},
                },
                projection={"last_seq": True},
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if document is None:
                raise StorageError(f"append to unknown chat {chat_id!r}")
            first = int(document["last_seq"]) - count + 1
            for offset, index in enumerate(indexes):
                seqs[index] = first + offset
        # Input order, so insert_many writes (and errors report) in the caller's order.
        return dict(sorted(seqs.items()))

    @staticmethod
    def _results(
        plan: _Plan, documents: list[Document], seqs: dict[int, int]
    ) -> list[StoredMessage]:
        results = plan.results
        for index, document in zip(seqs, documents, strict=True):
            results[index] = stored_message(document)
        for index, first in plan.copies:
            earlier = results[first]
            assert earlier is not None
            results[index] = msgspec.structs.replace(earlier, duplicate=True)
        assert all(result is not None for result in results)
        return [result for result in results if result is not None]
