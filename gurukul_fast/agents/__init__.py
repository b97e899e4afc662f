"""Agents: the `Agent` protocol, its request/reply data, the registry and the built-ins.

`base` holds the contract the server depends on; `builtin` assembles the four local
personas (`eliza` is the therapist, `dietician`, `career` and `priya` are topic tables run
by `keyword`); `matching` and `safety` are what the personas share. `registry` builds the
registry from config through providers found by entry point (`builtin`, and `openai` in
`openai`: any OpenAI-compatible streaming endpoint); `prompts` holds the personas' system
prompts for LLM providers.
"""

from __future__ import annotations

from gurukul_fast.agents.base import (
    Agent,
    AgentDelta,
    AgentError,
    AgentProvider,
    AgentRegistry,
    AgentReply,
    AgentRequest,
    AgentTimeout,
    AgentTurn,
    StreamingAgent,
)
from gurukul_fast.agents.builtin import BUILTIN_AGENT_IDS, builtin_agents, builtin_registry
from gurukul_fast.agents.career import career_agent
from gurukul_fast.agents.dietician import dietician_agent
from gurukul_fast.agents.eliza import TherapistAgent
from gurukul_fast.agents.keyword import KeywordAgent, Topic
from gurukul_fast.agents.priya import priya_agent
from gurukul_fast.agents.registry import build_registry

__all__ = [
    "BUILTIN_AGENT_IDS",
    "Agent",
    "AgentDelta",
    "AgentError",
    "AgentProvider",
    "AgentRegistry",
    "AgentReply",
    "AgentRequest",
    "AgentTimeout",
    "AgentTurn",
    "KeywordAgent",
    "StreamingAgent",
    "TherapistAgent",
    "Topic",
    "build_registry",
    "builtin_agents",
    "builtin_registry",
    "career_agent",
    "dietician_agent",
    "priya_agent",
]
