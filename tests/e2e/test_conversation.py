"""A spoken conversation end to end: real speech from a real client, through the SFU, to
the worker's pipeline (loopback Deepgram, LLM and TTS), and Clara's answers back.

With one person in the room, everything livekit's frontend components expect is there:
the agent's audio track, ``lk.transcription`` streams, and ``lk.agent.state``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from testkit.checks import event, joined, wait_rows
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import Providers, StartClara

QUESTIONS = [
    "What is the weather like today",
    "Should I take an umbrella",
    "Thank you very much",
]
REPLIES = ["It is sunny and warm today.", "No, you will not need one.", "You are welcome."]


async def test_spoken_questions_are_answered_with_audio_and_transcripts_and_stored(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
    tmp_path: Path,
) -> None:
    providers.deepgram.transcripts = [q.lower() for q in QUESTIONS]
    providers.openai.replies = list(REPLIES)
    worker = await clara()
    alice = Human(livekit_server, room_name, "alice")
    await joined(worker, alice)

    latencies = []
    for question, reply in zip(QUESTIONS, REPLIES, strict=True):
        utterance = alice.say(question)
        await alice.wait_until(utterance.ended.is_set, "the utterance was sent")
        assert utterance.ended_at is not None
        heard_at = await alice.wait_until(
            lambda u=utterance: alice.agent_sound_after(u.ended_at or 0.0),  # type: ignore[misc]
            "Clara's reply audio",
            timeout=20,
        )
        latencies.append(heard_at - utterance.ended_at)
        await alice.wait_until(
            lambda r=reply: [t for t in alice.agent_transcripts() if t.text == r],  # type: ignore[misc]
            "Clara's transcript",
        )
    print(
        "\nend of speech -> first reply audio at the client (ms): "
        + ", ".join(f"{1000 * s:.0f}" for s in latencies)
        + f"; median {1000 * statistics.median(latencies):.0f}"
    )

    assert [t.text for t in alice.user_transcripts()] == [q.lower() for q in QUESTIONS]
    assert [t.text for t in alice.agent_transcripts()] == REPLIES
    # one agent track, hers, that carried sound; the agent's state as livekit publishes it
    assert len(alice.subscriptions) == 1
    assert [h.loudest() > 0.01 for h in alice.heard.values()] == [True]
    states = {c["lk.agent.state"] for c in alice.agent_attribute_changes if "lk.agent.state" in c}
    assert {"listening", "thinking", "speaking"} <= states

    await worker.wait_line(event("turn completed", participant="alice"), "the turns logged")
    await alice.leave()
    rows = await wait_rows(
        tmp_path / "data",
        "SELECT role, text FROM messages WHERE participant = ? ORDER BY seq",
        "alice",
        count=6,
    )
    expected = [
        m
        for q, r in zip(QUESTIONS, REPLIES, strict=True)
        for m in (("user", q.lower()), ("assistant", r))
    ]
    assert rows == expected
