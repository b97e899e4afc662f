"""The demo page in a real browser: two users, the therapist, typing, receipts, a restart.

Each test starts a real server (embedded SQLite in the test's directory) and headless
Chromium; each user is a page in a browser context of its own. The second user reaches the
first user's chat through the `chats` claim of their token.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gurukul_fast.agents import AgentRegistry
from gurukul_fast.server import GurukulServer
from tests.browser.cdp import Browser
from tests.browser.demo_page import DemoPage, slow_agents
from tests.support.server import ChatClient, connect, make_config, token

CHAT = "chat-e2e"
# Long enough that a 50 ms poll sees the therapist's typing indicator, short enough to be quick.
THINKING_S = 0.8


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path, *, agents: AgentRegistry | None = None, **overrides: Any
) -> AsyncIterator[GurukulServer]:
    """A server on SQLite in `tmp_path` (the same database across restarts)."""
    settings: dict[str, Any] = {"storage_url": f"sqlite:///{tmp_path / 'chat.db'}"}
    settings.update(overrides)
    server = GurukulServer(make_config(tmp_path, **settings), agents=agents)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def base_url(server: GurukulServer) -> str:
    return f"http://127.0.0.1:{server.port}/"


async def open_pair(browser: Browser, server: GurukulServer) -> tuple[DemoPage, DemoPage]:
    """Alice creates the chat with the therapist; Bob joins it through his token's claim."""
    alice = DemoPage(await browser.new_page(), "alice")
    await alice.open(base_url(server), token("alice"), CHAT, agent="therapist")
    bob = DemoPage(await browser.new_page(), "bob")
    await bob.open(base_url(server), token("bob", chats=[CHAT]), CHAT, agent="")
    return alice, bob


async def test_two_users_chat_with_the_therapist(tmp_path: Path, browser: Browser) -> None:
    async with serve(tmp_path, agents=slow_agents(THINKING_S)) as server:
        alice, bob = await open_pair(browser, server)

        # Alice types: Bob sees it; she sends: Bob gets the message and both see the
        # therapist typing, then its reply.
        await alice.type("I feel anxious about my exams")
        await bob.wait_for_typing("alice is typing")
        await alice.page.press_enter()
        await bob.wait_for_message("I feel anxious about my exams", role="user")
        await alice.wait_for_typing("Therapist is typing")
        await bob.wait_for_typing("Therapist is typing")
        replies = await bob.wait_for_reply(1)
        assert replies[0]
        assert await alice.wait_for_reply(1) == replies
        await alice.page.wait_for(
            "document.getElementById('typing').textContent === ''", what="typing to stop"
        )

        # Read receipts: Bob's page read Alice's message and the reply.
        await alice.page.wait_for(
            "Array.from(document.querySelectorAll('#messages .msg.mine .receipt'))"
            ".some(e => e.textContent.includes('read by bob'))",
            what="alice to see bob's read receipt",
        )
        # The chat summary follows chat_update: title, count and last message.
        await alice.page.wait_for(
            "document.getElementById('chat-meta').textContent.includes('2 messages')",
            what="the summary to count 2 messages",
        )
        summary = await alice.summary()
        assert "Chat with Therapist" in summary
        assert replies[0][:40] in summary

        # Bob answers without an agent; Alice sees it and the summary counts it.
        await bob.send("Exams make me nervous too")
        await alice.wait_for_message("Exams make me nervous too", role="user")
        await alice.page.wait_for(
            "document.getElementById('chat-meta').textContent.includes('3 messages')",
            what="the summary to count 3 messages",
        )
        await alice.send("Thank you both, that helps")
        await bob.wait_for_message("Thank you both, that helps")
        await alice.wait_for_typing("Therapist is typing")
        # The screenshot of the demo page (docs/demo.png), therapist typing: set
        # GURUKUL_DEMO_SCREENSHOT to a path to keep it. Every run takes one.
        shot = await alice.page.screenshot(tmp_path / "demo.png")
        assert shot.startswith(b"\x89PNG\r\n\x1a\n")
        if target := os.environ.get("GURUKUL_DEMO_SCREENSHOT"):
            shutil.copyfile(tmp_path / "demo.png", target)
        await alice.wait_for_reply(2)
        await bob.wait_for_reply(2)

        # Markup in a message stays text: no element is made from it, no script runs.
        hostile = '<img src=x onerror="window.pwned=1"> <b>bold?</b>'
        await bob.send(hostile)
        await alice.wait_for_message(hostile, role="user")
        made = "document.querySelector('#messages img, #messages b')"
        assert await alice.page.evaluate(made) is None
        assert await alice.page.evaluate("window.pwned === undefined")

        assert await alice.contents() == await bob.contents()
        assert len(await alice.contents()) == 6
        assert alice.page.errors == []
        assert bob.page.errors == []


