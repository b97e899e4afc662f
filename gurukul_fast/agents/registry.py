"""The agent registry built from config: built-in personas, `[[agents]]` tables, providers.

`build_registry(config)` is what the server calls at start-up. With no configuration it
returns the four built-in personas, exactly as `builtin_registry()` does. `AGENT_PROVIDER`
names the provider that serves the built-in persona ids (so `AGENT_PROVIDER=openai` with
`AGENT_BASE_URL` and `AGENT_MODEL` puts all four on an LLM, each with its persona's
prompt); each `[[agents]]` table then replaces the agent of the same id or adds one.

Providers are entry points of the group `gurukul_fast.agents` (`builtin`, `openai`; a
package can add its own): objects with `check(spec, config)` and `create(spec, config)`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from gurukul_fast.agents.base import Agent, AgentProvider, AgentRegistry
from gurukul_fast.agents.builtin import BUILTIN_AGENT_IDS
from gurukul_fast.config import AgentSpec, ConfigError

if TYPE_CHECKING:
    from gurukul_fast.config import Config

__all__ = ["PROVIDER_GROUP", "agent_specs", "build_registry", "load_provider"]

PROVIDER_GROUP = "gurukul_fast.agents"


def load_provider(name: str) -> AgentProvider:
    """The provider registered as `name`; ConfigError if no installed package offers it."""
    for entry in entry_points(group=PROVIDER_GROUP, name=name):
        provider: AgentProvider = entry.load()
        return provider
    raise ConfigError(f"unknown agent provider {name!r}: no entry point in {PROVIDER_GROUP}")


def agent_specs(config: Config) -> list[AgentSpec]:
    """Every agent the server will offer, in order: built-in ids first, then the others."""
    specs = {agent_id: AgentSpec(id=agent_id) for agent_id in BUILTIN_AGENT_IDS}
    for spec in config.agents:
        specs[spec.id] = spec  # a built-in id keeps its place, with the table's settings
    return list(specs.values())


def build_registry(config: Config) -> AgentRegistry:
    """Create every configured agent; call once at start-up, inside the running loop.

    Raises ConfigError (naming the agent) if a provider refuses its spec.
    """
    agents: list[Agent] = []
    providers: dict[str, AgentProvider] = {}
    for spec in agent_specs(config):
        name = spec.provider or config.agent_provider
        provider = providers.get(name)
        if provider is None:
            provider = providers[name] = load_provider(name)
        try:
            agents.append(provider.create(spec, config))
        except ValueError as exc:
            raise ConfigError(f"agent {spec.id!r} ({name}): {exc}") from None
    return AgentRegistry(agents)
