"""Switching a connected participant's session type (issue #6): the same AgentSession and
conversation go on, only audio and turn detection change, as seed 003's table says.

The real pipeline offline, as in test_pipeline.py; utterances are short, they play in real
time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc

from clara_voice.agent.session import ParticipantSession
from clara_voice.states import SESSION_TYPES, SessionType
from clara_voice.voice.routing import PTT_METHODS, RPC_END_TURN, RPC_START_TURN
from clara_voice.voice.seams import VoicePipeline
from clara_voice.voice.turns import expected_effective
from testkit.fakes import FakeRoom
from testkit.pipeline import TURN_TIMEOUT, Harness, running_harness, until, user_texts

SILENCE_AFTER = 1.5
"""Seconds of microphone silence after an utterance that must not be heard: longer than the
VAD's end of speech (0.7 s) and the STT's endpointing (0.3 s) would take to report it."""


@pytest.fixture
async def harness(room: FakeRoom, tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(room, tmp_path / "data") as running:
        yield running


def pipeline_of(session: ParticipantSession) -> VoicePipeline:
    assert session.pipeline is not None
    return session.pipeline


def switch(
    harness: Harness, session: ParticipantSession, session_type: SessionType
) -> VoicePipeline:
    """What a client's change request comes down to: the registry switches the type."""
    pipeline = pipeline_of(session)
    harness.agent.registry.switch_type(session, session_type, source="test")
    assert session.session_type == session_type
    assert pipeline.effective() == expected_effective(session_type)
    return pipeline


async def silence_after(harness: Harness, identity: str, utterance_text: str) -> None:
    """Say ``utterance_text`` and let the microphone run on for :data:`SILENCE_AFTER` s."""
    mic = harness.media[identity].mic
    assert mic is not None
    utterance = harness.speak(identity, utterance_text)
    await utterance.wait_sent(timeout=TURN_TIMEOUT)
    frames = round(SILENCE_AFTER * 1000 / 20)  # the mic's 20 ms frames
    await mic.wait_frames_sent(mic.frames_sent + frames, timeout=SILENCE_AFTER + 5)


def stt_audio_bytes(harness: Harness) -> int:
    return sum(c.audio_bytes for c in harness.deepgram.connections)


@pytest.mark.parametrize(
    ("session_type", "detection", "voice_activity"),
    [("text", "none", False), ("voice-ptt", "client", True), ("voice-vad", "server", True)],
)
def test_the_effective_config_of_each_type_is_the_seeds_table(
    session_type: SessionType, detection: str, voice_activity: bool
) -> None:
    expected = expected_effective(session_type)
    assert expected["turn_detection"] == detection
    assert expected["voice_activity_enabled"] is voice_activity
    assert expected["audio_output_enabled"] is voice_activity
    assert expected["audio_input_enabled"] is (session_type == "voice-vad")  # ptt: per turn


async def test_text_to_voice_vad_keeps_the_conversation(harness: Harness) -> None:
    harness.openai.replies = ["First answer.", "Second answer."]
    harness.deepgram.transcripts = ["what time is it"]
    session = await harness.join("carol", "text")
    media = harness.media["carol"]
    assert media.speaker is not None
    assert pipeline_of(session).effective() == expected_effective("text")

    harness.room.send_text("carol", "Hello there.")
    assert await media.text.next_reply(timeout=TURN_TIMEOUT) == "First answer."
    assert harness.openai.speech_requests == []

    switch(harness, session, "voice-vad")
    harness.speak("carol", "What time is it?")
    reply = await media.speaker.next_segment(timeout=TURN_TIMEOUT)
    await reply.wait_finished(timeout=TURN_TIMEOUT)

    first, second = harness.openai.chat_requests
    assert user_texts(first) == ["Hello there."]
    assert user_texts(second) == ["Hello there.", "what time is it"]  # the same conversation
    assert {"role": "assistant", "content": "First answer."} in [
        {"role": m["role"], "content": m["content"]} for m in second["messages"]
    ]
    assert [r["input"] for r in harness.openai.speech_requests] == ["Second answer."]
    assert media.speaker.segments == [reply]  # the text turn was not spoken


