"""What the words heard so far say about the turn: it goes on, it ended, or they cannot tell.

:func:`words_verdict` reads the user's words as the STT gave them (its punctuation included)
and answers ``"open"`` only on evidence that holds in any language, plus English's own:

* the STT ended on a continuation mark (a comma, an ellipsis, a dash, a colon): it heard
  the voice run on (Whisper writes "I need a table for..."; Deepgram and OpenAI put commas
  where the voice continues);
* the last word is a hesitation ("um", "uh", "äh", "euh", "eh", ...): the speaker is
  looking for the next word;
* in English, the last word can hardly end a sentence: an article, a possessive, a
  conjunction (:data:`clara_voice.voice.completeness` has the list), or a preposition or an
  auxiliary that the STT did *not* close with a period, question or exclamation mark ("…
  what I was looking for." is finished; "… send it to" is not), or a number being read out.

A sentence-final mark with none of that is ``"finished"``; anything else ``"unknown"`` (no
punctuation, a language without a list). The verdict never says a sentence is finished from
the words alone when the STT gave no punctuation: the combined detector
(:mod:`clara_voice.voice.listening`) then relies on the sound and on a patient wait.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from clara_voice.voice.completeness import _NUMBERS, _OPEN_WORDS, _words

Verdict = Literal["open", "finished", "unknown"]

CONTINUATION_MARKS: Final = (",", ":", ";", "-", "–", "—", "…", "...", "(")
FINAL_MARKS: Final = (".", "?", "!", "。", "？", "！", "¿", "¡")
HESITATIONS: Final = _words(
    """
    um umm uh uhh uhm er erm ah hmm mm mhm
    äh ähm öh öhm hm
    eh em este emm
    euh heu ben bah
    ehm ehh
    """
)
# English words that never end a sentence, even with the STT's period after them
_NEVER_LAST: Final = _words(
    """
    a an the every another my your our their whose
    and or but nor because although though if unless while whereas whether plus
    """
) - {"though"}  # "I'm in New Jersey now, though." ends a sentence
_WORD: Final = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)


def words_verdict(text: str, language: str | None) -> Verdict:
    """What ``text`` (the user's words so far, as transcribed) says about the turn."""
    stripped = text.strip()
    if not stripped:
        return "unknown"
    if stripped.endswith(CONTINUATION_MARKS):
        return "open"
    words = _WORD.findall(stripped.lower())
    if not words:
        return "unknown"
    last = words[-1]
    if last in HESITATIONS:
        return "open"
    closed = stripped.endswith(FINAL_MARKS)
    if _english(language):
        if last in _NEVER_LAST:
            return "open"
        if not closed and (last in _OPEN_WORDS or _reading_number(words)):
            return "open"
    return "finished" if closed else "unknown"


def _reading_number(words: list[str]) -> bool:
    return len(words) >= 2 and _is_number(words[-1]) and _is_number(words[-2])


def _is_number(word: str) -> bool:
    return word.isdigit() or word in _NUMBERS


def _english(language: str | None) -> bool:
    return language is None or language.lower().startswith("en")


__all__ = ["CONTINUATION_MARKS", "FINAL_MARKS", "HESITATIONS", "Verdict", "words_verdict"]
