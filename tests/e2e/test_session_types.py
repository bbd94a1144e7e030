"""Seed 003's session types from a real client: the type in the token, switched by RPC,
push-to-talk by RPC, and chat answered as text."""

from __future__ import annotations

import json

import pytest
from livekit import rtc

from testkit.checks import joined
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import Providers, StartClara


def user_turns(providers: Providers) -> list[str]:
    """The user messages of the LLM's last request (the conversation so far)."""
    if not providers.openai.chat_requests:
        return []
    messages = providers.openai.chat_requests[-1]["messages"]
    return [str(m["content"]) for m in messages if m["role"] == "user"]


async def test_a_text_session_from_the_token_switches_to_voice_by_rpc_and_keeps_talking(
    livekit_server: LiveKitServer, clara: StartClara, providers: Providers, room_name: str
) -> None:
    providers.openai.replies = ["A written answer.", "A spoken answer."]
    providers.deepgram.transcripts = ["now i am speaking"]
    worker = await clara()
    carol = Human(livekit_server, room_name, "carol", session_type="text")
    await joined(worker, carol)
    config = await carol.wait_until(carol.session_config, "the session config")
    assert config["type"] == "text"
    assert config["turn_detection"] == "none"

    await carol.chat("Hello, can you read me?")
    await carol.wait_until(
        lambda: [t for t in carol.agent_transcripts() if t.text == "A written answer."],
        "the written answer",
    )
    assert not carol.heard or max(h.loudest() for h in carol.heard.values()) < 0.01  # no voice

    with pytest.raises(rtc.RpcError) as refused:
        await carol.rpc("clara.set_session_type", json.dumps({"type": "voice"}))
    assert json.loads(refused.value.data or "")["error"] == "unknown_type"

    answer = json.loads(await carol.rpc("clara.set_session_type", '{"type": "voice-vad"}'))
    assert answer["ok"] and answer["config"]["type"] == "voice-vad"
    assert answer["config"]["turn_detection"] == "server"

    utterance = carol.say("Now I am speaking")
    await carol.wait_until(utterance.ended.is_set, "the utterance was sent")
    await carol.wait_until(
        lambda: carol.agent_sound_after(utterance.ended_at or 0.0), "the spoken answer", timeout=20
    )
    assert user_turns(providers) == ["Hello, can you read me?", "now i am speaking"]
    await carol.leave()


async def test_push_to_talk_hears_only_what_is_said_between_start_and_end_turn(
    livekit_server: LiveKitServer, clara: StartClara, providers: Providers, room_name: str
) -> None:
    providers.openai.replies = ["Push to talk answer."]
    providers.deepgram.transcripts = ["this one was asked for"]
    worker = await clara()
    dave = Human(livekit_server, room_name, "dave", session_type="voice-ptt")
    await joined(worker, dave)
    config = await dave.wait_until(dave.session_config, "the session config")
    assert (config["type"], config["turn_detection"]) == ("voice-ptt", "client")

    unheard = dave.say("Nobody asked me to listen")
    await dave.wait_until(unheard.finished.is_set, "the unheard speech was sent")

    assert json.loads(await dave.rpc("clara.start_turn")) == {
        "ok": True,
        "method": "clara.start_turn",
    }
    asked = dave.say("This one was asked for", trailing_silence=0.5)
    await dave.wait_until(asked.finished.is_set, "the turn's speech was sent")
    await dave.rpc("clara.end_turn")
    await dave.wait_until(
        lambda: [t for t in dave.agent_transcripts() if t.text == "Push to talk answer."],
        "the answer",
        timeout=20,
    )
    assert dave.agent_sound_after(asked.ended_at or 0.0)
    # only the held turn reached the LLM: the speech before it was never listened to
    assert len(providers.openai.chat_requests) == 1
    assert user_turns(providers) == ["this one was asked for"]
    await dave.leave()
