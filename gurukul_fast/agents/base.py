"""The agent contract: what the server asks an AI guide, and what it gets back.

Theory of operation: when a user's message names an agent, the server (after storing the
message) builds one `AgentRequest` — the new message plus a few earlier turns of the chat,
oldest first — and awaits `Agent.reply` in a task with a timeout and bounded concurrency.
The returned `AgentReply` is stored and broadcast as the assistant message; its
`confidence` goes to clients as `metadata.confidence`.

An agent that cannot answer (its provider is down, times out, refuses) raises
`AgentError`; the server then sends `error` 503 to the sender and stores nothing. Any other
exception is a bug: the server logs it and also answers 503, never with the exception text.

Agents are looked up by id in an `AgentRegistry`, built once at start-up and passed down.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "Agent",
    "AgentError",
    "AgentRegistry",
    "AgentReply",
    "AgentRequest",
    "AgentTurn",
]


class AgentError(Exception):
    """The agent's provider failed; the server answers the sender with `error` 503.

    Raise it with a message for the log; clients never see the text.
    """


class AgentTurn(msgspec.Struct, frozen=True):
    """One earlier message of the chat, given to the agent as context."""

    role: str  # "user" | "assistant"
    content: str


class AgentRequest(msgspec.Struct, frozen=True):
    """Everything an agent is told when asked to answer one user message."""

    chat_id: str
    user_id: str  # the authenticated sender
    agent_id: str  # the agent the message names
    content: str  # the user's new message
    history: tuple[AgentTurn, ...] = ()  # recent messages before `content`, oldest first


class AgentReply(msgspec.Struct, frozen=True):
    """An agent's answer: plain text (never HTML) and how sure the agent is of it."""

    content: str
    confidence: float  # 0..1, sent to clients as metadata.confidence


@runtime_checkable
class Agent(Protocol):
    """An AI guide the server can ask for a reply. Implementations must be safe to call
    concurrently for different chats; the server never holds a lock around `reply`."""

    @property
    def agent_id(self) -> str:
        """The id clients put in `agentId` (e.g. "therapist")."""
        ...

    @property
    def display_name(self) -> str:
        """The human-readable name shown in chat lists (e.g. "Therapist")."""
        ...

    async def reply(self, request: AgentRequest) -> AgentReply:
        """Answer `request`; raise `AgentError` if the provider cannot.

        Called once per user message that names this agent, from a task of its own; the
        server applies the timeout, so implementations need not.
        """
        ...


class AgentRegistry:
    """The agents a server offers, by id. Built once at start-up; read-only afterwards."""

    __slots__ = ("_agents",)

    def __init__(self, agents: Iterable[Agent]) -> None:
        """Index `agents` by id, keeping their order; raise ValueError on a repeated id."""
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            if agent.agent_id in self._agents:
                raise ValueError(f"duplicate agent id {agent.agent_id!r}")
            self._agents[agent.agent_id] = agent

    def get(self, agent_id: str) -> Agent | None:
        """Return the agent with this id, or None if the server has no such agent."""
        return self._agents.get(agent_id)

    def ids(self) -> list[str]:
        """Return the agent ids in registration order (for listings and logs)."""
        return list(self._agents)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def __len__(self) -> int:
        return len(self._agents)
