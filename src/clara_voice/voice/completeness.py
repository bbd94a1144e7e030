"""End of turn decided on the words: is what the user said so far a finished sentence?

Silence alone cannot tell a pause inside a sentence from its end: "I would like to book a
… table for two" pauses where "Book a table for two." ends. The words can: a sentence whose
last word is an article, a preposition, a conjunction, a possessive or an auxiliary
("… book a", "… send it to", "… milk and", "… my"), or that ends on a comma, a colon, a dash,
a discourse marker ("well", "so", "actually") or a run of digits ("my number is five five
five"), is not finished. :class:`TranscriptTurnDetector` gives livekit's turn handling that
judgement as an end-of-turn probability (livekit's ``_TurnDetector`` protocol): an open
sentence is unlikely to be the end (livekit then waits ``max_endpointing_delay`` for more),
anything else likely (livekit waits ``min_endpointing_delay``). So a finished turn is
answered quickly and a paused one is waited for.

It reads the user's words as the STT transcribed them up to the pause, so it is only as
good as the transcript: English words, with or without the STT's punctuation (a question
or exclamation mark ends the sentence; a period, which an STT may put at any pause, does
not override words that cannot end one). For another
language it says it does not know (livekit then waits ``min_endpointing_delay``).
"""

from __future__ import annotations

import re
from typing import Final

from livekit.agents import llm
from livekit.agents.language import LanguageCode

OPEN: Final = 0.0
FINISHED: Final = 1.0
THRESHOLD: Final = 0.5


# a sentence ending on one of these words goes on. Words that often end a sentence too
# are left out ("turn it on", "call her", "I think so", "thank you", "yes I can"): on
# those the agent answers at the usual pace, and a pause after them is a pause too long
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_OPEN_WORDS: Final = _words(
    """
    a an the every another
    my your his its our their whose
    to of in at for from with into onto between through during without within toward
    towards than via per as like
    and or but nor because although though if unless while whereas whether plus
    is are was were am be been being would should could
    i he she we they
    very quite rather just
    um uh er erm hmm actually basically
    """
)
_NUMBERS: Final = _words(
    """
    zero oh one two three four five six seven eight nine ten eleven twelve thirteen
    fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million
    """
)
_OPEN_PUNCTUATION: Final = (",", ":", ";", "-", "–", "—", "…", "...", "(")
_WORD: Final = re.compile(r"[a-z0-9']+")


def is_open(text: str) -> bool:
    """Whether ``text`` (what the user said so far) is a sentence that goes on."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped.endswith(_OPEN_PUNCTUATION):
        return True
    if stripped.endswith(("?", "!")):
        return False  # the STT heard a question or an exclamation end
    # a period is the STT's guess; "… book a." still goes on, so the words decide
    words = _WORD.findall(stripped.lower())
    if not words:
        return False
    last = words[-1]
    if last in _OPEN_WORDS:
        return True
    # a run of digits or number words is a number being read out ("five five five",
    # "one hundred and"): more may come
    return _is_number(last) and len(words) >= 2 and _is_number(words[-2])


def _is_number(word: str) -> bool:
    return word.isdigit() or word in _NUMBERS


class TranscriptTurnDetector:
    """livekit's ``_TurnDetector`` protocol, answered from the user's last words."""

    @property
    def model(self) -> str:
        return "transcript-completeness"

    @property
    def provider(self) -> str:
        return "clara_voice"

    async def unlikely_threshold(self, language: LanguageCode | None) -> float | None:
        return THRESHOLD if _english(language) else None

    async def supports_language(self, language: LanguageCode | None) -> bool:
        return _english(language)

    async def predict_end_of_turn(
        self,
        chat_ctx: llm.ChatContext,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (livekit's protocol; nothing to wait on)
    ) -> float:
        """``OPEN`` (0) when the user's last message is a sentence that goes on, else
        ``FINISHED`` (1)."""
        for item in reversed(chat_ctx.items):
            if item.type == "message" and item.role == "user":
                return OPEN if is_open(item.text_content or "") else FINISHED
        return FINISHED


def _english(language: LanguageCode | None) -> bool:
    return language is None or str(language).lower().startswith("en")


__all__ = ["FINISHED", "OPEN", "THRESHOLD", "TranscriptTurnDetector", "is_open"]
