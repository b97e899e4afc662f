"""Unit tests of the agent seam and the four built-in personas (no sockets, no network)."""

from __future__ import annotations

import msgspec
import pytest

from gurukul_fast.agents import (
    BUILTIN_AGENT_IDS,
    Agent,
    AgentRegistry,
    AgentReply,
    AgentRequest,
    AgentTurn,
    KeywordAgent,
    TherapistAgent,
    Topic,
    builtin_registry,
    career_agent,
    dietician_agent,
    priya_agent,
)
from gurukul_fast.agents.eliza import reflect, respond
from gurukul_fast.agents.matching import (
    FALLBACK_CONFIDENCE,
    MATCHED_CONFIDENCE,
    Keywords,
    MatchText,
    normalise,
)
from gurukul_fast.agents.safety import CARE_CONFIDENCE

SAMPLE_MESSAGES = (
    "Hello!",
    "I am sad about my job",
    "What should I eat for breakfast?",
    "How do I improve my CV?",
    "how are you?",
    "The sky is blue.",
    "<script>alert('x')</script> I feel <b>lost</b> & alone",
    "",
    "😀👍",
    "नमस्ते, आप कैसे हैं?",
    "I " + "really " * 3000 + "need help",
)

CRISIS_MESSAGES = (
    "I want to kill myself",
    "I've been thinking about suicide.",
    "Sometimes I think everyone would be better off dead... including me",
    "I don't want to live anymore",
    "I keep hurting myself",
    "thinking about self-harm again",
    "I'm suicidal",
    "I just want to end my life.",
)


def request(agent_id: str, content: str, history: tuple[AgentTurn, ...] = ()) -> AgentRequest:
    return AgentRequest(
        chat_id="chat-1", user_id="user-1", agent_id=agent_id, content=content, history=history
    )


async def ask(agent_id: str, content: str, history: tuple[AgentTurn, ...] = ()) -> AgentReply:
    agent = builtin_registry().get(agent_id)
    assert agent is not None
    return await agent.reply(request(agent_id, content, history))


# registry


def test_builtin_registry_offers_the_four_personas_in_order() -> None:
    registry = builtin_registry()
    assert registry.ids() == ["therapist", "dietician", "career", "priya"]
    assert list(BUILTIN_AGENT_IDS) == registry.ids()
    assert len(registry) == 4
    names = {}
    for agent_id in registry.ids():
        agent = registry.get(agent_id)
        assert agent is not None
        assert isinstance(agent, Agent)
        assert agent.agent_id == agent_id
        names[agent_id] = agent.display_name
    assert names == {
        "therapist": "Therapist",
        "dietician": "Dietician",
        "career": "Career Guide",
        "priya": "Priya",
    }


def test_registry_returns_none_for_unknown_agent() -> None:
    registry = builtin_registry()
    assert registry.get("astrologer") is None
    assert registry.get("") is None
    assert registry.get("Therapist") is None  # ids are exact
    assert "astrologer" not in registry
    assert "therapist" in registry


def test_registry_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="therapist"):
        AgentRegistry([TherapistAgent(), TherapistAgent()])


def test_registry_ids_is_a_copy() -> None:
    registry = builtin_registry()
    registry.ids().clear()
    assert len(registry.ids()) == 4


# every built-in


@pytest.mark.parametrize("agent_id", BUILTIN_AGENT_IDS)
@pytest.mark.parametrize("content", SAMPLE_MESSAGES)
async def test_every_builtin_answers_with_plain_text(agent_id: str, content: str) -> None:
    reply = await ask(agent_id, content)
    assert isinstance(reply, AgentReply)
    assert reply.content.strip()
    assert "<" not in reply.content
    assert ">" not in reply.content
    assert "script" not in reply.content
    assert 0.0 <= reply.confidence <= 1.0
    assert len(reply.content) < 1000  # a long message is never echoed back whole


@pytest.mark.parametrize("agent_id", BUILTIN_AGENT_IDS)
@pytest.mark.parametrize("content", SAMPLE_MESSAGES)
async def test_same_request_gets_same_reply(agent_id: str, content: str) -> None:
    history = (AgentTurn("user", "hi"), AgentTurn("assistant", "Hello."))
    first = await ask(agent_id, content, history)
    second = await ask(agent_id, content, history)  # a fresh registry, fresh agents
    assert first == second


