"""The `therapist` agent: a Rogerian reflector in the ELIZA tradition.

Theory of operation (after Weizenbaum's ELIZA, 1966): the message is cut into clauses at
sentence punctuation and each clause is normalised (`matching.normalise`). The rules in
`_RULE_TABLE` are tried in table order, which is their priority; for each rule every
clause is tried, and the first decomposition pattern that matches wins. Its captured
fragment is reflected ("my job" → "your job", "I am" → "you are") and put into one of the
rule's reassembly templates, picked by `matching.vary` from a hash of the input and the
number of earlier turns — deterministic, never random. When nothing matches, a fallback
keeps the user talking, sometimes recalling something the user said earlier about "my …".

As in ELIZA, a rule is first screened by its keywords: it runs its pattern only on a
clause that contains all its literal words and a word of each of its synonym groups, so
a long message costs a few set look-ups per rule rather than a regex scan each.

Crisis phrases are checked before any rule (`gurukul_fast.agents.safety`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from gurukul_fast.agents.base import AgentReply
from gurukul_fast.agents.matching import (
    FALLBACK_CONFIDENCE,
    MATCHED_CONFIDENCE,
    MAX_INPUT_CHARS,
    MatchText,
    normalise,
    vary,
)
from gurukul_fast.agents.safety import care_reply, is_crisis

if TYPE_CHECKING:
    from collections.abc import Sequence

    from gurukul_fast.agents.base import AgentRequest, AgentTurn

__all__ = ["TherapistAgent", "reflect", "respond"]

# Decomposition patterns, matched on one normalised clause (lower case, no punctuation,
# contractions expanded: "don't" → "do not", "can't" → "cannot"). Words match whole
# words anywhere in the clause; "@name" matches one word of `_SYNONYMS[name]`; "*" (last)
# matches the rest of the clause; "^" and "$" anchor to the clause's start and end. {0} in
# a reassembly is the reflected "*" text, or else the "@" word. Order is priority.
# fmt: off
_RULE_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("i need *", (
        "Why do you need {0}?",
        "Would it really help you to get {0}?",
        "Are you sure you need {0}?",
    )),
    ("why do not you *", (
        "Do you really think I don't {0}?",
        "Perhaps I will {0} in good time.",
        "Do you really want me to {0}?",
    )),
    ("why cannot i *", (
        "Do you think you should be able to {0}?",
        "If you could {0}, what would you do?",
        "What do you think is stopping you from being able to {0}?",
    )),
    ("i do not know", (
        "What do you think, if you had to guess?",
        "It's all right not to know. What feels closest to the truth?",
        "What would help you find out?",
    )),
    ("i @belief *", (
        "What makes you think {0}?",
        "Do you doubt that {0}?",
        "Are you sure that {0}?",
    )),
    ("i feel *", (
        "Tell me more about feeling {0}.",
        "Do you often feel {0}?",
        "When do you usually feel {0}?",
        "When you feel {0}, what do you do?",
    )),
    ("i am *", (
        "How long have you been {0}?",
        "How do you feel about being {0}?",
        "Did you come to me because you are {0}?",
        "Why do you tell me you are {0}?",
    )),
    ("i was *", (
        "Were you really {0}?",
        "How did being {0} affect you?",
        "Why do you tell me now that you were {0}?",
    )),
    ("i cannot *", (
        "How do you know you can't {0}?",
        "Perhaps you could {0} if you tried.",
        "What would it take for you to {0}?",
    )),
    ("i do not *", (
        "Don't you really {0}?",
        "Why don't you {0}?",
        "Do you wish you could {0}?",
    )),
    ("i want to *", (
        "Why do you want to {0}?",
        "What would it mean for you to {0}?",
        "What would change if you were able to {0}?",
    )),
    ("i want *", (
        "Why do you want {0}?",
        "What would it mean to you if you got {0}?",
        "Suppose you got {0}. What then?",
    )),
    ("i have *", (
        "Why do you tell me that you have {0}?",
        "How do you feel about having {0}?",
        "Now that you have {0}, what will you do next?",
    )),
    ("i would *", (
        "Could you explain why you would {0}?",
        "Why would you {0}?",
        "Who else knows that you would {0}?",
    )),
    ("are you *", (
        "Why does it matter to you whether I am {0}?",
        "Would you prefer it if I were not {0}?",
        "Perhaps you believe I am {0}.",
    )),
    ("you are *", (
        "What makes you think I am {0}?",
        "Does it please you to believe I am {0}?",
        "Perhaps you would like me to be {0}.",
    )),
    ("can you *", (
        "What makes you think I can't {0}?",
        "If I could {0}, then what?",
        "Why do you ask whether I can {0}?",
    )),
    ("can i *", (
        "Perhaps you don't want to {0}.",
        "Do you want to be able to {0}?",
        "If you could {0}, would you?",
    )),
    ("is it *", (
        "Do you think it is {0}?",
        "Perhaps it is {0}. What do you think?",
        "If it were {0}, what would you do?",
    )),
    ("it is *", (
        "You seem very certain. Why do you say it is {0}?",
        "If it were not {0}, how would you feel?",
    )),
    ("is there *", (
        "Do you think there is {0}?",
        "Would you like there to be {0}?",
        "What if there were {0}?",
    )),
    ("my @family", (
        "Tell me more about your {0}.",
        "How do you get along with your {0}?",
        "How does your {0} make you feel?",
        "What else comes to mind when you think of your {0}?",
    )),
    ("@sad", (
        "I'm sorry you are feeling {0}. What do you think is behind it?",
        "How long have you felt {0}?",
        "What helps, even a little, when you feel {0}?",
    )),
    ("@glad", (
        "What is making you feel {0}?",
        "That sounds good. Tell me more about feeling {0}.",
    )),
    ("my *", (
        "You mentioned your {0}. Can you tell me more?",
        "Your {0}. How do you feel about that?",
        "I'd like to hear more about that: your {0}.",
    )),
    ("because *", (
        "Is that the real reason?",
        "What other reasons come to mind?",
        "Does that reason explain anything else?",
        "If {0}, what else must be true?",
    )),
    ("@sorry", (
        "There is no need to apologise.",
        "Apologies are not necessary here. What were you thinking about?",
        "What feelings do you have when you apologise?",
    )),
    ("@friend", (
        "Tell me more about your friends.",
        "When you think of a friend, what comes to mind?",
        "Why don't you tell me about a close friend?",
    )),
    ("@dream", (
        "What does that dream suggest to you?",
        "Do you dream often?",
        "What people appear in your dreams?",
    )),
    ("@machine", (
        "Are you really talking about me?",
        "Does it seem strange to talk to a computer?",
        "What do you think machines have to do with how you feel?",
    )),
    ("^ @hello", (
        "Hello. How are you feeling today?",
        "Hi. What would you like to talk about?",
        "Hello, I'm glad you're here. What is on your mind?",
    )),
    ("^ @yes $", (
        "You seem quite sure.",
        "All right. Can you say a little more?",
        "I see. Tell me more.",
    )),
    ("^ @no $", (
        "Why not?",
        "All right. What would you rather talk about?",
        "I hear you. Can you say more about that?",
    )),
    ("@always", (
        "Can you think of a specific example?",
        "Is there a time when that was not so?",
        "What comes to mind when you say that?",
    )),
    ("@everyone", (
        "Can you think of anyone in particular?",
        "Who, for example?",
        "Are you thinking of someone specific?",
    )),
    ("^ you *", (
        "We were talking about you, not me.",
        "Why do you think I {0}?",
        "What makes you say that about me?",
    )),
    ("^ @question", (
        "Why do you ask?",
        "What answer would please you most?",
        "What do you think?",
        "What comes to mind when you ask that?",
    )),
)
# fmt: on

_FALLBACKS = (
    "Please tell me more.",
    "How does that make you feel?",
    "Let's explore that a little further. What comes to mind?",
    "I see. Please go on.",
    "What does that suggest to you?",
    "Can you say more about that?",
)
_MEMORY_TEMPLATE = "Earlier you mentioned your {0}. Does that have anything to do with this?"
_MEMORY_LOOKBACK = 6  # earlier user turns searched for a "my …" to recall
_MEMORY_CHARS = 200  # characters of each of those turns searched

_CLAUSE_BREAK = re.compile(r"[.!?;,:\n\u0964]+")
_MAX_CLAUSES = 6  # clauses of one message that the rules look at
_MAX_FRAGMENT_WORDS = 16  # words of the user's text echoed back at most


_SYNONYMS = {
    "belief": ("think", "believe", "guess", "suppose"),
    "family": (
        *("mother", "mom", "mum", "father", "dad", "parents", "family", "sister", "brother"),
        *("wife", "husband", "partner", "boyfriend", "girlfriend", "son", "daughter"),
        *("children", "kids", "grandmother", "grandfather"),
    ),
    "sad": (
        *("sad", "unhappy", "depressed", "lonely", "anxious", "worried", "stressed", "scared"),
        *("afraid", "angry", "upset", "hopeless", "exhausted", "overwhelmed", "ashamed"),
        "guilty",
    ),
    "glad": ("happy", "glad", "excited", "relieved", "proud"),
    "sorry": ("sorry", "apologise", "apologize"),
    "friend": ("friend", "friends"),
    "dream": ("dream", "dreams", "dreamt", "dreamed"),
    "machine": ("computer", "computers", "robot", "robots", "machine", "machines", "ai", "bot"),
    "hello": ("hello", "hi", "hey", "namaste"),
    "yes": ("yes", "yeah", "yep", "sure"),
    "no": ("no", "nope"),
    "always": ("always", "never"),
    "everyone": ("everyone", "everybody", "nobody"),
    "question": ("why", "what", "how", "who", "where", "when"),
}


class _Rule(NamedTuple):
    """A compiled decomposition rule: keyword screen, pattern, reassemblies."""

    words: frozenset[str]  # every literal word of the pattern must be in the clause
    groups: tuple[frozenset[str], ...]  # and one word of each synonym group
    pattern: re.Pattern[str]
    reassemblies: tuple[str, ...]

    def match(self, clause: str, clause_words: frozenset[str]) -> str | None:
        """Return the reflected fragment ("" if none) if the rule fits the clause, else None."""
        if not self.words <= clause_words:
            return None
        for group in self.groups:
            if group.isdisjoint(clause_words):
                return None
        found = self.pattern.search(clause)
        if found is None:
            return None
        return reflect(found.group(1)) if self.pattern.groups else ""


def _compile_rule(decomposition: str, reassemblies: tuple[str, ...]) -> _Rule:
    """Turn one row of `_RULE_TABLE` into a `_Rule`; raise ValueError on a bad pattern."""
    tokens = decomposition.split()
    start = bool(tokens) and tokens[0] == "^"
    end = bool(tokens) and tokens[-1] == "$"
    tokens = tokens[start : len(tokens) - end]
    if not tokens or tokens == ["*"] or "*" in tokens[:-1]:
        raise ValueError(f"bad decomposition {decomposition!r}")
    rest = tokens[-1] == "*"
    words: set[str] = set()
    groups: list[frozenset[str]] = []
    parts: list[str] = []
    for token in tokens[: len(tokens) - rest]:
        if token.startswith("@"):
            synonyms = _SYNONYMS[token[1:]]
            groups.append(frozenset(synonyms))
            alternatives = "|".join(re.escape(word) for word in synonyms)
            parts.append(f"(?:{alternatives})" if rest else f"({alternatives})")
        else:
            words.add(token)
            parts.append(re.escape(token))
    source = ("^" if start else "(?:^| )") + " ".join(parts)
    source += " (.+)" if rest else "(?= |$)"
    if end:
        source += "$"
    return _Rule(frozenset(words), tuple(groups), re.compile(source), reassemblies)


_RULES = tuple(_compile_rule(pattern, reassemblies) for pattern, reassemblies in _RULE_TABLE)
_MEMORY_RULE = _compile_rule("my *", (_MEMORY_TEMPLATE,))

# Pronoun reflection. Pairs first, so "i am" becomes "you are" and "are you" "am I".
_PAIR_REFLECTIONS = {
    ("i", "am"): "you are",
    ("i", "was"): "you were",
    ("am", "i"): "are you",
    ("was", "i"): "were you",
    ("you", "are"): "I am",
    ("you", "were"): "I was",
    ("are", "you"): "am I",
    ("were", "you"): "was I",
}
_WORD_REFLECTIONS = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "am": "are",
    "your": "my",
    "yours": "mine",
    "yourself": "myself",
}
# "you" becomes "I" as a subject (after these words or at the start) and "me" otherwise:
# "you hate me" → "I hate you", but "she likes you" → "she likes me".
_YOU_AS_SUBJECT_AFTER = frozenset(
    (
        *("and", "but", "or", "so", "because", "that", "if", "when", "whether", "then"),
        *("think", "know", "said", "do", "did", "does", "can", "could", "will", "would"),
        *("should", "have", "had"),
    )
)


def reflect(fragment: str) -> str:
    """Swap first and second person in a normalised fragment ("my job" → "your job").

    Keeps at most the first `_MAX_FRAGMENT_WORDS` words, so a long message is not echoed
    back whole.
    """
    words = fragment.split()[:_MAX_FRAGMENT_WORDS]
    reflected: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        pair = _PAIR_REFLECTIONS.get((word, words[index + 1])) if index + 1 < len(words) else None
        if pair is not None:
            reflected.append(pair)
            index += 2
            continue
        if word == "you":
            subject = index == 0 or words[index - 1] in _YOU_AS_SUBJECT_AFTER
            reflected.append("I" if subject else "me")
        else:
            reflected.append(_WORD_REFLECTIONS.get(word, word))
        index += 1
    return " ".join(reflected)


def _clauses(content: str) -> list[tuple[str, frozenset[str]]]:
    """Return the normalised, non-empty clauses of `content`, each with its set of words."""
    clauses = (normalise(part) for part in _CLAUSE_BREAK.split(content[:MAX_INPUT_CHARS]))
    return [(clause, frozenset(clause.split())) for clause in clauses if clause]


def _recalled_fragment(history: Sequence[AgentTurn]) -> str | None:
    """Return the reflected "my …" of the latest earlier user turn that has one."""
    user_turns = [turn for turn in history if turn.role == "user"][-_MEMORY_LOOKBACK:]
    for turn in reversed(user_turns):
        opening = turn.content[:_MEMORY_CHARS]
        if "my" not in opening.casefold():  # cheap screen before normalising
            continue
        for clause, words in _clauses(opening):
            fragment = _MEMORY_RULE.match(clause, words)
            if fragment:
                return fragment
    return None


def respond(content: str, history: Sequence[AgentTurn] = ()) -> AgentReply:
    """Return the therapist's reply to `content`, given the earlier turns of the chat.

    Pure and deterministic: the same arguments always give the same reply. Costs tens of
    microseconds for a chat-sized message.
    """
    clauses = _clauses(content)
    key = " ".join(clause for clause, _ in clauses)  # the whole message, normalised
    if is_crisis(MatchText(key)):
        return care_reply(key, history)
    first_clauses = clauses[:_MAX_CLAUSES]
    for rule in _RULES:
        for clause, words in first_clauses:
            fragment = rule.match(clause, words)
            if fragment is not None:
                candidates = [template.format(fragment) for template in rule.reassemblies]
                return AgentReply(vary(candidates, key, history), MATCHED_CONFIDENCE)
    candidates = list(_FALLBACKS)
    recalled = _recalled_fragment(history)
    if recalled:
        candidates.append(_MEMORY_TEMPLATE.format(recalled))
    return AgentReply(vary(candidates, key, history), FALLBACK_CONFIDENCE)


class TherapistAgent:
    """The built-in `therapist` agent: local, deterministic, no network (see module doc)."""

    __slots__ = ()

    @property
    def agent_id(self) -> str:
        """Always "therapist"."""
        return "therapist"

    @property
    def display_name(self) -> str:
        """Always "Therapist"."""
        return "Therapist"

    async def reply(self, request: AgentRequest) -> AgentReply:
        """Answer with `respond(request.content, request.history)`; never raises AgentError."""
        return respond(request.content, request.history)
