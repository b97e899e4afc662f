"""What a user does on the demo page (GET /), as test steps: open, type, send, read.

Everything is read from the page as rendered — message bubbles, the typing line, the chat
summary, the connection status — not from the page's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import orjson

from gurukul_fast.agents import Agent, AgentRegistry, AgentReply, AgentRequest, builtin_agents
from tests.browser.cdp import Page

__all__ = ["DemoPage", "slow_agents"]


def _js(value: object) -> str:
    return orjson.dumps(value).decode()


class DemoPage:
    """One user's tab on the demo page."""

    def __init__(self, page: Page, user: str) -> None:
        self.page = page
        self.user = user

    async def open(self, base_url: str, token: str, chat: str, agent: str | None = None) -> None:
        """Load the page with the token in the URL fragment (never sent to the server)."""
        fragment: dict[str, str] = {"token": token, "chat": chat}
        if agent is not None:
            fragment["agent"] = agent
        await self.page.goto(f"{base_url}#{urlencode(fragment)}")
        await self.wait_online()
        await self.page.wait_for(
            "!document.querySelector('#messages .empty')"
            " || document.querySelector('#messages .empty').textContent !== 'Joining…'",
            what=f"{self.user} to join {chat}",
        )

    async def wait_online(self, timeout: float = 15.0) -> None:
        await self.page.wait_for(
            "document.body.dataset.connection === 'online'", timeout, what=f"{self.user} online"
        )

    async def connection(self) -> str:
        return str(await self.page.evaluate("document.body.dataset.connection"))

    async def type(self, text: str) -> None:
        await self.page.type_text("#input", text)

    async def send(self, text: str) -> None:
        """Type `text` into the composer and press Enter, as a user does."""
        await self.type(text)
        await self.page.press_enter()

    async def contents(self) -> list[str]:
        """The text of every message bubble, in display order."""
        return await self.page.texts("#messages .msg .content")

    async def wait_for_message(
        self, content: str, *, role: str = "", timeout: float = 10.0
    ) -> None:
        selector = "#messages .msg" + (f".{role}" if role else "") + " .content"
        await self.page.wait_for(
            f"Array.from(document.querySelectorAll({_js(selector)}))"
            f".some(e => e.textContent === {_js(content)})",
            timeout,
            what=f"{self.user} to see {content!r}",
        )

    async def wait_for_reply(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until `count` agent replies are shown (and none pending); return them all."""
        await self.page.wait_for(
            f"document.querySelectorAll('#messages .msg.assistant').length >= {count}",
            timeout,
            what=f"{self.user} to see {count} agent replies",
        )
        return await self.page.texts("#messages .msg.assistant .content")

    async def typing_line(self) -> str:
        return str(await self.page.evaluate("document.getElementById('typing').textContent"))

    async def wait_for_typing(self, text: str, timeout: float = 10.0) -> None:
        await self.page.wait_for(
            f"document.getElementById('typing').textContent.includes({_js(text)})",
            timeout,
            what=f"{self.user} to see {text!r} in the typing line",
        )

    async def summary(self) -> str:
        return " ".join(
            str(await self.page.evaluate("document.getElementById('summary').innerText")).split()
        )

    async def message_ids(self) -> list[str]:
        """The stored ids of the messages shown (pending ones have none yet)."""
        value: Any = await self.page.evaluate(
            "Array.from(document.querySelectorAll('#messages .msg[data-seq]'), e => e.dataset.id)"
        )
        return list(value)


class _SlowAgent:
    """A built-in agent that thinks for `delay_s` first, so its typing indicator is visible."""

    def __init__(self, agent: Agent, delay_s: float) -> None:
        self._agent = agent
        self._delay_s = delay_s

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    @property
    def display_name(self) -> str:
        return self._agent.display_name

    async def reply(self, request: AgentRequest) -> AgentReply:
        await asyncio.sleep(self._delay_s)
        return await self._agent.reply(request)


def slow_agents(delay_s: float, ids: Iterable[str] = ("therapist",)) -> AgentRegistry:
    """The built-in agents, with the ones in `ids` answering after `delay_s` seconds."""
    slow = set(ids)
    return AgentRegistry(
        _SlowAgent(a, delay_s) if a.agent_id in slow else a for a in builtin_agents()
    )
