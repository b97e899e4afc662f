"""Several nodes sharing chats through a real broker (Redis, NATS) and one PostgreSQL.

Three servers on loopback, clients spread across them: everything must behave as on one
process — every member gets every message of its chat exactly once, in seq order; agent
replies happen once; limits hold cluster-wide; a dead node or a Redis restart loses no
acknowledged message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from gurukul_fast.server import GurukulServer
from tests.integration.test_cli import run_cli
from tests.support.backends.postgresql import fresh_storage_url
from tests.support.process import server_process
from tests.support.server import ChatClient, http_get, make_config, token
from tests.support.services import NATS_URL, REDIS_URL, redis_stopped

BROKERS = {"redis": REDIS_URL, "nats": NATS_URL}


def broker_url(kind: str) -> str:
    """A broker URL with a prefix of its own, so parallel runs never share channels."""
    return f"{BROKERS[kind]}?prefix=gt{secrets.token_hex(4)}"


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, broker: str, nodes: int = 3, **overrides: Any
) -> AsyncIterator[list[GurukulServer]]:
    url = broker_url(broker)
    async with fresh_storage_url(tmp_path) as storage_url:
        servers = []
        try:
            for n in range(nodes):
                config = make_config(
                    tmp_path / f"node{n}", storage_url, broker_url=url, **overrides
                )
                server = GurukulServer(config)
                await server.start()
                servers.append(server)
            yield servers
        finally:
            for server in servers:
                await server.stop()


@contextlib.asynccontextmanager
async def client_on(
    server: GurukulServer, user: str, **token_kwargs: Any
) -> AsyncIterator[ChatClient]:
    url = f"ws://127.0.0.1:{server.port}/ws?token={token(user, **token_kwargs)}"
    async with websockets.connect(url) as connection:
        yield ChatClient(connection)


@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_every_member_on_every_node_gets_every_message_once_in_order(
    tmp_path: Path, broker: str
) -> None:
    chats = ["c0", "c1", "c2"]
    per_client = 4
    async with (
        cluster(tmp_path, broker, message_rate_limit=10_000) as nodes,
        contextlib.AsyncExitStack() as stack,
    ):
        members: dict[str, list[ChatClient]] = {chat: [] for chat in chats}
        owner = await stack.enter_async_context(client_on(nodes[0], "owner"))
        for chat in chats:
            await owner.join(chat)
        for chat in chats:
            for n in range(6):  # two members of each chat on each node
                node = nodes[n % len(nodes)]
                member = await stack.enter_async_context(
                    client_on(node, f"{chat}-u{n}", chats=[chat])
                )
                await member.join(chat)
                members[chat].append(member)

        async def talk(chat: str, index: int, member: ChatClient) -> None:
            for k in range(per_client):
                temp = f"{chat}-{index}-{k}"
                await member.send("message", {"chatId": chat, "content": temp, "messageId": temp})

        await asyncio.gather(
            *(talk(chat, i, m) for chat in chats for i, m in enumerate(members[chat]))
        )
        expected = 6 * per_client

        async def collect(member: ChatClient) -> list[tuple[int, str]]:
            seen: list[tuple[int, str]] = []
            while len(seen) < expected:
                message = (await member.expect("message", timeout=20))["data"]["message"]
                seen.append((message["seq"], message["id"]))
            await member.expect_nothing("message", within=0.3)  # and nothing twice
            return seen

        for chat in chats:
            views = await asyncio.gather(*(collect(m) for m in members[chat]))
            assert [seq for seq, _ in views[0]] == list(range(1, expected + 1)), chat
            for view in views[1:]:
                assert view == views[0], chat


async def test_agent_reply_is_generated_once(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, "redis") as nodes,
        client_on(nodes[0], "alice") as alice,
        client_on(nodes[1], "bob", chats=["therapy"]) as bob,
        client_on(nodes[2], "carol", chats=["therapy"]) as carol,
    ):
        await alice.join("therapy")
        await bob.join("therapy")
        await carol.join("therapy")
        await alice.say("therapy", "I am worried about my exams", "t1", agent_id="therapist")
        for member in (alice, bob, carol):
            replies = []
            while not replies:
                got = await member.expect("message", messageId="t1")
                if got["data"]["message"]["role"] == "assistant":
                    replies.append(got)
            await member.expect_nothing("message", within=0.5)
        stored = await nodes[1].service.storage.latest_messages("therapy", 10)
        assert [m.role for m in stored] == ["user", "assistant"]


async def test_typing_and_receipts_cross_nodes(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, "redis", nodes=2) as nodes,
        client_on(nodes[0], "alice") as alice,
        client_on(nodes[1], "bob", chats=["c"]) as bob,
    ):
        await alice.join("c")
        await bob.join("c")
        await alice.send("typing", {"chatId": "c", "isTyping": True})
        typing = await bob.expect("typing")
        assert typing["data"]["userId"] == "alice"
        sent = await alice.say("c", "hello", "t1")
        message_id = sent["data"]["message"]["id"]
        await bob.send("read_receipt", {"chatId": "c", "messageIds": [message_id]})
        receipt = await alice.expect("read_receipt")
        assert receipt["data"] == {"chatId": "c", "messageIds": [message_id], "userId": "bob"}


async def test_per_user_connection_cap_holds_across_nodes(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, "redis", max_connections_per_user=2) as nodes,
        client_on(nodes[0], "dave") as first,
        client_on(nodes[1], "dave") as second,
        client_on(nodes[2], "dave") as third,
    ):
        error = await third.expect("error")
        assert error["data"]["code"] == 503
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await third.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        for kept in (first, second):
            await kept.send("ping", {"timestamp": 1})
            await kept.expect("pong")


async def test_rate_limit_holds_across_nodes(tmp_path: Path) -> None:
    limit = 20
    async with (
        cluster(tmp_path, "redis", nodes=2, message_rate_limit=limit) as nodes,
        client_on(nodes[0], "erin") as one,
        client_on(nodes[1], "erin") as two,
    ):
        accepted = 0
        for n in range(limit):  # each node alone would allow all of these
            for index, client in enumerate((one, two)):
                temp = f"t{index}-{n}"
                await client.send("message", {"chatId": "e", "content": "x", "messageId": temp})
        for client in (one, two):
            for _ in range(limit):
                reply = await client.recv()
                while reply["type"] not in ("message", "error"):
                    reply = await client.recv()
                if reply["type"] == "message":
                    accepted += 1
                else:
                    assert reply["data"]["code"] == 429
        # Leases may grant a few early tokens per node, never a second full budget.
        assert limit <= accepted <= limit + 2 * 2, accepted


async def test_health_reports_the_broker(tmp_path: Path) -> None:
    async with cluster(tmp_path, "redis", nodes=1) as nodes:
        status, _, body = await http_get(nodes[0].port, "/ws/health")
        assert status == 200
        health = orjson.loads(body)
        assert health["status"] == "healthy"
        assert health["broker"] == "ok"


async def test_redis_restart_loses_nothing_and_nodes_resync(tmp_path: Path) -> None:
    async with (
        cluster(tmp_path, "redis", nodes=2) as nodes,
        client_on(nodes[0], "alice") as alice,
        client_on(nodes[1], "bob", chats=["r"]) as bob,
    ):
        await alice.join("r")
        await bob.join("r")
        await alice.say("r", "before", "t0")
        await bob.expect("message", messageId="t0")
        with redis_stopped():
            # Local delivery and storage keep working while the broker is down.
            for n in range(1, 4):
                await alice.say("r", f"during {n}", f"t{n}")
            assert nodes[0].service.broker_ok is False
        # After Redis returns, node 1 catches up from storage: bob misses nothing.
        got = []
        while len(got) < 3:
            message = await bob.expect("message", timeout=30)
            got.append(message["data"]["message"]["seq"])
        assert got == [2, 3, 4]
        await alice.say("r", "after", "t9")
        after = await bob.expect("message", messageId="t9", timeout=10)
        assert after["data"]["message"]["seq"] == 5


async def test_client_of_a_killed_node_recovers_on_another(tmp_path: Path) -> None:
    url = broker_url("redis")
    async with fresh_storage_url(tmp_path) as storage_url:
        env = {"BROKER_URL": url}
        async with (
            server_process(storage_url, tmp_path / "a", **env) as node_a,
            server_process(storage_url, tmp_path / "b", **env) as node_b,
        ):
            bob_url = node_b.url(token("bob", chats=["k"]))
            async with websockets.connect(node_a.url(token("alice"))) as alice_ws:
                alice = ChatClient(alice_ws)
                await alice.join("k")
                last_seen = None
                async with websockets.connect(bob_url) as bob_ws:
                    bob = ChatClient(bob_ws)
                    await bob.join("k")
                    echo = await bob.say("k", "hi from b", "b1")
                    last_seen = echo["data"]["message"]["id"]
                node_b.kill()  # bob's node dies; alice keeps talking on node a
                await node_b.wait(10)
                for n in range(3):
                    await alice.say("k", f"while b is dead {n}", f"a{n}")
            async with (
                server_process(storage_url, tmp_path / "b", **env) as node_c,
                websockets.connect(node_c.url(token("bob", chats=["k"]))) as ws,
            ):
                bob = ChatClient(ws)
                joined = await bob.join("k", lastMessageId=last_seen)
                assert joined["data"]["recovered"] is True
                missed = [m["content"] for m in joined["data"]["messages"]]
                assert missed == [f"while b is dead {n}" for n in range(3)]
            node_a.process.send_signal(signal.SIGTERM)
            assert await node_a.wait(15) == 0


async def test_workers_share_one_port_and_one_chat(tmp_path: Path) -> None:
    url = broker_url("redis")
    async with fresh_storage_url(tmp_path) as storage_url:
        env = {"BROKER_URL": url, "WORKERS": "2"}
        async with server_process(storage_url, tmp_path / "w", **env) as server:
            async with contextlib.AsyncExitStack() as stack:
                clients = []
                for n in range(6):  # SO_REUSEPORT spreads them over both workers
                    ws = await stack.enter_async_context(
                        websockets.connect(server.url(token(f"w{n}", chats=["shared"])))
                    )
                    client = ChatClient(ws)
                    await client.join("shared")
                    clients.append(client)
                await clients[0].say("shared", "to everyone", "t1")
                for client in clients[1:]:
                    got = await client.expect("message", messageId="t1")
                    assert got["data"]["message"]["content"] == "to everyone"
            server.terminate()
            assert await server.wait(30) == 0


def test_workers_without_a_network_broker_fail_at_start(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, WORKERS="2", WS_PORT="0")
    assert result.returncode == 2
    assert "WORKERS > 1 needs a network broker" in result.stderr


async def test_streamed_agent_text_reaches_stream_clients_on_other_nodes(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, "redis", nodes=2) as nodes:
        b_url = f"ws://127.0.0.1:{nodes[1].port}/ws?token={token('bob', chats=['s'])}&stream=1"
        async with (
            client_on(nodes[0], "alice") as alice,
            websockets.connect(b_url) as bob_ws,
        ):
            bob = ChatClient(bob_ws)
            await alice.join("s")
            await bob.join("s")
            await alice.say("s", "I feel tired all the time", "t1", agent_id="therapist")
            delta = await bob.expect("agent_stream")
            assert delta["data"]["chatId"] == "s"
            reply = await bob.expect("message", messageId="t1")
            while reply["data"]["message"]["role"] != "assistant":
                reply = await bob.expect("message", messageId="t1")
            assert reply["data"]["message"]["content"].startswith(delta["data"]["delta"][:10])
