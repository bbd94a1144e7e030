"""The words decide: an open sentence is waited for, a finished one answered."""

from __future__ import annotations

import pytest
from livekit.agents import llm

from clara_voice.config import load_settings
from clara_voice.voice.completeness import FINISHED, OPEN, TranscriptTurnDetector, is_open
from clara_voice.voice.turns import turn_detection_mode


@pytest.mark.parametrize(
    "text",
    [
        "I would like to book a",  # article
        "Can you send it to",  # preposition
        "I need milk and",  # conjunction
        "I need a table for",  # before a number
        "Well,",  # the STT's comma
        "If it rains tomorrow,",
        "My number is five five five",  # a number being read out
        "It came to one hundred and",
        "The thing is",
        "um",
        "Send it to my …",
        "I would like to book a.",  # an STT's period at a pause does not end it
    ],
)
def test_a_sentence_that_goes_on_is_open(text: str) -> None:
    assert is_open(text)


@pytest.mark.parametrize(
    "text",
    [
        "What time does the pharmacy close tonight?",
        "I need a taxi.",
        "I need a taxi",  # no punctuation from the STT
        "Set an alarm for six thirty tomorrow",
        "Turn it on",  # a particle, not a preposition
        "Thank you",
        "I think so",
        "Call her",
        "What are you looking at?",
        "",
    ],
)
def test_a_finished_sentence_is_not(text: str) -> None:
    assert not is_open(text)


async def test_the_detector_reads_the_users_last_message() -> None:
    detector = TranscriptTurnDetector()
    chat = llm.ChatContext()
    chat.add_message(role="user", content="Book a table.")
    chat.add_message(role="assistant", content="For how many")  # not the user's words
    chat.add_message(role="user", content="I need a table for")
    assert await detector.predict_end_of_turn(chat) == OPEN
    chat.add_message(role="user", content="two people")
    assert await detector.predict_end_of_turn(chat) == FINISHED
    assert OPEN < (await detector.unlikely_threshold("en")) < FINISHED  # type: ignore[operator]
    assert await detector.supports_language("en-US")
    assert not await detector.supports_language("fr")


def test_transcript_turn_detection_is_a_setting() -> None:
    settings = load_settings(turn_detection="transcript")
    mode = turn_detection_mode(settings, "voice-vad", eot=lambda: None)
    assert isinstance(mode, TranscriptTurnDetector)
    assert turn_detection_mode(settings, "voice-ptt", eot=lambda: None) == "manual"
