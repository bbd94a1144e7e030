"""What the turn-taking corpus says: its utterances as text, pauses, voices and rates.

The categories and the truth they carry are described in :mod:`bench.corpus`, which renders
these specs with espeak-ng. Voices and rates are handed out in turn, so the build is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Category = Literal["complete", "mid_sentence", "between_sentences"]
CATEGORIES: tuple[Category, ...] = get_args(Category)

# voices and rates are handed out in turn (8 and 5 are coprime: 40 different pairs)
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-x-rp",
    "en-us+f3",
    "en-us+m3",
    "en-gb-scotland",
    "en-us+f2",
    "en-us-nyc",
)
RATES = (140, 155, 170, 185, 200)


@dataclass(frozen=True)
class Spec:
    """What to say: ``text`` with ``|`` where each of ``pauses`` (seconds) goes."""

    category: Category
    place: str
    text: str
    pauses: tuple[float, ...] = ()
    voice: str = "en-us"
    wpm: int = 170

    @property
    def phrases(self) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.text.split("|"))

    def __post_init__(self) -> None:
        if len(self.phrases) != len(self.pauses) + 1:
            raise ValueError(f"{self.text!r}: {len(self.pauses)} pause(s) for the '|' marks")
        if self.category == "complete" and self.pauses:
            raise ValueError(f"{self.text!r}: a complete utterance has no pause")
        if self.category != "complete" and not self.pauses:
            raise ValueError(f"{self.text!r}: a {self.category} utterance needs a pause")
        if any(not 0 < p < 5 for p in self.pauses):
            raise ValueError(f"{self.text!r}: pauses must lie in (0, 5) s")


def _specs(rows: Sequence[tuple[Category, str, str, tuple[float, ...]]]) -> tuple[Spec, ...]:
    return tuple(
        Spec(category, place, text, pauses, VOICES[i % len(VOICES)], RATES[i % len(RATES)])
        for i, (category, place, text, pauses) in enumerate(rows)
    )


_COMPLETE = (
    "What time does the pharmacy close tonight?",
    "Please set a timer for ten minutes.",
    "Can you read me my new messages?",
    "I would like to book a table for two people tonight.",
    "How long does it take to drive to the airport?",
    "Remind me to call the doctor tomorrow morning.",
    "What is the weather going to be like this weekend?",
    "Turn the heating down a little.",
    "Where is the nearest train station?",
    "Play some quiet music in the living room.",
    "Did anyone call while I was out?",
    "Cancel my meeting at three o'clock.",
    "How do I get to the city library from here?",
    "Send a message to Tom saying I am on my way.",
)
_MID_SENTENCE = (  # (place, pauses, text)
    ("article", (0.6,), "I would like to book a | table for two"),
    ("article", (0.7,), "Can you find me a | cheap hotel near the station"),
    ("article", (0.3,), "Please move the | dentist appointment to Friday"),
    ("preposition", (0.7,), "Can you send it to | my office"),
    ("preposition", (0.45,), "Put the meeting notes in | the shared folder"),
    ("preposition", (0.9,), "I left my keys at | my mother's house"),
    ("conjunction", (0.6,), "I need milk and | some bread"),
    ("conjunction", (0.8,), "We could walk to the park or | stay at home"),
    ("conjunction", (0.2,), "I called the bank but | nobody answered"),
    ("before_number", (0.7,), "I need a table for | two people"),
    ("before_number", (0.6,), "Set an alarm for | six thirty tomorrow"),
    ("before_number", (0.45,), "Turn the heating up to | twenty one degrees"),
    ("comma", (0.6,), "Well, | I think so"),
    ("comma", (0.7,), "Actually, | make it three o'clock"),
    ("comma", (0.9,), "If it rains tomorrow, | cancel the picnic"),
    (
        "mid_number",
        (0.45, 0.2),
        "My number is five five five | one two three | four five six seven",
    ),
    ("mid_number", (0.8,), "It came to one hundred and | forty two dollars"),
    ("list", (0.7, 0.3), "Add eggs, | milk, | and coffee to the list"),
)
_BETWEEN_SENTENCES = (  # (pause, text)
    (0.2, "I need a taxi. | It is for the airport."),
    (0.3, "The meeting went well. | Can you send the notes to Anna?"),
    (0.45, "What is the weather like tomorrow? | I want to go hiking."),
    (0.6, "That is perfect. | Please book a taxi as well."),
    (0.7, "I lost my wallet. | What should I do?"),
    (0.8, "Call my sister. | Tell her I am late."),
    (0.9, "The printer is not working. | It keeps showing an error."),
    (0.2, "I finished the report. | Should I send it to the whole team?"),
    (0.3, "Turn off the kitchen lights. | Leave the hallway on."),
    (0.45, "My flight was cancelled. | I need another one tonight."),
    (0.6, "Is the library open on Sunday? | I have books to return."),
    (0.7, "Add eggs to the shopping list. | We are out of coffee too."),
    (0.8, "I am running late. | Start the meeting without me."),
    (0.9, "That sounds good to me. | Let us do it on Friday."),
)

DEFAULT_SPECS: tuple[Spec, ...] = _specs(
    [("complete", "none", text, ()) for text in _COMPLETE]
    + [("mid_sentence", place, text, pauses) for place, pauses, text in _MID_SENTENCE]
    + [("between_sentences", "sentence_end", text, (p,)) for p, text in _BETWEEN_SENTENCES]
)


# -- the corpus as the bench sees it -----------------------------------------------------------


__all__ = ["CATEGORIES", "DEFAULT_SPECS", "RATES", "VOICES", "Category", "Spec"]