async def test_history_length_varies_the_reply() -> None:
    replies = set()
    for turns in range(6):
        history = tuple(AgentTurn("user", f"message {index}") for index in range(turns))
        replies.add((await ask("therapist", "I am sad about my job", history)).content)
    assert len(replies) > 1


@pytest.mark.parametrize("agent_id", BUILTIN_AGENT_IDS)
async def test_agent_does_not_repeat_its_previous_reply(agent_id: str) -> None:
    content = "zzz qqq"  # a fallback: every persona has several
    # What a one-turn history picks; then the same length, with that pick as the last reply.
    usual = await ask(agent_id, content, (AgentTurn("user", "x"),))
    following = await ask(agent_id, content, (AgentTurn("assistant", usual.content),))
    assert following.content != usual.content


# therapist


async def test_therapist_reflects_pronouns() -> None:
    reply = await ask("therapist", "I am sad about my job")
    text = reply.content.lower()
    assert "your job" in text
    assert "you" in text.split() or "you are" in text
    assert "my job" not in text
    assert reply.confidence == MATCHED_CONFIDENCE


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("i am sad about my job", "you are sad about your job"),
        ("my boss says i am lazy", "your boss says you are lazy"),
        ("you hate me", "I hate you"),
        ("she likes you", "she likes me"),
        ("i think you do not like me", "you think I do not like you"),
        ("are you there", "am I there"),
        ("i hurt myself", "you hurt yourself"),
    ],
)
def test_reflect(fragment: str, expected: str) -> None:
    assert reflect(fragment) == expected


def test_reflect_keeps_fragments_short() -> None:
    assert len(reflect("word " * 100).split()) <= 16


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("I need a holiday", "a holiday"),
        ("I feel like nobody understands me", "nobody understands you"),
        ("My mother never listens", "your mother"),
        ("I can't sleep at night", "sleep at night"),
        ("Well, I'm worried about my exams.", "worried about your exams"),
    ],
)
def test_therapist_rules_reassemble_the_fragment(content: str, expected: str) -> None:
    # Whichever reassembly is picked for any history length, it carries the fragment.
    for turns in range(4):
        history = tuple(AgentTurn("user", "x") for _ in range(turns))
        reply = respond(content, history)
        assert expected in reply.content, reply.content
        assert reply.confidence == MATCHED_CONFIDENCE


def test_therapist_falls_back_with_lower_confidence() -> None:
    reply = respond("The weather is nice")
    assert reply.confidence == FALLBACK_CONFIDENCE
    assert reply.content


def test_therapist_fallback_can_recall_an_earlier_my() -> None:
    seen = set()
    for filler in range(8):
        history = (
            *(AgentTurn("assistant", "Go on.") for _ in range(filler)),
            AgentTurn("user", "My sister ignores me."),
            AgentTurn("assistant", "Go on."),
        )
        seen.add(respond("The weather is nice", history).content)
    assert "Earlier you mentioned your sister ignores you." in " ".join(seen)


# crisis care


@pytest.mark.parametrize("agent_id", BUILTIN_AGENT_IDS)
@pytest.mark.parametrize("content", CRISIS_MESSAGES)
async def test_crisis_words_get_the_care_response(agent_id: str, content: str) -> None:
    reply = await ask(agent_id, content)
    text = reply.content.lower()
    assert "emergency services" in text
    assert "crisis line" in text
    assert not any(character.isdigit() for character in text)  # no phone number
    assert reply.confidence == CARE_CONFIDENCE


@pytest.mark.parametrize(
    "content", ["I love my job", "I killed it at the interview", "Is it safe to skip dinner?"]
)
async def test_ordinary_messages_do_not_trigger_crisis_care(content: str) -> None:
    for agent_id in BUILTIN_AGENT_IDS:
        reply = await ask(agent_id, content)
        assert "crisis line" not in reply.content.lower()


# keyword personas


