"""The storage conformance suite: what every backend must do, written once.

Each test runs against every backend named in `tests.support.backends.BACKEND_NAMES` (see
`conftest.py`). Tests talk only to the `Storage` protocol; nothing here knows a backend.
Data stays at a few hundred rows per table per test: one backend runs on a slow emulator.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, cast

from gurukul_fast.storage import NewMessage, Storage, StoredMessage, load_storage
from gurukul_fast.storage.committer import GroupCommitter
from tests.support.backends import is_persistent

if TYPE_CHECKING:
    import pathlib
    from collections.abc import Sequence

    from tests.support.backends import BackendSupport

T0 = 1_700_000_000_000  # a fixed wall-clock time, ms since the epoch
_ids = itertools.count(1)


def msg(
    chat_id: str,
    content: str = "hello",
    *,
    user_id: str = "alice",
    client_id: str | None = None,
    at_ms: int | None = None,
    agent_id: str | None = None,
    role: str = "user",
    metadata: dict[str, Any] | None = None,
) -> NewMessage:
    """Build a message with a fresh server id."""
    number = next(_ids)
    return NewMessage(
        id=f"msg-{number}",
        chat_id=chat_id,
        user_id=user_id,
        agent_id=agent_id,
        content=content,
        role=role,
        created_at_ms=T0 + number if at_ms is None else at_ms,
        client_message_id=client_id,
        metadata=metadata if metadata is not None else {},
    )


async def make_chat(storage: Storage, chat_id: str, owner: str = "alice") -> None:
    await storage.create_chat(chat_id, owner, f"title of {chat_id}", "therapist", T0)


async def append_contents(storage: Storage, chat_id: str, count: int) -> list[StoredMessage]:
    return await storage.append_messages([msg(chat_id, f"m{i}") for i in range(1, count + 1)])


def seqs(messages: Sequence[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


def assert_same_message(stored: StoredMessage, sent: NewMessage) -> None:
    assert stored.id == sent.id
    assert stored.chat_id == sent.chat_id
    assert stored.user_id == sent.user_id
    assert stored.agent_id == sent.agent_id
    assert stored.content == sent.content
    assert stored.role == sent.role
    assert stored.created_at_ms == sent.created_at_ms
    assert stored.client_message_id == sent.client_message_id
    assert stored.metadata == sent.metadata


# lifecycle


async def test_ping_answers_when_open(storage: Storage) -> None:
    assert await storage.ping() is True
    assert isinstance(storage.url, str)
    assert storage.url


async def test_migrate_is_idempotent(storage: Storage) -> None:
    first = await storage.migrate()
    second = await storage.migrate()
    assert isinstance(first, int)
    assert first >= 1
    assert second == first


async def test_reopen_on_same_url(backend: BackendSupport, tmp_path: pathlib.Path) -> None:
    async with backend.fresh_storage_url(tmp_path) as url:
        first = load_storage(url)
        await first.open()
        version = await first.migrate()
        await make_chat(first, "c1")
        await first.add_member("c1", "bob")
        sent = msg("c1", "kept", client_id="t-1", metadata={"k": [1, 2]})
        await first.append_messages([sent])
        await first.set_online("bob", True, T0 + 5)
        await first.close()

        second = load_storage(url)
        await second.open()
        try:
            assert await second.migrate() == version
            if is_persistent(backend):
                chat = await second.get_chat("c1")
                assert chat is not None
                assert (chat.message_count, chat.last_seq, chat.last_message) == (1, 1, "kept")
                assert await second.list_members("c1") == ["alice", "bob"]
                [stored] = await second.latest_messages("c1", 10)
                assert_same_message(stored, sent)
                assert await second.find_by_client_id("c1", "alice", "t-1") == stored
                assert await second.get_user("bob") == (True, T0 + 5)
                # Seq numbering continues where it stopped.
                [again] = await second.append_messages([msg("c1", "next")])
                assert again.seq == 2
            else:
                # An in-process store is per instance: a new one starts empty.
                assert await second.get_chat("c1") is None
                assert await second.get_user("bob") is None
        finally:
            await second.close()


# appending and sequence numbers


async def test_append_assigns_per_chat_seq_in_input_order(storage: Storage) -> None:
    await make_chat(storage, "a")
    await make_chat(storage, "b")
    batch = [msg("a", "a1"), msg("b", "b1"), msg("a", "a2"), msg("a", "a3"), msg("b", "b2")]
    stored = await storage.append_messages(batch)
    assert len(stored) == len(batch)
    for record, sent in zip(stored, batch, strict=True):
        assert_same_message(record, sent)
        assert record.duplicate is False
    assert seqs(stored) == [1, 1, 2, 3, 2]
    more = await storage.append_messages([msg("b", "b3"), msg("a", "a4")])
    assert seqs(more) == [3, 4]
    assert seqs(await storage.latest_messages("a", 100)) == [1, 2, 3, 4]
    assert seqs(await storage.latest_messages("b", 100)) == [1, 2, 3]


async def test_empty_batch_does_nothing(storage: Storage) -> None:
    await make_chat(storage, "c")
    assert await storage.append_messages([]) == []
    chat = await storage.get_chat("c")
    assert chat is not None
    assert chat.message_count == 0


async def test_chat_summary_follows_appends(storage: Storage) -> None:
    created = await storage.create_chat("c", "alice", "Diet plan", "dietician", T0)
    assert created.chat_id == "c"
    assert created.owner_id == "alice"
    assert created.title == "Diet plan"
    assert created.agent_id == "dietician"
    assert (created.message_count, created.last_message, created.last_seq) == (0, None, 0)
    assert created.created_at_ms == created.updated_at_ms == T0
    assert await storage.get_chat("c") == created

    await storage.append_messages([msg("c", "first", at_ms=T0 + 10)])
    await storage.append_messages(
        [msg("c", "second", at_ms=T0 + 20), msg("c", "third", at_ms=T0 + 30)]
    )
    chat = await storage.get_chat("c")
    assert chat is not None
    assert chat.message_count == 3
    assert chat.last_message == "third"
    assert chat.last_seq == 3
    assert chat.updated_at_ms == T0 + 30
    assert chat.created_at_ms == T0
    assert (chat.owner_id, chat.title, chat.agent_id) == ("alice", "Diet plan", "dietician")


async def test_get_chat_unknown_is_none(storage: Storage) -> None:
    assert await storage.get_chat("no-such-chat") is None


async def test_assistant_message_round_trips(storage: Storage) -> None:
    await make_chat(storage, "c")
    reply = msg(
        "c",
        "Try more vegetables.",
        user_id="assistant",
        role="assistant",
        agent_id="dietician",
        metadata={"confidence": 0.92, "messageIndex": 0, "totalMessages": 1},
    )
    [stored] = await storage.append_messages([reply])
    assert_same_message(stored, reply)
    assert await storage.get_message("c", reply.id) == stored


async def test_many_concurrent_appenders_share_one_sequence(storage: Storage) -> None:
    await make_chat(storage, "c")
    writers, batches, per_batch = 8, 5, 5  # 200 messages

    async def writer(number: int) -> list[StoredMessage]:
        out: list[StoredMessage] = []
        for b in range(batches):
            batch = [msg("c", f"w{number}-{b}-{i}") for i in range(per_batch)]
            out.extend(await storage.append_messages(batch))
            await asyncio.sleep(0)
        return out

    results = await asyncio.gather(*(writer(n) for n in range(writers)))
    total = writers * batches * per_batch
    all_seqs = sorted(record.seq for records in results for record in records)
    assert all_seqs == list(range(1, total + 1))
    for records in results:
        # Within one writer, later calls got later seqs.
        assert seqs(records) == sorted(seqs(records))
    stored = await storage.messages_after("c", 0, total + 10)
    assert seqs(stored) == list(range(1, total + 1))
    by_id = {record.id: record for records in results for record in records}
    assert {m.id: m.seq for m in stored} == {i: r.seq for i, r in by_id.items()}
    chat = await storage.get_chat("c")
    assert chat is not None
    assert (chat.message_count, chat.last_seq) == (total, total)
    assert chat.last_message == stored[-1].content


async def test_large_batch_in_one_call(storage: Storage) -> None:
    await make_chat(storage, "c")
    batch = [msg("c", f"bulk {i}", client_id=f"t-{i}") for i in range(500)]
    stored = await storage.append_messages(batch)
    assert seqs(stored) == list(range(1, 501))
    assert [m.id for m in stored] == [m.id for m in batch]
    chat = await storage.get_chat("c")
    assert chat is not None
    assert (chat.message_count, chat.last_seq, chat.last_message) == (500, 500, "bulk 499")
    found = await storage.find_by_client_id("c", "alice", "t-250")
    assert found is not None
    assert found.seq == 251


# idempotency


async def test_reappend_in_later_batch_returns_first_record(storage: Storage) -> None:
    await make_chat(storage, "c")
    original = msg("c", "once", client_id="temp-1", metadata={"a": 1})
    [first] = await storage.append_messages([original])
    retry = msg("c", "once (retry)", client_id="temp-1")
    [again, fresh] = await storage.append_messages([retry, msg("c", "other")])
    assert again.duplicate is True
    assert again.id == first.id
    assert again.seq == first.seq
    assert again.content == "once"
    assert again.metadata == {"a": 1}
    assert fresh.duplicate is False
    assert fresh.seq == 2
    chat = await storage.get_chat("c")
    assert chat is not None
    assert chat.message_count == 2
    assert [m.content for m in await storage.latest_messages("c", 10)] == ["once", "other"]
    assert await storage.get_message("c", retry.id) is None


async def test_duplicate_within_one_batch(storage: Storage) -> None:
    await make_chat(storage, "c")
    one = msg("c", "one", client_id="temp-1")
    two = msg("c", "two", client_id="temp-2")
    one_again = msg("c", "one again", client_id="temp-1")
    stored = await storage.append_messages([one, two, one_again])
    assert [m.duplicate for m in stored] == [False, False, True]
    assert stored[2].id == one.id
    assert stored[2].seq == stored[0].seq == 1
    assert stored[2].content == "one"
    assert stored[1].seq == 2
    chat = await storage.get_chat("c")
    assert chat is not None
    assert (chat.message_count, chat.last_seq, chat.last_message) == (2, 2, "two")


async def test_same_client_id_elsewhere_is_not_a_duplicate(storage: Storage) -> None:
    await make_chat(storage, "c")
    await make_chat(storage, "d")
    stored = await storage.append_messages(
        [
            msg("c", "alice in c", user_id="alice", client_id="temp-1"),
            msg("c", "bob in c", user_id="bob", client_id="temp-1"),
            msg("d", "alice in d", user_id="alice", client_id="temp-1"),
            # No client id: never deduplicated, even with equal content.
            msg("c", "same"),
            msg("c", "same"),
        ]
    )
    assert [m.duplicate for m in stored] == [False] * 5
    assert seqs(stored) == [1, 2, 1, 3, 4]
    chat = await storage.get_chat("c")
    assert chat is not None
    assert chat.message_count == 4


async def test_find_by_client_id(storage: Storage) -> None:
    await make_chat(storage, "c")
    [stored, _] = await storage.append_messages([msg("c", "x", client_id="temp-1"), msg("c", "y")])
    found = await storage.find_by_client_id("c", "alice", "temp-1")
    assert found is not None
    assert found.duplicate is False
    assert (found.id, found.seq, found.content) == (stored.id, 1, "x")
    assert await storage.find_by_client_id("c", "bob", "temp-1") is None
    assert await storage.find_by_client_id("c", "alice", "temp-2") is None
    assert await storage.find_by_client_id("other", "alice", "temp-1") is None


# reading history


async def test_latest_messages_pages_backwards(storage: Storage) -> None:
    await make_chat(storage, "c")
    await make_chat(storage, "noise")
    await append_contents(storage, "c", 25)
    await append_contents(storage, "noise", 3)
    newest = await storage.latest_messages("c", 10)
    assert seqs(newest) == list(range(16, 26))
    assert [m.content for m in newest] == [f"m{i}" for i in range(16, 26)]
    assert seqs(await storage.latest_messages("c", 10, before_seq=16)) == list(range(6, 16))
    assert seqs(await storage.latest_messages("c", 10, before_seq=6)) == [1, 2, 3, 4, 5]
    assert await storage.latest_messages("c", 10, before_seq=1) == []
    assert seqs(await storage.latest_messages("c", 100)) == list(range(1, 26))
    assert seqs(await storage.latest_messages("c", 3, before_seq=1000)) == [23, 24, 25]
    assert all(m.chat_id == "c" for m in await storage.latest_messages("c", 100))
    assert await storage.latest_messages("no-such-chat", 10) == []


async def test_messages_after_and_get_message(storage: Storage) -> None:
    await make_chat(storage, "c")
    await make_chat(storage, "d")
    stored = await append_contents(storage, "c", 25)
    [elsewhere] = await append_contents(storage, "d", 1)
    assert seqs(await storage.messages_after("c", 20, 100)) == [21, 22, 23, 24, 25]
    assert seqs(await storage.messages_after("c", 0, 3)) == [1, 2, 3]
    assert seqs(await storage.messages_after("c", 10, 2)) == [11, 12]
    assert await storage.messages_after("c", 25, 10) == []
    assert await storage.messages_after("no-such-chat", 0, 10) == []

    assert await storage.get_message("c", stored[6].id) == stored[6]
    assert await storage.get_message("c", "msg-unknown") is None
    # A message is found only in its own chat.
    assert await storage.get_message("c", elsewhere.id) is None
    assert await storage.get_message("d", elsewhere.id) == elsewhere


async def test_metadata_round_trips(storage: Storage) -> None:
    await make_chat(storage, "c")
    metadata: dict[str, Any] = {
        "nested": {"list": [1, 2.5, "three", None, True, {"deep": {"deeper": ["x"]}}]},
        "empty": {},
        "flag": False,
        "count": 7,
        "text": "नमस्ते",
    }
    sent = msg("c", "with metadata", client_id="temp-m", metadata=metadata)
    [stored] = await storage.append_messages([sent])
    assert stored.metadata == metadata
    fetched = await storage.get_message("c", sent.id)
    assert fetched is not None
    assert fetched.metadata == metadata
    [listed] = await storage.latest_messages("c", 1)
    assert listed.metadata == metadata
    found = await storage.find_by_client_id("c", "alice", "temp-m")
    assert found is not None
    assert found.metadata == metadata
    [plain] = await storage.append_messages([msg("c", "no metadata")])
    assert plain.metadata == {}
    assert (await storage.latest_messages("c", 1))[0].metadata == {}


async def test_unicode_round_trips(storage: Storage) -> None:
    title = "गुरुकुल · 学堂 · école"
    await storage.create_chat("c-ü", "álïce", title, None, T0)
    contents = [
        "नमस्ते 🙏 how are you?",
        "你好，世界",
        "emoji: 👩‍👩‍👧‍👦 🇮🇳 and combining: e\u0301",
        "line one\nline two\ttabbed",
        "quotes ' \" and \\ backslash; -- not SQL",
    ]
    sent = [msg("c-ü", text, user_id="álïce", client_id=f"t-{text[:3]}") for text in contents]
    await storage.append_messages(sent)
    chat = await storage.get_chat("c-ü")
    assert chat is not None
    assert chat.title == title
    assert chat.agent_id is None
    assert chat.last_message == contents[-1]
    assert [m.content for m in await storage.latest_messages("c-ü", 10)] == contents
    found = await storage.find_by_client_id("c-ü", "álïce", f"t-{contents[0][:3]}")
    assert found is not None
    assert found.content == contents[0]


# chats and membership


async def test_create_chat_race_has_one_winner(storage: Storage) -> None:
    first, second = await asyncio.gather(
        storage.create_chat("c", "alice", "from alice", None, T0),
        storage.create_chat("c", "bob", "from bob", "career", T0 + 1),
    )
    assert first == second
    assert first.owner_id in {"alice", "bob"}
    assert await storage.get_chat("c") == first
    assert await storage.list_members("c") == [first.owner_id]
    loser = "bob" if first.owner_id == "alice" else "alice"
    assert await storage.is_member("c", loser) is False


async def test_create_existing_chat_returns_it_unchanged(storage: Storage) -> None:
    created = await storage.create_chat("c", "alice", "original", "priya", T0)
    await storage.append_messages([msg("c", "hi")])
    again = await storage.create_chat("c", "bob", "changed", None, T0 + 99)
    assert again.owner_id == "alice"
    assert again.title == "original"
    assert again.agent_id == "priya"
    assert again.created_at_ms == created.created_at_ms
    assert again.message_count == 1
    assert await storage.is_member("c", "bob") is False


async def test_membership(storage: Storage) -> None:
    await make_chat(storage, "c", owner="mallory")
    await make_chat(storage, "d", owner="zed")
    assert await storage.is_member("c", "mallory") is True
    assert await storage.list_members("c") == ["mallory"]
    await storage.add_member("c", "carol")
    await storage.add_member("c", "bob")
    await storage.add_member("c", "bob")  # idempotent
    await storage.add_member("c", "mallory")  # the owner already is one
    assert await storage.list_members("c") == ["bob", "carol", "mallory"]
    assert await storage.is_member("c", "bob") is True
    assert await storage.is_member("c", "stranger") is False
    assert await storage.is_member("d", "bob") is False
    assert await storage.list_members("d") == ["zed"]
    assert await storage.is_member("no-such-chat", "bob") is False
    assert await storage.list_members("no-such-chat") == []


# read state


async def test_mark_read_and_unread_count(storage: Storage) -> None:
    await make_chat(storage, "c")
    await make_chat(storage, "d")
    await storage.add_member("c", "bob")
    sent = await storage.append_messages(
        [
            msg("c", "a1", user_id="alice"),
            msg("c", "b1", user_id="bob"),
            msg("c", "a2", user_id="alice"),
            msg("c", "reply", user_id="assistant", role="assistant", agent_id="therapist"),
        ]
    )
    [other_chat] = await storage.append_messages([msg("d", "elsewhere")])
    a1, _b1, a2, reply = (m.id for m in sent)

    assert await storage.read_message_ids("c", "bob") == set()
    # Bob's own message never counts as unread for him.
    assert await storage.unread_count("c", "bob") == 3
    assert await storage.unread_count("c", "alice") == 2

    marked = await storage.mark_read("c", "bob", [a1, "msg-unknown", other_chat.id, a2], T0 + 50)
    assert sorted(marked) == sorted([a1, a2])
    assert await storage.read_message_ids("c", "bob") == {a1, a2}
    assert await storage.unread_count("c", "bob") == 1

    # Marking again (and repeating ids) is harmless.
    again = await storage.mark_read("c", "bob", [a1, a1, reply], T0 + 60)
    assert sorted(set(again)) == sorted([a1, reply])
    assert await storage.read_message_ids("c", "bob") == {a1, a2, reply}
    assert await storage.unread_count("c", "bob") == 0
    # Reads are per user: Alice's state did not move.
    assert await storage.read_message_ids("c", "alice") == set()
    assert await storage.unread_count("c", "alice") == 2
    # The other chat's message was not marked read for anyone.
    assert await storage.read_message_ids("d", "bob") == set()
    assert await storage.unread_count("d", "bob") == 1

    assert await storage.mark_read("c", "bob", [], T0 + 70) == []
    assert await storage.mark_read("no-such-chat", "bob", [a1], T0 + 70) == []


async def test_mark_read_sets_metadata_read_flag(storage: Storage) -> None:
    await make_chat(storage, "c")
    [first, second] = await storage.append_messages(
        [msg("c", "x", metadata={"keep": "me"}), msg("c", "y")]
    )
    await storage.mark_read("c", "bob", [first.id], T0 + 1)
    marked = await storage.get_message("c", first.id)
    assert marked is not None
    assert marked.metadata == {"keep": "me", "read": True}
    untouched = await storage.get_message("c", second.id)
    assert untouched is not None
    assert untouched.metadata == {}


# presence


async def test_set_online_and_get_user(storage: Storage) -> None:
    assert await storage.get_user("bob") is None
    await storage.set_online("bob", True, T0 + 1)
    assert await storage.get_user("bob") == (True, T0 + 1)
    await storage.set_online("bob", False, T0 + 2)
    assert await storage.get_user("bob") == (False, T0 + 2)
    await storage.set_online("carol", True, T0 + 3)
    assert await storage.get_user("carol") == (True, T0 + 3)
    assert await storage.get_user("bob") == (False, T0 + 2)


# through the group committer


async def test_group_committer_batches_concurrent_appends(storage: Storage) -> None:
    await make_chat(storage, "c")
    await make_chat(storage, "d")
    counting = _CountingStorage(storage)
    committer = GroupCommitter(cast("Storage", counting), max_batch=64)
    committer.start()
    try:
        sent = [
            msg("c" if i % 4 else "d", f"g{i}", client_id=f"t-{i}", user_id=f"u{i % 5}")
            for i in range(200)
        ]
        stored = await asyncio.gather(*(committer.append(m) for m in sent))
    finally:
        await committer.stop()

    calls = counting.batch_sizes
    assert sum(calls) == 200
    assert len(calls) < 200
    assert max(calls) <= 64
    for record, message in zip(stored, sent, strict=True):
        assert_same_message(record, message)
        assert record.duplicate is False
    in_c = sorted(r.seq for r in stored if r.chat_id == "c")
    in_d = sorted(r.seq for r in stored if r.chat_id == "d")
    assert in_c == list(range(1, 151))
    assert in_d == list(range(1, 51))
    # A retry through the committer gets the stored record back.
    retry = await _append_once(storage, msg("c", "again", client_id="t-1", user_id="u1"))
    assert retry.duplicate is True
    assert retry.id == sent[1].id


class _CountingStorage:
    """Forwards to a storage and records the size of each `append_messages` batch."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.batch_sizes: list[int] = []

    async def append_messages(self, batch: Sequence[NewMessage]) -> list[StoredMessage]:
        self.batch_sizes.append(len(batch))
        return await self._storage.append_messages(batch)


async def _append_once(storage: Storage, message: NewMessage) -> StoredMessage:
    committer = GroupCommitter(storage)
    committer.start()
    try:
        return await committer.append(message)
    finally:
        await committer.stop()