async def test_voice_vad_to_text_stops_hearing_and_speaking(harness: Harness) -> None:
    harness.openai.replies = ["A written answer."]
    harness.deepgram.transcripts = ["you should not hear this"]
    session = await harness.join("alice")
    media = harness.media["alice"]
    assert session.session_type == "voice-vad"
    assert pipeline_of(session).effective() == expected_effective("voice-vad")

    switch(harness, session, "text")
    heard_before = stt_audio_bytes(harness)
    await silence_after(harness, "alice", "Hello?")
    assert stt_audio_bytes(harness) == heard_before  # nothing reached the STT
    assert harness.deepgram.transcripts == ["you should not hear this"]

    harness.room.send_text("alice", "Can you read me?")
    assert await media.text.next_reply(timeout=TURN_TIMEOUT) == "A written answer."
    (request,) = harness.openai.chat_requests
    assert user_texts(request) == ["Can you read me?"]  # no transcript of the speech
    assert harness.openai.speech_requests == []
    assert media.speaker is not None
    assert media.speaker.segments == []
    await until(lambda: session.message_count == 2, timeout=5, what="both messages counted")


async def test_voice_vad_to_push_to_talk_waits_for_start_turn(harness: Harness) -> None:
    """Also a regression (found by the web client against the real server): the turn
    methods were registered only once a push-to-talk pipeline existed, so a client calling
    ``clara.start_turn`` too early got "method not supported" instead of a coded refusal."""
    harness.deepgram.transcripts = ["this one was asked for"]
    harness.openai.replies = ["Push to talk answer."]
    session = await harness.join("alice")
    local = harness.room.local_participant
    speaker = harness.media["alice"].speaker
    assert speaker is not None
    assert set(PTT_METHODS) <= set(local.rpc_handlers)  # answered for every session type
    with pytest.raises(rtc.RpcError) as refused:
        await local.call_rpc("alice", RPC_START_TURN)
    assert json.loads(refused.value.data or "")["error"] == "no_session"

    pipeline = switch(harness, session, "voice-ptt")
    unheard = harness.speak("alice", "Not now.")
    await unheard.wait_sent(timeout=TURN_TIMEOUT)

    await local.call_rpc("alice", RPC_START_TURN)
    assert pipeline.effective()["audio_input_enabled"] is True  # during the turn
    asked = harness.speak("alice", "Go ahead.")
    await asked.wait_sent(timeout=TURN_TIMEOUT)
    await local.call_rpc("alice", RPC_END_TURN)
    answer = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await answer.wait_finished(timeout=TURN_TIMEOUT)

    (request,) = harness.openai.chat_requests
    assert user_texts(request) == ["this one was asked for"]  # "Not now." was never heard
    assert harness.openai.speech_requests[-1]["input"] == "Push to talk answer."
    assert pipeline.effective() == expected_effective("voice-ptt")

    # leaving push-to-talk: the client's turn RPCs are refused again
    switch(harness, session, "text")
    with pytest.raises(rtc.RpcError) as refused:
        await local.call_rpc("alice", RPC_START_TURN)
    assert json.loads(refused.value.data or "")["error"] == "no_session"


async def test_switching_to_the_same_type_changes_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="clara_voice")
    sessions = {t: await harness.join(f"user-{t}", t) for t in SESSION_TYPES}
    local = harness.room.local_participant
    await local.call_rpc("user-voice-ptt", RPC_START_TURN)  # mid-turn: must stay heard
    before = {t: pipeline_of(s).effective() for t, s in sessions.items()}
    assert before["voice-ptt"]["audio_input_enabled"] is True

    for session_type, session in sessions.items():
        pipeline_of(session).set_session_type(session_type)

    assert {t: pipeline_of(s).effective() for t, s in sessions.items()} == before
    for session_type in SESSION_TYPES:
        assert before[session_type]["session_type"] == session_type
    assert not [r for r in caplog.records if r.getMessage() == "session type switched"]
    await local.call_rpc("user-voice-ptt", RPC_END_TURN)  # the turn is still the client's
