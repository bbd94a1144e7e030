"""A conversation in real speech both ways, with real recognition in the loop.

The person speaks (espeak-ng) through a real livekit-server; the worker runs with its
default turn detection (`combined`) and an OpenAI-compatible speech-to-text endpoint whose
transcripts come from Whisper (tiny.en, from a PyPI package) on the audio the worker
uploads; Clara's reply is spoken by a neural voice (Piper's en_US-joe-medium, from a PyPI
package) behind the OpenAI-compatible speech endpoint. The client keeps what it hears and
transcribes it with the same Whisper model: she must have said the LLM's words.
"""

from __future__ import annotations

import difflib
import re
import time

from testkit.checks import joined
from testkit.human import SAMPLE_RATE, Human
from testkit.livekit_server import LiveKitServer
from testkit.loopback_providers import TTS_SAMPLE_RATE
from testkit.speech_models import PiperVoice, Whisper, speaking, wav_recognizer
from tests.e2e.conftest import Providers, StartClara

QUESTION = "What is the weather like this afternoon"
REPLY = "It will be sunny and warm all afternoon."


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def spoke_and_listens(alice: Human) -> bool:
    states = [c["lk.agent.state"] for c in alice.agent_attribute_changes if "lk.agent.state" in c]
    return "speaking" in states and states[-1] == "listening"


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(a=words(a), b=words(b)).ratio()


async def test_she_hears_real_recognition_and_answers_in_real_speech(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
) -> None:
    whisper = Whisper("tiny.en")
    providers.openai.recognize = wav_recognizer(whisper)
    providers.openai.voice = speaking(PiperVoice(), TTS_SAMPLE_RATE)
    providers.openai.replies = [REPLY]
    worker = await clara(
        CLARA_STT_PROVIDER="openai",
        CLARA_STT_BASE_URL=providers.openai.base_url,
        CLARA_STT_MODEL="whisper-1",
    )
    alice = Human(livekit_server, room_name, "alice", keep_audio=True)
    await joined(worker, alice)

    utterance = alice.say(QUESTION)
    await alice.wait_until(utterance.ended.is_set, "the question was sent")
    assert utterance.ended_at is not None
    await alice.wait_until(
        lambda: [t for t in alice.agent_transcripts() if t.text == REPLY],
        "Clara's transcript of her reply",
        timeout=30,
    )
    started = alice.agent_sound_after(utterance.ended_at)
    assert started is not None
    # her reply has played out when her state goes from speaking back to listening
    await alice.wait_until(lambda: spoke_and_listens(alice), "the end of her reply", timeout=20)
    [track] = alice.heard.values()
    await alice.wait_until(
        lambda: track.frames[-1][0] >= time.monotonic() - 0.05 or None, "the audio until now"
    )

    # what the worker's recognizer heard of the question became the user's turn
    [said] = [t.text for t in alice.user_transcripts()]
    assert providers.openai.recognized, "the worker never uploaded the question"
    assert similarity(said, QUESTION) >= 0.8, said
    # and what the client heard her say is the LLM's reply
    audio = track.audio_between(started - 0.5, time.monotonic())
    heard = whisper.transcribe(audio, SAMPLE_RATE).text
    print(f"\nthe worker heard {said!r}; the client heard Clara say {heard!r}")
    assert similarity(heard, REPLY) >= 0.8, heard
    await alice.leave()
