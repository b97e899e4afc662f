"""Crisis detection shared by every built-in persona.

A message that mentions suicide or self-harm gets a caring reply that points to local
emergency services or a crisis line, whichever persona it was sent to: nobody should get
a breakfast tip in answer to "I want to kill myself". The check runs before any persona
rule. We name no phone number because the server does not know where the user is, and a
wrong number in a crisis is worse than none.

Matching errs on the side of care: "I could kill myself laughing" also gets the caring
reply, which costs the user one odd answer; missing a real crisis costs far more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gurukul_fast.agents.base import AgentReply
from gurukul_fast.agents.matching import Keywords, vary

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gurukul_fast.agents.base import AgentTurn
    from gurukul_fast.agents.matching import MatchText

__all__ = ["CARE_CONFIDENCE", "care_reply", "is_crisis"]

CARE_CONFIDENCE = 0.95  # a crisis phrase matched; the caring reply is given

# On normalised text: lower case, no punctuation, contractions expanded ("don't" → "do not").
_CRISIS = Keywords(
    (
        "suicid*",
        "kill myself",
        "killing myself",
        "kill my self",
        "end my life",
        "ending my life",
        "end it all",
        "take my life",
        "take my own life",
        "want to die",
        "wanna die",
        "ready to die",
        "wish i was dead",
        "wish i were dead",
        "better off dead",
        "no reason to live",
        "no reason to go on",
        "not want to live",
        "not want to be alive",
        "self harm*",
        "selfharm*",
        "harm myself",
        "harming myself",
        "hurt myself",
        "hurting myself",
        "cut myself",
        "cutting myself",
        "take an overdose",
        "took an overdose",
        "taking an overdose",
    )
)

_CARE_REPLIES = (
    "I'm really sorry you're going through this, and I'm glad you told me. Your safety "
    "matters most right now. If you might act on these thoughts or are in danger, please "
    "contact your local emergency services or a crisis line in your area now, or ask "
    "someone you trust to stay with you. I'm here to listen too. What is happening for "
    "you right now?",
    "Thank you for telling me. It sounds like you are carrying a lot of pain, and you "
    "don't have to carry it alone. If you feel you might hurt yourself, please reach out "
    "to your local emergency services or a crisis line right away, or to someone you "
    "trust nearby. Would you like to tell me more about what is going on?",
)


def is_crisis(text: MatchText) -> bool:
    """Return True if the message mentions suicide or self-harm; check before any rule."""
    return _CRISIS.found_in(text)


def care_reply(normalised: str, history: Sequence[AgentTurn]) -> AgentReply:
    """Return the caring, emergency-pointing reply for a message where `is_crisis` holds."""
    return AgentReply(vary(_CARE_REPLIES, normalised, history), CARE_CONFIDENCE)
