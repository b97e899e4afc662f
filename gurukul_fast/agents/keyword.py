"""The engine behind the topic-based personas (dietician, career guide, Priya).

Theory of operation: a persona is a table of `Topic`s. The message is normalised
(`matching.normalise`), checked for crisis phrases (`safety`), then the topics are tried
in table order — the first whose keywords occur in the message answers, so specific
topics go above general ones. With no topic matched, a fallback answers. Afterwards the
first matching `note` (e.g. "see a professional" when a medical condition is mentioned)
is appended. Replies are picked with `matching.vary`: deterministic, varied by turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gurukul_fast.agents.base import AgentReply
from gurukul_fast.agents.matching import (
    FALLBACK_CONFIDENCE,
    MATCHED_CONFIDENCE,
    Keywords,
    MatchText,
    vary,
)
from gurukul_fast.agents.safety import care_reply, is_crisis

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gurukul_fast.agents.base import AgentRequest, AgentTurn

__all__ = ["KeywordAgent", "Topic"]


@dataclass(frozen=True, slots=True)
class Topic:
    """One subject a persona knows: if any keyword occurs, answer with one of `replies`.

    `keywords` use the `matching.Keywords` notation: "word", "two words" or "prefix*",
    normalised (lower case, no punctuation, contractions expanded). Raises ValueError at
    construction for an empty table or a keyword that is not normalised.
    """

    name: str
    keywords: tuple[str, ...]
    replies: tuple[str, ...]
    _compiled: Keywords = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.keywords or not self.replies:
            raise ValueError(f"topic {self.name!r} needs keywords and replies")
        object.__setattr__(self, "_compiled", Keywords(self.keywords))

    def matches(self, text: MatchText) -> bool:
        """Return True if one of the keywords occurs in the message."""
        return self._compiled.found_in(text)


class KeywordAgent:
    """An agent that answers from a topic table; local, deterministic, no network.

    Build one per persona at start-up; `reply` never raises `AgentError`.
    """

    __slots__ = ("_agent_id", "_display_name", "_fallbacks", "_notes", "_topics")

    def __init__(
        self,
        agent_id: str,
        display_name: str,
        topics: Sequence[Topic],
        fallbacks: Sequence[str],
        notes: Sequence[Topic] = (),
    ) -> None:
        """Create the persona; `notes` are appended to any reply whose message they match."""
        if not fallbacks:
            raise ValueError(f"agent {agent_id!r} needs at least one fallback reply")
        self._agent_id = agent_id
        self._display_name = display_name
        self._topics = tuple(topics)
        self._fallbacks = tuple(fallbacks)
        self._notes = tuple(notes)

    @property
    def agent_id(self) -> str:
        """The id clients name in `agentId`."""
        return self._agent_id

    @property
    def display_name(self) -> str:
        """The persona's name as shown to people."""
        return self._display_name

    def topic_for(self, content: str) -> Topic | None:
        """Return the first topic whose keywords occur in `content`, or None (tests, logs)."""
        return self._first_topic(MatchText.of(content))

    def _first_topic(self, text: MatchText) -> Topic | None:
        for topic in self._topics:
            if topic.matches(text):
                return topic
        return None

    def respond(self, content: str, history: Sequence[AgentTurn] = ()) -> AgentReply:
        """Return this persona's reply to `content`; pure, deterministic, microseconds."""
        text = MatchText.of(content)
        key = text.text
        if is_crisis(text):
            return care_reply(key, history)
        topic = self._first_topic(text)
        if topic is None:
            reply, confidence = vary(self._fallbacks, key, history), FALLBACK_CONFIDENCE
        else:
            reply, confidence = vary(topic.replies, key, history), MATCHED_CONFIDENCE
        for note in self._notes:
            if note.matches(text):
                reply = f"{reply} {vary(note.replies, key, history)}"
                break
        return AgentReply(reply, confidence)

    async def reply(self, request: AgentRequest) -> AgentReply:
        """Answer with `respond(request.content, request.history)`."""
        return self.respond(request.content, request.history)
