"""The four built-in personas, ready to serve with no configuration and no network.

`builtin_registry()` is what `gurukul-fast serve` offers when no external agent provider
is configured: `therapist`, `dietician`, `career` and `priya`. Each answers locally and
deterministically in microseconds, so they double as the agents of tests and benchmarks.
"""

from __future__ import annotations

from gurukul_fast.agents.base import Agent, AgentRegistry
from gurukul_fast.agents.career import career_agent
from gurukul_fast.agents.dietician import dietician_agent
from gurukul_fast.agents.eliza import TherapistAgent
from gurukul_fast.agents.priya import priya_agent

__all__ = ["BUILTIN_AGENT_IDS", "builtin_agents", "builtin_registry"]

BUILTIN_AGENT_IDS = ("therapist", "dietician", "career", "priya")


def builtin_agents() -> list[Agent]:
    """Return fresh instances of the four built-in agents, in `BUILTIN_AGENT_IDS` order."""
    return [TherapistAgent(), dietician_agent(), career_agent(), priya_agent()]


def builtin_registry() -> AgentRegistry:
    """Return a registry of the four built-in agents; call once at start-up."""
    return AgentRegistry(builtin_agents())
