"""The agent contract: what the server asks an AI guide, and what it gets back.

Theory of operation: when a user's message names an agent, the server (after storing the
message) builds one `AgentRequest` — the new message plus a few earlier turns of the chat,
oldest first — and awaits `Agent.reply` in a task with a timeout and bounded concurrency.
The returned `AgentReply` is stored and broadcast as the assistant message; its
`confidence` goes to clients as `metadata.confidence`.

An agent that cannot answer (its provider is down, times out, refuses) raises
`AgentError`; the server then sends `error` 503 to the sender and stores nothing. Any other
exception is a bug: the server logs it and also answers 503, never with the exception text.

Agents that generate text incrementally (LLM providers) also implement `StreamingAgent`:
`stream` yields `AgentDelta`s as the text arrives, so the server can show partial text to
clients that asked for it and keep what was generated when a reply is cancelled. A timeout
of the provider itself is `AgentTimeout` (the sender gets 504 instead of 503).

Agents are looked up by id in an `AgentRegistry`, built once at start-up (from config, see
`registry.build_registry`) and passed down; `AgentRegistry.aclose` releases what the agents
hold (HTTP sessions) at shutdown. Providers — factories of agents from an `AgentSpec` — are
found by entry point in the group `gurukul_fast.agents`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from gurukul_fast.config import AgentSpec, Config

__all__ = [
    "Agent",
    "AgentDelta",
    "AgentError",
    "AgentProvider",
    "AgentRegistry",
    "AgentReply",
    "AgentRequest",
    "AgentTimeout",
    "AgentTurn",
    "StreamingAgent",
]


class AgentError(Exception):
    """The agent's provider failed; the server answers the sender with `error` 503.

    Raise it with a message for the log; clients never see the text.
    """


class AgentTimeout(AgentError):
    """The provider did not answer in time (connect or between two chunks): `error` 504."""


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


class AgentDelta(msgspec.Struct, frozen=True):
    """A piece of a streamed reply: the next `text`, and what the agent knows so far."""

    text: str
    confidence: float | None = None  # set (usually on the last delta) when known
    truncated: bool = False  # the provider stopped at its token limit


@runtime_checkable
class StreamingAgent(Agent, Protocol):
    """An agent that produces its reply incrementally (an LLM behind HTTP)."""

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentDelta]:
        """Yield the reply as it is generated; raise `AgentError`/`AgentTimeout` on failure.

        The server cancels the iteration (closing the upstream request) when the reply is
        cancelled; an implementation must release its connection when that happens.
        """
        ...


class AgentProvider(Protocol):
    """A factory of agents, registered under an entry point of `gurukul_fast.agents`.

    `check` runs while the config is loaded, so a bad agent table fails start-up with one
    line; `create` runs once per agent when the registry is built, inside the loop.
    """

    def check(self, spec: AgentSpec, config: Config) -> None:
        """Raise ValueError (text: which key and why) if this provider cannot serve `spec`."""
        ...

    def create(self, spec: AgentSpec, config: Config) -> Agent:
        """Return the agent `spec` describes."""
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

    async def aclose(self) -> None:
        """Release the agents' resources (HTTP sessions); call once, after the drain."""
        for agent in self._agents.values():
            close: Any = getattr(agent, "aclose", None)
            if close is not None:
                await close()
