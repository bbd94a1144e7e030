"""Each participant's conversation is private, enforced by the SFU: Alice and Bob talk to
Clara in the same room; neither hears, reads or is told anything of the other's.

Regression (issue 9): every conversation was broadcast to the whole room (each
participant's agent track open to every subscriber, transcripts sent with no
destination), which only a real SFU could show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livekit import rtc

from testkit.checks import event, joined, talk, wait_rows
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from tests.e2e.conftest import Providers, StartClara

ALICE_REPLY = "Alice, you have two meetings."
BOB_REPLY = "Bob, it will rain."


def agent_track(human: Human, owner: str) -> rtc.RemoteTrackPublication | None:
    """The agent's audio track answering ``owner``, as ``human`` sees it published."""
    agent = human.agent
    tracks = [] if agent is None else agent.track_publications.values()
    return next((p for p in tracks if p.name == f"clara-voice-{owner}"), None)


async def test_two_participants_never_hear_read_or_see_each_others_conversation(
    livekit_server: LiveKitServer, clara: StartClara, room_name: str, providers: Providers
) -> None:
    providers.deepgram.transcripts = [
        "alice asks about her calendar",
        "bob asks about the weather",
        "bob asks again",
    ]
    providers.openai.replies = [ALICE_REPLY, BOB_REPLY, BOB_REPLY]
    worker = await clara()
    alice = Human(livekit_server, room_name, "alice")
    # Bob subscribes by hand, to ask for Alice's track as well as his own
    bob = Human(livekit_server, room_name, "bob", auto_subscribe=False)
    await joined(worker, alice, bob)

    # the agent publishes a track per person; Bob asks for both his and Alice's: the SFU
    # grants his own (the control that bounds the wait) and refuses Alice's
    alice_track = await bob.wait_until(lambda: agent_track(bob, "alice"), "alice's track")
    bob_track = await bob.wait_until(lambda: agent_track(bob, "bob"), "bob's track")
    alice_track.set_subscribed(True)
    bob_track.set_subscribed(True)
    await bob.wait_until(lambda: bob.subscriptions, "his subscription")

    await talk(alice, "Do I have meetings today", ALICE_REPLY)
    await talk(bob, "Will it rain tomorrow", BOB_REPLY)
    await talk(bob, "Ask again", BOB_REPLY)
    own = agent_track(alice, "alice")
    assert own is not None
    assert alice.subscriptions == [own.sid]  # auto-subscribed to everything: got her own
    assert bob.subscriptions == [bob_track.sid]
    assert not alice_track.subscribed

    # transcripts: each reads its own words and Clara's answers to it, nothing else
    assert {s.sender for s in alice.streams} == {"alice", alice.agent.identity}  # type: ignore[union-attr]
    assert {s.sender for s in bob.streams} == {"bob", bob.agent.identity}  # type: ignore[union-attr]
    assert not [s for s in alice.agent_transcripts() if s.text == BOB_REPLY]
    assert not [s for s in bob.agent_transcripts() if s.text == ALICE_REPLY]

    # sync events: each gets its own session's only
    assert alice.sync_events and bob.sync_events
    assert {e["payload"]["participant"] for e in alice.sync_events} == {"alice"}
    assert {e["payload"]["participant"] for e in bob.sync_events} == {"bob"}

    # the agent's state: one attribute per conversation, and lk.agent.state for the room
    agent = alice.agent
    assert agent is not None
    assert agent.attributes["clara.agent_state.alice"] in ("listening", "thinking", "speaking")
    assert agent.attributes["lk.agent.state"] in ("listening", "thinking", "speaking")

    await alice.leave()
    await worker.wait_line(event("session closed", participant="alice"), "alice's session closed")
    # her track is unpublished and her state attribute removed, as Bob sees it
    await bob.wait_until(
        lambda: (
            not [p for p in bob.agent.track_publications.values() if p.name.endswith("-alice")]  # type: ignore[union-attr]
            and "clara.agent_state.alice" not in bob.agent.attributes
        ),  # type: ignore[union-attr]
        "alice's agent track and state gone",
    )
    await bob.leave()


SECRET = "my pin is four seven one one"


async def test_a_later_joiner_never_gets_what_was_said_before_it_came(
    livekit_server: LiveKitServer,
    clara: StartClara,
    room_name: str,
    providers: Providers,
    tmp_path: Path,
) -> None:
    """Regression (issue 16, critical 1): every new session was seeded with the room's
    earlier messages, so Bob, joining after Alice told Clara a secret, had her words in
    his LLM requests and Clara could repeat them to him."""
    providers.deepgram.transcripts = [SECRET, "what is the weather"]
    providers.openai.replies = [ALICE_REPLY, BOB_REPLY]
    worker = await clara()
    alice = Human(livekit_server, room_name, "alice")
    await joined(worker, alice)
    await talk(alice, "My pin is four seven one one", ALICE_REPLY)

    bob = Human(livekit_server, room_name, "bob")  # joins after the secret was said
    await joined(worker, bob)
    await talk(bob, "What is the weather", BOB_REPLY)

    def said(request: dict[str, Any]) -> str:
        return " ".join(str(m.get("content")) for m in request["messages"])

    alices, bobs = providers.openai.chat_requests
    assert SECRET in said(alices)  # the control: the request did carry what was said
    assert SECRET not in said(bobs) and ALICE_REPLY not in said(bobs)
    assert SECRET not in " ".join(t.text for t in bob.streams)
    await bob.leave()
    rows = await wait_rows(
        tmp_path / "data",
        "SELECT text FROM messages WHERE participant = ? ORDER BY seq",
        "bob",
        count=2,
    )
    assert SECRET not in " ".join(text for (text,) in rows)
    await alice.leave()
