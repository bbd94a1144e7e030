"""The real pipeline end to end, offline: espeak-ng speech in real time through the bundled
VAD, livekit's deepgram and openai plugins talking to loopback peers, and the agent's audio
captured at livekit's audio output seam."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents import JobContext, llm
from livekit.agents.job import _JobContextVar
from livekit.agents.voice.events import ConversationItemAddedEvent

from clara_voice.config import Settings
from clara_voice.logging import get_logger
from clara_voice.voice import pipeline as pipeline_module
from clara_voice.voice._livekit_job import _holds
from clara_voice.voice.pipeline import LiveKitPipeline
from clara_voice.voice.routing import RPC_END_TURN, RPC_START_TURN
from testkit.audio import energy
from testkit.fakes import FakeRoom
from testkit.pipeline import TURN_TIMEOUT, Harness, running_harness, spoken, until, user_texts
from testkit.tasks import other_tasks


@pytest.fixture
async def harness(room: FakeRoom, tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_harness(room, tmp_path / "data") as running:
        yield running


async def test_a_spoken_question_is_transcribed_answered_and_measured(harness: Harness) -> None:
    harness.deepgram.transcripts = ["what is the weather like today"]
    harness.openai.replies = ["It is sunny and warm today."]
    session = await harness.join("alice")
    assert session.session_type == "voice-vad"
    speaker = harness.media["alice"].speaker
    assert speaker is not None

    harness.speak("alice", "What is the weather like today?")
    reply = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await reply.wait_finished(timeout=TURN_TIMEOUT)
    await until(lambda: session.turns, timeout=5, what="the turn to be recorded")

    (request,) = harness.openai.chat_requests
    assert user_texts(request) == ["what is the weather like today"]
    assert request["messages"][0]["role"] == "system"
    assert "Clara" in str(request["messages"][0]["content"])
    assert harness.openai.speech_requests[-1]["input"] == "It is sunny and warm today."
    assert energy(reply.frames) > 0.01  # the reply's audio came out, not silence
    assert session.message_count == 2
    turn = session.turns[-1]
    assert turn.user_text == "what is the weather like today"
    assert turn.reply_text == "It is sunny and warm today."
    for figure in ("end_of_turn_delay", "transcription_delay", "llm_ttft", "tts_ttfb"):
        assert getattr(turn, figure) is not None, figure
        assert getattr(turn, figure) >= 0, figure
    assert turn.e2e_latency is not None
    assert turn.e2e_latency > 0
    assert harness.agent.metrics.audio_latency == pytest.approx(turn.e2e_latency)
    assert harness.agent.metrics.processing_time > 0
    assert harness.agent.error_count == 0


async def test_a_failed_llm_turn_is_apologised_for_and_the_next_turn_works(
    harness: Harness,
) -> None:
    harness.deepgram.transcripts = ["first question", "second question"]
    harness.openai.replies = ["Here is the second answer."]
    harness.openai.fail("chat", "status_500")
    session = await harness.join("alice")
    speaker = harness.media["alice"].speaker
    assert speaker is not None

    harness.speak("alice", "Tell me something.")
    apology = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await apology.wait_finished(timeout=TURN_TIMEOUT)
    assert spoken(harness.openai) == harness.settings.apology
    assert harness.agent.error_count == 1

    harness.speak("alice", "Tell me something else.")
    answer = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await answer.wait_finished(timeout=TURN_TIMEOUT)
    assert spoken(harness.openai).endswith(" Here is the second answer.")
    assert harness.openai.outcomes("chat")[0] != "ok"
    assert harness.agent.error_count == 1
    assert session.connection_state == "connected"


async def test_a_dropped_tts_connection_still_gets_a_spoken_apology(harness: Harness) -> None:
    harness.deepgram.transcripts = ["first question", "second question"]
    harness.openai.replies = ["First answer.", "Second answer."]
    harness.openai.fail("speech", "drop")
    await harness.join("alice")
    speaker = harness.media["alice"].speaker
    assert speaker is not None

    harness.speak("alice", "Tell me something.")
    cut = await speaker.next_segment(timeout=TURN_TIMEOUT)  # what came before the drop
    await cut.wait_finished(timeout=TURN_TIMEOUT)
    apology = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await apology.wait_finished(timeout=TURN_TIMEOUT)
    assert cut.duration < 0.5
    assert energy(apology.frames) > 0.01  # the bundled clip, the TTS being down
    assert apology.duration > 3.0
    assert harness.openai.speech_requests[-1]["input"] == "First answer."  # no TTS apology
    assert harness.agent.error_count == 1

    harness.speak("alice", "Tell me something else.")
    answer = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await answer.wait_finished(timeout=TURN_TIMEOUT)
    assert harness.openai.speech_requests[-1]["input"] == "Second answer."
    assert energy(answer.frames) > 0.01


async def test_an_apology_the_tts_fails_too_is_the_bundled_clip_and_no_error_escapes(
    harness: Harness,
) -> None:
    """Regression (issue 11's fault pass): when the LLM failed a turn and the TTS then
    failed the spoken apology too (one bad OpenAI key does both), the participant heard
    nothing and livekit's ``tts_say`` task ended with the TTS error that nobody read:
    asyncio logged "Task exception was never retrieved" with a traceback. Now the TTS's
    failure is counted as its own and apologised for with the bundled clip, once, and
    nothing reaches the loop's exception handler."""
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    try:
        harness.deepgram.transcripts = ["first question"]
        harness.openai.fail("chat", "status_500")
        harness.openai.fail("speech", "status_500", count=10)
        session = await harness.join("alice")
        speaker = harness.media["alice"].speaker
        assert speaker is not None

        harness.speak("alice", "Tell me something.")
        apology = await speaker.next_segment(timeout=TURN_TIMEOUT)
        await apology.wait_finished(timeout=TURN_TIMEOUT)
        assert energy(apology.frames) > 0.01  # the bundled clip
        assert apology.duration > 3.0
        asked = harness.openai.speech_requests[-1]["input"]  # its first sentence, refused
        assert harness.settings.apology.startswith(asked)
        assert harness.agent.error_count == 2  # the LLM's failure, then the TTS's
        assert len(speaker.segments) == 1  # the clip, once

        await harness.agent.cleanup_session(session.session_id)
        gc.collect()  # a task whose exception nobody read says so when it is collected
        assert escaped == []
    finally:
        loop.set_exception_handler(previous)


async def test_push_to_talk_turns_start_and_end_only_by_the_participants_rpc(
    harness: Harness,
) -> None:
    harness.deepgram.transcripts = ["this one was asked for"]
    harness.openai.replies = ["Push to talk answer."]
    session = await harness.join("alice", "voice-ptt")
    await harness.join("bob")
    assert session.session_type == "voice-ptt"
    local = harness.room.local_participant
    speaker = harness.media["alice"].speaker
    assert speaker is not None

    # speech without a turn is not listened to
    unheard = harness.speak("alice", "Nobody asked me to listen.")
    await unheard.wait_sent(timeout=TURN_TIMEOUT)

    # another participant cannot drive alice's turns
    with pytest.raises(rtc.RpcError):
        await local.call_rpc("bob", RPC_START_TURN)

    await local.call_rpc("alice", RPC_START_TURN)
    asked = harness.speak("alice", "This one was asked for.")
    await asked.wait_sent(timeout=TURN_TIMEOUT)
    await local.call_rpc("alice", RPC_END_TURN)
    answer = await speaker.next_segment(timeout=TURN_TIMEOUT)
    await answer.wait_finished(timeout=TURN_TIMEOUT)

    (request,) = harness.openai.chat_requests
    assert user_texts(request) == ["this one was asked for"]
    assert harness.openai.speech_requests[-1]["input"] == "Push to talk answer."


async def test_start_turn_over_an_uninterruptible_reply_is_refused_with_a_clear_error(
    harness: Harness,
) -> None:
    """Regression: ``clara.start_turn`` failed with a generic error when the speech being
    played could not be interrupted (interruptions off, or the apology)."""
    await harness.join("alice", "voice-ptt")
    media = harness.media["alice"]
    assert media.speaker is not None
    media.agent_session.say("Please hold on while I finish this.", allow_interruptions=False)
    await media.speaker.next_segment(timeout=TURN_TIMEOUT)

    with pytest.raises(rtc.RpcError) as refused:
        await harness.room.local_participant.call_rpc("alice", RPC_START_TURN)
    assert refused.value.code == rtc.RpcError.ErrorCode.APPLICATION_ERROR
    assert "can't be interrupted" in refused.value.message
    assert json.loads(refused.value.data or "")["error"] == "not_interruptible"
    assert not media.agent_session.input.audio_enabled  # the turn did not start

    await until(
        lambda: media.agent_session.current_speech is None,
        timeout=TURN_TIMEOUT,
        what="the reply finished",
    )
    assert await harness.room.local_participant.call_rpc("alice", RPC_START_TURN)


async def test_text_sessions_answer_text_with_text(harness: Harness) -> None:
    harness.openai.replies = ["A written answer."]
    session = await harness.join("carol", "text")
    assert session.session_type == "text"
    media = harness.media["carol"]
    assert not media.agent_session.input.audio_enabled  # bound (the type may switch), unused
    assert not media.agent_session.output.audio_enabled

    harness.room.send_text("carol", "Hello, can you read me?")
    reply = await media.text.next_reply(timeout=TURN_TIMEOUT)

    assert reply == "A written answer."
    (request,) = harness.openai.chat_requests
    assert user_texts(request) == ["Hello, can you read me?"]
    assert harness.openai.speech_requests == []
    await until(lambda: session.message_count == 2, timeout=5, what="both messages counted")


async def test_an_empty_user_message_is_neither_kept_nor_stored(harness: Harness) -> None:
    """Regression: closing a text session's job made livekit add an empty user message,
    which was counted and stored as a turn of the conversation."""
    session = await harness.join("carol", "text")
    agent_session = harness.media["carol"].agent_session
    for content in ([""], ["  "]):
        item = llm.ChatMessage(role="user", content=content)
        agent_session.emit("conversation_item_added", ConversationItemAddedEvent(item=item))
    assert session.message_count == 0 and session.history == []


async def test_a_failed_text_turn_is_apologised_for_in_text(harness: Harness) -> None:
    harness.openai.fail("chat", "status_500")
    await harness.join("carol", "text")
    text = harness.media["carol"].text

    harness.room.send_text("carol", "Are you there?")
    assert await text.next_reply(timeout=TURN_TIMEOUT) == harness.settings.apology
    assert harness.agent.error_count == 1

    harness.room.send_text("carol", "Are you there now?")
    assert await text.next_reply(timeout=TURN_TIMEOUT) == harness.openai.default_reply


async def test_an_unknown_session_type_falls_back_to_the_default(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    session = await harness.join("dave", "video-call")
    assert session.session_type == harness.settings.default_session_type
    assert any(r.getMessage().startswith("unknown session type") for r in caplog.records)


async def test_each_participant_has_its_own_conversation(harness: Harness) -> None:
    harness.openai.replies = lambda body: f"Answer to {user_texts(body)[-1]}."
    await harness.join("alice", "text")
    await harness.join("bob", "text")
    alice, bob = harness.media["alice"].text, harness.media["bob"].text

    harness.room.send_text("alice", "alice question")
    harness.room.send_text("bob", "bob question")
    assert await alice.next_reply(timeout=TURN_TIMEOUT) == "Answer to alice question."
    assert await bob.next_reply(timeout=TURN_TIMEOUT) == "Answer to bob question."
    for request in harness.openai.chat_requests:
        assert len(user_texts(request)) == 1


async def test_closing_a_session_is_prompt_and_leaves_nothing_behind(
    room: FakeRoom, harness: Harness
) -> None:
    baseline = other_tasks()
    session = await harness.join("alice")
    await harness.join("carol", "text")
    speaker = harness.media["alice"].speaker
    assert speaker is not None
    harness.speak("alice", "Say something long please.")
    await speaker.next_segment(timeout=TURN_TIMEOUT)  # close while the agent is speaking

    async with asyncio.timeout(2.0):  # no multi-second wait for missing playback events
        await harness.agent.cleanup_session(session.session_id)
    assert session.connection_state == "closed"

    await harness.agent.aclose()
    assert harness.room.local_participant.rpc_handlers == {}
    assert harness.room.text_stream_handlers == {}
    await until(lambda: other_tasks() <= baseline, timeout=2, what="the pipeline's tasks to end")


async def test_an_ended_session_leaves_no_callback_in_the_jobs_shutdown(
    job_ctx: JobContext, room: FakeRoom, tmp_path: Path
) -> None:
    """Regression: every AgentSession's job shutdown callback outlived its session (livekit
    registers the session's close with the job and offers no way to remove it), keeping
    every ended session alive until the job ended. This also pins the livekit internals
    ``forget_job_shutdown_callbacks`` relies on: a livekit upgrade that moves them fails
    here."""
    token = _JobContextVar.set(job_ctx)
    try:
        async with running_harness(room, tmp_path / "data") as harness:
            alice = await harness.join("alice")
            await harness.join("bob")
            assert len(job_ctx._shutdown_callbacks) == 2  # livekit's, one per AgentSession

            await harness.agent.cleanup_session(alice.session_id)
            bob_session = harness.media["bob"].agent_session
            assert len(job_ctx._shutdown_callbacks) == 1
            assert _holds(job_ctx._shutdown_callbacks[0], bob_session, depth=2)
        assert job_ctx._shutdown_callbacks == []
    finally:
        _JobContextVar.reset(token)


class _HungSession(rtc.EventEmitter[str]):
    """An AgentSession whose close never finishes (a provider that never lets go)."""

    async def aclose(self) -> None:
        await asyncio.Event().wait()


class _Media:
    def __init__(self) -> None:
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_a_pipeline_whose_session_close_times_out_still_closes_its_media(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """Regression: when closing the AgentSession timed out, the pipeline skipped closing
    its media, leaving the agent's track published and RoomIO's handlers registered."""
    monkeypatch.setattr(pipeline_module, "CLOSE_TIMEOUT", 0.05)
    pipeline = LiveKitPipeline(
        agent_session=_HungSession(),  # type: ignore[arg-type]
        identity="alice",
        session_type="voice-vad",
        events=None,  # type: ignore[arg-type]
        settings=settings,
        eot=lambda: None,
        log=get_logger("test"),
    )
    media = pipeline.media = _Media()

    with pytest.raises(ExceptionGroup) as failed:
        await pipeline.aclose()
    assert failed.group_contains(TimeoutError)
    assert media.closed