async def test_restart_mid_conversation_reconnects_and_loses_nothing(
    tmp_path: Path, browser: Browser
) -> None:
    async with serve(tmp_path) as first:
        port = first.port
        alice, bob = await open_pair(browser, first)
        await alice.send("Before the restart")
        await bob.wait_for_message("Before the restart")
        await bob.wait_for_reply(1)
        await alice.wait_for_reply(1)

    # The server is gone: both pages notice and back off; Alice writes anyway.
    for user in (alice, bob):
        await user.page.wait_for(
            "document.body.dataset.connection === 'reconnecting'", what=f"{user.user} offline"
        )
    await alice.send("Written while offline")
    await alice.page.wait_for(
        "Array.from(document.querySelectorAll('#messages .msg.pending time'))"
        ".some(e => e.textContent === 'queued')",
        what="alice's message queued",
    )
    # Let both pages back off far enough that the next message reaches the new server
    # before they do: they must get it by resuming from their last message id.
    for user in (alice, bob):
        await user.page.wait_for(
            "Number(document.body.dataset.nextRetryAt || 0) - Date.now() > 1500",
            what=f"{user.user} to back off",
        )

    # A join page of 2: a page that rejoined without its last message id would get only
    # the latest 2 of Carol's 4 messages and miss the others.
    async with serve(tmp_path, ws_port=port, history_page_size=2) as second:
        async with connect(second, "carol", chats=[CHAT]) as carol:
            for n in range(4):
                await carol.say(CHAT, f"Said while the pages were away ({n})", f"temp-carol-{n}")
            assert await alice.connection() != "online"
            assert await bob.connection() != "online"

            await alice.wait_online()
            await bob.wait_online()
            for user in (alice, bob):
                await user.wait_for_message("Said while the pages were away (3)")
                await user.wait_for_message("Written while offline")
                await user.wait_for_reply(2)
            await bob.page.wait_for(
                "document.getElementById('notice').textContent.startsWith('Resumed')",
                what="bob's page to say it resumed",
            )

            # Nothing lost, nothing twice: the pages show exactly what the server stored.
            stored = await full_history(carol)
            assert [m["content"] for m in stored].count("Written while offline") == 1
            for user in (alice, bob):
                shown = "document.querySelectorAll('#messages .msg[data-seq]').length"
                await user.page.wait_for(
                    f"{shown} >= {len(stored)}",
                    what=f"{user.user} to show all {len(stored)} stored messages",
                )
                assert await user.message_ids() == [m["id"] for m in stored]
                assert (
                    await user.page.evaluate("document.querySelectorAll('.msg.pending').length")
                    == 0
                )
        assert alice.page.errors == []
        assert bob.page.errors == []


async def full_history(client: ChatClient) -> list[dict[str, Any]]:
    """Every stored message of the chat: a join that recovers from seq 0."""
    joined = await client.join(CHAT, since=0)
    assert joined["data"]["recovered"] is True
    messages: list[dict[str, Any]] = joined["data"]["messages"]
    return messages


async def test_zero_config_sign_in_and_talk_to_the_therapist(
    tmp_path: Path, browser: Browser
) -> None:
    """The quick start: no JWT_SECRET, open the page, give a name, talk to the therapist."""
    async with serve(tmp_path, jwt_secret=None) as server:
        assert server.secret_generated
        port = server.port
        page = DemoPage(await browser.new_page(), "asha")
        await page.page.goto(base_url(server))
        await page.page.wait_for("!document.getElementById('dev-login').hidden", what="name form")
        await page.page.type_text("#dev-user", "asha")
        await page.page.click("#dev-login button[type=submit]")
        await page.wait_online()
        whoami = "document.getElementById('whoami').textContent"
        assert "signed in as asha" in await page.page.evaluate(whoami)
        await page.page.click("#new-chat")
        await page.page.wait_for(
            "document.getElementById('chat-title').textContent === 'Chat with Therapist'",
            what="a new chat with the therapist",
        )
        await page.send("I have been feeling stressed lately")
        replies = await page.wait_for_reply(1)
        assert replies[0]

    # The development secret is gone (data dir reset): the server generates a new one, the
    # page's token is refused, and the page gets a new one by itself.
    (tmp_path / "data" / "jwt-secret").unlink()
    async with serve(tmp_path, jwt_secret=None, ws_port=port):
        await page.wait_online(timeout=20.0)
        await page.send("Still here")
        await page.wait_for_reply(2)
        assert "signed in as asha" in await page.page.evaluate(whoami)
    assert page.page.errors == []


async def test_configured_secret_offers_no_dev_tokens(tmp_path: Path, browser: Browser) -> None:
    async with serve(tmp_path) as server:
        page = DemoPage(await browser.new_page(), "mallory")
        await page.page.goto(base_url(server))
        await page.page.wait_for("!document.getElementById('login').hidden", what="sign-in")
        assert await page.page.evaluate("document.getElementById('dev-login').hidden")
        status = await page.page.evaluate("fetch('/dev/token?user=mallory').then(r => r.status)")
        assert status == 404
