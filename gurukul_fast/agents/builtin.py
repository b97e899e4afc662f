"""The four built-in personas, ready to serve with no configuration and no network.

`builtin_registry()` is what `gurukul-fast serve` offers when no external agent provider
is configured: `therapist`, `dietician`, `career` and `priya`. Each answers locally and
deterministically in microseconds, so they double as the agents of tests and benchmarks.

`BUILTIN_PROVIDER` is the entry point `builtin` of `gurukul_fast.agents`: an `[[agents]]`
table with `provider = "builtin"` serves a persona (`persona`, default the id) under its
own id and display name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gurukul_fast.agents.base import Agent, AgentRegistry, AgentReply, AgentRequest
from gurukul_fast.agents.career import career_agent
from gurukul_fast.agents.dietician import dietician_agent
from gurukul_fast.agents.eliza import TherapistAgent
from gurukul_fast.agents.priya import priya_agent

if TYPE_CHECKING:
    from collections.abc import Callable

    from gurukul_fast.config import AgentSpec, Config

__all__ = [
    "BUILTIN_AGENT_IDS",
    "BUILTIN_PROVIDER",
    "BuiltinProvider",
    "builtin_agents",
    "builtin_registry",
]

BUILTIN_AGENT_IDS = ("therapist", "dietician", "career", "priya")


def builtin_agents() -> list[Agent]:
    """Return fresh instances of the four built-in agents, in `BUILTIN_AGENT_IDS` order."""
    return [TherapistAgent(), dietician_agent(), career_agent(), priya_agent()]


_PERSONAS: dict[str, Callable[[], Agent]] = {
    "therapist": TherapistAgent,
    "dietician": dietician_agent,
    "career": career_agent,
    "priya": priya_agent,
}


def builtin_registry() -> AgentRegistry:
    """Return a registry of the four built-in agents; call once at start-up."""
    return AgentRegistry(builtin_agents())


class _Renamed:
    """A built-in persona served under another id or display name."""

    __slots__ = ("_agent", "_agent_id", "_display_name")

    def __init__(self, agent: Agent, agent_id: str, display_name: str) -> None:
        self._agent = agent
        self._agent_id = agent_id
        self._display_name = display_name

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def display_name(self) -> str:
        return self._display_name

    async def reply(self, request: AgentRequest) -> AgentReply:
        return await self._agent.reply(request)


class BuiltinProvider:
    """`provider = "builtin"`: one of the four local personas, no network."""

    def check(self, spec: AgentSpec, config: Config) -> None:
        persona = spec.persona or spec.id
        if persona not in BUILTIN_AGENT_IDS:
            raise ValueError(
                f"persona {persona!r} is not built in (one of {', '.join(BUILTIN_AGENT_IDS)})"
            )

    def create(self, spec: AgentSpec, config: Config) -> Agent:
        persona = spec.persona or spec.id
        agent = _PERSONAS[persona]()
        display_name = spec.display_name or agent.display_name
        if spec.id == agent.agent_id and display_name == agent.display_name:
            return agent
        return _Renamed(agent, spec.id, display_name)


BUILTIN_PROVIDER = BuiltinProvider()