@pytest.mark.parametrize(
    ("agent_id", "content", "expected"),
    [
        ("dietician", "What should I eat for breakfast?", "breakfast"),
        ("dietician", "How much PROTEIN do I need??", "protein"),
        ("dietician", "I drink too little water", "water"),
        ("dietician", "I'm a vegetarian", "vegetarian"),
        ("dietician", "how to cut sugar", "sugar"),
        ("dietician", "I want to lose weight", "weight"),
        ("career", "How do I improve my CV?", "resume"),
        ("career", "I have an interview tomorrow", "interview"),
        ("career", "How do I negotiate my salary?", "negotiat"),
        ("career", "I want to switch careers", "switch"),
        ("career", "which skills should I learn", "skill"),
        ("priya", "Hi!", "how"),
        ("priya", "How are you?", "feeling"),
        ("priya", "I feel so lonely", "here"),
        ("priya", "Are you a bot?", "ai"),
    ],
)
async def test_keyword_personas_answer_on_topic(agent_id: str, content: str, expected: str) -> None:
    matched = set()
    for turns in range(3):
        history = tuple(AgentTurn("user", "x") for _ in range(turns))
        reply = await ask(agent_id, content, history)
        assert reply.confidence == MATCHED_CONFIDENCE
        matched.add(expected in reply.content.lower())
    assert True in matched


@pytest.mark.parametrize("agent_id", ["dietician", "career", "priya"])
async def test_keyword_personas_fall_back(agent_id: str) -> None:
    reply = await ask(agent_id, "zzz qqq")
    assert reply.confidence == FALLBACK_CONFIDENCE
    assert reply.content


@pytest.mark.parametrize(
    "content",
    [
        "I have diabetes, how much sugar can I eat?",
        "I'm pregnant, what should I eat?",
        "Which breakfast is good with high blood pressure?",
    ],
)
def test_dietician_points_medical_conditions_to_a_professional(content: str) -> None:
    reply = dietician_agent().respond(content)
    assert "doctor or a registered dietitian" in reply.content


def test_dietician_adds_no_medical_note_when_none_is_mentioned() -> None:
    reply = dietician_agent().respond("What should I eat for breakfast?")
    assert "doctor" not in reply.content


def test_priya_comforts_before_greeting() -> None:
    topic = priya_agent().topic_for("hi priya, I feel lonely")
    assert topic is not None
    assert topic.name == "sad"


def test_career_job_loss_beats_resume() -> None:
    topic = career_agent().topic_for("I got laid off, should I update my resume?")
    assert topic is not None
    assert topic.name == "job loss"


def test_topic_and_agent_reject_empty_tables() -> None:
    with pytest.raises(ValueError, match="empty"):
        Topic("empty", (), ("reply",))
    with pytest.raises(ValueError, match="normalised"):
        Topic("shouting", ("BREAKFAST",), ("reply",))
    with pytest.raises(ValueError, match="no-fallback"):
        KeywordAgent("no-fallback", "No Fallback", [], [])


# data and normalisation


@pytest.mark.parametrize(
    ("message", "found"),
    [
        ("a cup of tea", True),
        ("my team is great", False),  # whole words only
        ("I feel suicidal", True),  # prefix
        ("thinking of self-harming", True),  # phrase ending in a prefix
        ("harm to my self esteem", False),
        ("a green tea, please", True),
    ],
)
def test_keywords_match_words_phrases_and_prefixes(message: str, found: bool) -> None:
    keywords = Keywords(("tea", "suicid*", "self harm*"))
    assert keywords.found_in(MatchText.of(message)) is found


@pytest.mark.parametrize("bad", ["", "*", "Tea", "self-harm", "don't"])
def test_keywords_must_be_normalised(bad: str) -> None:
    with pytest.raises(ValueError, match="keyword"):
        Keywords((bad,))


def test_request_round_trips_through_msgspec() -> None:
    original = request("therapist", "hi", (AgentTurn("user", "a"), AgentTurn("assistant", "b")))
    decoded = msgspec.json.decode(msgspec.json.encode(original), type=AgentRequest)
    assert decoded == original
    assert AgentRequest("c", "u", "priya", "hello").history == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm SAD, about MY job!!", "i am sad about my job"),
        ("I don’t know", "i do not know"),
        ("im tired, dont care", "i am tired do not care"),
        ("It's hard", "it is hard"),
        ("self-harm", "self harm"),
        ("<b>bold</b>   text", "b bold b text"),
        ("नमस्ते, आप कैसे हैं?", "नमस्ते आप कैसे हैं"),
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected
