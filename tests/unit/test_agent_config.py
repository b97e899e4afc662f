"""Unit tests of the agent registry from config: `[[agents]]` tables, providers by entry
point, the zero-configuration default, and one clear ConfigError per bad table."""

from __future__ import annotations

from pathlib import Path

import pytest

from gurukul_fast.agents import BUILTIN_AGENT_IDS, TherapistAgent, build_registry
from gurukul_fast.agents.openai import OpenAIChatAgent
from gurukul_fast.agents.registry import PROVIDER_GROUP, load_provider
from gurukul_fast.config import AgentSpec, Config, ConfigError, load_config

THERAPIST_ON_LLM = """
agent_max_tokens = 300

[[agents]]
id = "therapist"
provider = "openai"
base_url = "http://127.0.0.1:8080/v1"
model = "llama-3.1-8b-instruct"
temperature = 0.3
context_messages = 6

[[agents]]
id = "yoga"
display_name = "Yoga Teacher"
provider = "openai"
base_url = "http://127.0.0.1:11434/v1"
model = "llama3.2"
system_prompt = "You teach gentle yoga."
max_tokens = 200
"""


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gurukul.toml"
    path.write_text(text)
    return str(path)


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, config_file=write_toml(tmp_path, text))
    message = str(caught.value)
    assert "\n" not in message
    return message


async def test_zero_config_is_the_four_builtin_personas() -> None:
    config = load_config(env={})
    assert config.agents == ()
    assert config.agent_provider == "builtin"
    registry = build_registry(config)
    assert registry.ids() == list(BUILTIN_AGENT_IDS)
    assert isinstance(registry.get("therapist"), TherapistAgent)
    await registry.aclose()


async def test_agents_tables_replace_and_add(tmp_path: Path) -> None:
    config = load_config(env={}, config_file=write_toml(tmp_path, THERAPIST_ON_LLM))
    assert config.agents[0] == AgentSpec(
        id="therapist",
        provider="openai",
        base_url="http://127.0.0.1:8080/v1",
        model="llama-3.1-8b-instruct",
        temperature=0.3,
        context_messages=6,
    )
    registry = build_registry(config)
    assert registry.ids() == [*BUILTIN_AGENT_IDS, "yoga"]
    therapist = registry.get("therapist")
    assert isinstance(therapist, OpenAIChatAgent)
    settings = therapist.settings
    assert settings.display_name == "Therapist"
    assert settings.model == "llama-3.1-8b-instruct"
    assert settings.temperature == 0.3
    assert settings.max_tokens == 300  # AGENT_MAX_TOKENS from the file
    assert settings.context_messages == 6
    assert "therapist" in settings.system_prompt  # the persona's prompt by default
    yoga = registry.get("yoga")
    assert isinstance(yoga, OpenAIChatAgent)
    assert yoga.display_name == "Yoga Teacher"
    assert yoga.settings.system_prompt == "You teach gentle yoga."
    assert yoga.settings.max_tokens == 200
    assert registry.get("dietician") is not None  # the other built-ins stay
    await registry.aclose()


async def test_agent_provider_puts_every_persona_on_the_llm() -> None:
    config = load_config(
        env={
            "AGENT_PROVIDER": "openai",
            "AGENT_BASE_URL": "http://localhost:11434/v1",
            "AGENT_MODEL": "llama3.2",
            "AGENT_API_KEY": "secret",
        }
    )
    registry = build_registry(config)
    assert registry.ids() == list(BUILTIN_AGENT_IDS)
    for agent_id in BUILTIN_AGENT_IDS:
        agent = registry.get(agent_id)
        assert isinstance(agent, OpenAIChatAgent)
        assert agent.settings.base_url == "http://localhost:11434/v1"
        assert agent.settings.api_key == "secret"
    await registry.aclose()


async def test_builtin_provider_serves_a_persona_under_another_id(tmp_path: Path) -> None:
    text = '[[agents]]\nid = "coach"\nprovider = "builtin"\npersona = "career"\n'
    config = load_config(env={}, config_file=write_toml(tmp_path, text))
    coach = build_registry(config).get("coach")
    assert coach is not None
    assert coach.agent_id == "coach"
    assert coach.display_name == "Career Guide"


async def test_api_key_env_is_read_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
    text = THERAPIST_ON_LLM.replace("temperature = 0.3", 'api_key_env = "MY_LLM_KEY"')
    config = load_config(env={}, config_file=write_toml(tmp_path, text))
    therapist = build_registry(config).get("therapist")
    assert isinstance(therapist, OpenAIChatAgent)
    assert therapist.settings.api_key == "sk-from-env"


def test_agents_are_not_read_from_the_environment() -> None:
    assert load_config(env={"AGENTS": "therapist"}).agents == ()


def test_agents_from_flags() -> None:
    config = load_config({"agents": [{"id": "x", "provider": "builtin", "persona": "priya"}]})
    assert config.agents == (AgentSpec(id="x", provider="builtin", persona="priya"),)


def test_providers_are_entry_points() -> None:
    assert PROVIDER_GROUP == "gurukul_fast.agents"
    assert hasattr(load_provider("openai"), "create")
    assert hasattr(load_provider("builtin"), "check")
    with pytest.raises(ConfigError, match="unknown agent provider"):
        load_provider("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[agents]]\nid = "a"\nmodle = "x"\n', "AGENTS[0]: Object contains unknown field `modle`"),
        ('[[agents]]\nmodel = "a"\n', "AGENTS[0]: Object missing required field `id`"),
        ('[[agents]]\nid = "a"\ntemperature = "hot"\n', "AGENTS[0].temperature"),
        ('[[agents]]\nid = "a"\nprovider = "nope"\n', "AGENTS[0].provider: 'nope'"),
        ('[[agents]]\nid = "a"\nprovider = "openai"\n', "needs a model"),
        ('[[agents]]\nid = "a"\nprovider = "openai"\nmodel = "m"\ntemperature = 3.0\n', "0..2"),
        ('[[agents]]\nid = "a"\nprovider = "builtin"\n', "persona 'a' is not built in"),
        (
            '[[agents]]\nid = "priya"\n[[agents]]\nid = "priya"\n',
            "AGENTS[1].id: 'priya' is defined twice",
        ),
        (
            '[[agents]]\nid = "a"\nprovider = "openai"\nmodel = "m"\nbase_url = "ftp://x"\n',
            "http(s) URL",
        ),
        ('agent_provider = "openai"\n', "AGENT_PROVIDER: the openai provider needs a model"),
        ("agent_stream_interval_ms = 0\n", "AGENT_STREAM_INTERVAL_MS"),
        ("agents_typo = 1\n", "unknown key"),
    ],
)
def test_bad_agent_config_fails_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(tmp_path, text)


def test_defaults_are_documented_values() -> None:
    config = Config()
    assert config.agent_stream_interval_ms == 40
    assert config.agent_retries == 2
    assert config.agent_reply_part_chars == 4000
    assert config.agent_queue_per_chat == 16
