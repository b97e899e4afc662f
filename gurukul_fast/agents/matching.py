"""Input normalisation, keyword look-up and deterministic reply choice for the built-ins.

The built-in personas match against `normalise(text)`: Unicode NFKC, case-folded,
contractions expanded ("I'm" → "i am", "don't" → "do not", "can't" → "cannot"), every
punctuation mark and symbol turned into a space, whitespace collapsed. Keywords are
therefore written in lower case with single spaces and no punctuation.

Keywords are looked up without regular expressions: a `MatchText` carries the message's
set of words and a space-padded copy, so a single word is a set look-up and a phrase or a
word prefix ("suicid*") is one substring search. That keeps a reply in the tens of
microseconds even for a message at the length limit, where scanning dozens of regex
alternations would cost milliseconds.

Variety without randomness: `vary` picks among candidate replies by a stable hash of the
normalised input plus the number of earlier turns, so the same request always gets the
same reply (tests, replays, several servers) while a conversation still moves on. It also
avoids repeating the agent's previous reply.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from gurukul_fast.agents.base import AgentTurn

__all__ = [
    "FALLBACK_CONFIDENCE",
    "MATCHED_CONFIDENCE",
    "MAX_INPUT_CHARS",
    "Keywords",
    "MatchText",
    "last_assistant_reply",
    "normalise",
    "vary",
]

MATCHED_CONFIDENCE = 0.9  # a rule or topic matched the message
FALLBACK_CONFIDENCE = 0.6  # nothing matched; a general reply was given

# Only the start of a long message is matched (characters): it bounds the cost of a reply
# whatever the message length, and the opening is what people lead with.
MAX_INPUT_CHARS = 1000

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})

# Contractions typed with an apostrophe: a word and its suffix.
_CONTRACTION_SUFFIXES = re.compile(r"\b(\w+)(n't|'re|'ve|'ll|'d|'s|'m)\b")
_SUFFIX_WORDS = {
    "n't": " not",
    "'re": " are",
    "'ve": " have",
    "'ll": " will",
    "'d": " would",
    "'m": " am",
}
_IRREGULAR_NOT = {"ca": "cannot", "wo": "will not", "sha": "shall not"}
_IS_AFTER = frozenset(
    ("it", "that", "this", "what", "there", "here", "he", "she", "who", "where", "how", "life")
)

# The same contractions typed without the apostrophe, as people do in chat. Words that
# are also ordinary words ("ill", "id", "were", "well", "its", "hell") are left alone.
_BARE_CONTRACTIONS = {
    "cant": "cannot",
    "wont": "will not",
    "im": "i am",
    "ive": "i have",
    "dont": "do not",
    "doesnt": "does not",
    "didnt": "did not",
    "isnt": "is not",
    "arent": "are not",
    "wasnt": "was not",
    "werent": "were not",
    "havent": "have not",
    "hasnt": "has not",
    "couldnt": "could not",
    "shouldnt": "should not",
    "wouldnt": "would not",
    "youre": "you are",
    "thats": "that is",
    "whats": "what is",
}

# Punctuation and symbols become spaces. Written as the set to drop (ASCII punctuation,
# Latin-1 signs, general and CJK punctuation, the Devanagari danda, arrows to dingbats,
# emoji) rather than "not \w", because \w excludes the combining vowel signs of Indic
# scripts and would cut "नमस्ते" into pieces.
_NOT_WORD = re.compile(
    "[!-/:-@\\[-`{-~\u00a1-\u00bf\u00d7\u00f7\u2000-\u206f\u0964\u0965"
    "\u2190-\u2bff\u3000-\u303f\ufe0f\U0001f000-\U0001faff]+"
)


def _expand_suffix(match: re.Match[str]) -> str:
    word, suffix = match.group(1), match.group(2)
    if suffix == "n't" and word in _IRREGULAR_NOT:
        return _IRREGULAR_NOT[word]
    if suffix == "'s":
        # "it's" is "it is"; after other words "'s" is taken as a possessive and dropped
        # ("mom's job" → "mom job"), which keeps the noun for keyword matching.
        return word + " is" if word in _IS_AFTER else word
    return word + _SUFFIX_WORDS[suffix]


def normalise(text: str) -> str:
    """Return `text` in the form the personas match on (see the module docstring).

    Looks at the first `MAX_INPUT_CHARS` characters only. Call once per request (or
    clause); costs a few microseconds for a chat-sized message, well under 100 at the cap.
    """
    text = unicodedata.normalize("NFKC", text[:MAX_INPUT_CHARS]).casefold()
    text = text.translate(_APOSTROPHES)
    if "'" in text:
        text = _CONTRACTION_SUFFIXES.sub(_expand_suffix, text).replace("'", "")
    words = _NOT_WORD.sub(" ", text).split()
    return " ".join([_BARE_CONTRACTIONS.get(word, word) for word in words])


class MatchText:
    """A normalised message prepared for keyword look-ups; build once per message."""

    __slots__ = ("padded", "text", "words")

    def __init__(self, normalised: str) -> None:
        """Wrap text that is already `normalise`d (use `MatchText.of` for raw input)."""
        self.text = normalised
        self.padded = f" {normalised} "  # phrases are searched as " a b " in here
        self.words = frozenset(normalised.split())

    @classmethod
    def of(cls, content: str) -> MatchText:
        """Normalise raw message text and prepare it for matching."""
        return cls(normalise(content))


class Keywords:
    """Keywords to look for in a `MatchText`, each "word", "two words" or "prefix*".

    A word or phrase matches whole words only ("tea" does not match "team"); "prefix*"
    matches any word starting with the prefix ("suicid*" matches "suicidal"), and a phrase
    may end in one ("self harm*"). Build once at import; `found_in` is a set intersection
    plus one substring search per phrase.
    """

    __slots__ = ("_phrases", "_words")

    def __init__(self, keywords: Iterable[str]) -> None:
        """Compile the keywords; raise ValueError for one that is not normalised or empty."""
        words: set[str] = set()
        phrases: list[str] = []
        for keyword in keywords:
            stem = keyword.removesuffix("*")
            if not stem or normalise(stem) != stem:
                raise ValueError(f"keyword {keyword!r} must be normalised lower-case words")
            if stem != keyword:
                phrases.append(f" {stem}")
            elif " " in keyword:
                phrases.append(f" {keyword} ")
            else:
                words.add(keyword)
        if not words and not phrases:
            raise ValueError("at least one keyword is needed")
        self._words = frozenset(words)
        self._phrases = tuple(phrases)

    def found_in(self, text: MatchText) -> bool:
        """Return True if any keyword occurs in `text`."""
        if not self._words.isdisjoint(text.words):
            return True
        padded = text.padded
        return any(phrase in padded for phrase in self._phrases)


def last_assistant_reply(history: Sequence[AgentTurn]) -> str:
    """Return the content of the latest assistant turn in `history`, or "" if none."""
    for turn in reversed(history):
        if turn.role == "assistant":
            return turn.content
    return ""


def vary(candidates: Sequence[str], key: str, history: Sequence[AgentTurn]) -> str:
    """Pick one of `candidates` deterministically from `key` and the length of `history`.

    `key` should be the normalised input. The same (key, history length) always picks the
    same candidate; the next turn picks the next one. If the agent's previous reply began
    with the pick (a persona may append a note), the following candidate is used instead.
    `candidates` must not be empty.
    """
    index = (zlib.crc32(key.encode()) + len(history)) % len(candidates)
    choice = candidates[index]
    if len(candidates) > 1 and last_assistant_reply(history).startswith(choice):
        choice = candidates[(index + 1) % len(candidates)]
    return choice
