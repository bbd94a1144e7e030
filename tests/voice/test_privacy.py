"""The room view each participant's RoomIO gets: what the agent sends goes to that
participant only (tests/e2e/test_privacy.py proves it through a real SFU).

Regression (issue 9): every participant's RoomIO published its agent audio track with
default subscription permissions and sent its transcripts on ``lk.transcription`` with no
destination, so Bob heard Clara's answers to Alice and read Alice's transcript; all the
RoomIOs overwrote the one ``lk.agent.state`` attribute; an ended session's track stayed
published. Each test below pins one of those."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from livekit import rtc

from clara_voice.logging import get_logger
from clara_voice.voice import privacy as privacy_module
from clara_voice.voice.agent_state import agent_state_attribute, busiest_state
from clara_voice.voice.privacy import DirectedLocalParticipant, ParticipantView
from clara_voice.voice.streams import STREAM_BURST
from clara_voice.voice.surface import RoomSurface
from testkit.fakes import FakeLocalParticipant, FakeRoom
from testkit.pipeline import until

PRE_CONNECT = "lk.agent.pre-connect-audio-buffer"


class RecordingLocal(FakeLocalParticipant):
    """The agent's participant, recording what it publishes and sends."""

    def __init__(self) -> None:
        super().__init__()
        self.permissions: list[tuple[bool, dict[str, list[str]]]] = []
        self.track_publications: dict[str, Any] = {}
        self.sent: list[tuple[str, list[str] | None]] = []
        self.transcriptions = 0
        self.unpublishing = asyncio.Event()
        self.answers = True
        self._n = 0

    def set_track_subscription_permissions(
        self, *, allow_all_participants: bool, participant_permissions: list[Any]
    ) -> None:
        grants = {
            p.participant_identity: list(p.allowed_track_sids) for p in participant_permissions
        }
        self.permissions.append((allow_all_participants, grants))

    async def publish_track(self, track: Any, options: Any = None) -> Any:
        self._n += 1
        publication = type("Publication", (), {"sid": f"TR_{self._n}"})()
        self.track_publications[publication.sid] = publication
        return publication

    async def unpublish_track(self, track_sid: str) -> None:
        self.unpublishing.set()
        if not self.answers:  # a room deleted under the unpublish: no answer ever comes
            await asyncio.Event().wait()
        del self.track_publications[track_sid]

    async def publish_transcription(self, transcription: Any) -> None:
        self.transcriptions += 1

    async def stream_text(self, **kwargs: Any) -> Any:
        self.sent.append(("stream_text", kwargs.get("destination_identities")))

    async def send_text(self, text: str, **kwargs: Any) -> Any:
        self.sent.append(("send_text", kwargs.get("destination_identities")))

    async def stream_bytes(self, name: str, **kwargs: Any) -> Any:
        self.sent.append(("stream_bytes", kwargs.get("destination_identities")))

    async def send_bytes(self, data: bytes, **kwargs: Any) -> Any:
        self.sent.append(("send_bytes", kwargs.get("destination_identities")))

    async def send_file(self, file_path: str, **kwargs: Any) -> Any:
        self.sent.append(("send_file", kwargs.get("destination_identities")))


class ByteStreamRoom(FakeRoom):
    def __init__(self) -> None:
        super().__init__()
        self.local_participant = RecordingLocal()  # type: ignore[assignment]
        self.connected = True


@pytest.fixture
def room() -> ByteStreamRoom:
    return ByteStreamRoom()


class Surface(RoomSurface):
    def view(self, identity: str) -> ParticipantView:
        return ParticipantView(self, identity)


@pytest.fixture
async def privacy(room: ByteStreamRoom) -> Any:
    surface = Surface(room, log=get_logger("test"), attribute_interval=0.0)  # type: ignore[arg-type]
    surface.start()
    yield surface
    await surface.aclose()
    assert room.listener_count() == 0
    assert room.byte_stream_handlers == {} and room.text_stream_handlers == {}


def local(room: ByteStreamRoom) -> RecordingLocal:
    return room.local_participant  # type: ignore[return-value]


async def test_each_agent_track_is_granted_to_its_owner_only_and_goes_with_it(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    alice, bob = privacy.view("alice"), privacy.view("bob")
    a = await alice.local_participant.publish_track(object())
    b = await bob.local_participant.publish_track(object())

    # restricted before the first track existed, then each track granted to its owner
    assert local(room).permissions[0] == (False, {})
    assert local(room).permissions[-1] == (False, {"alice": [a.sid], "bob": [b.sid]})

    await alice.aclose()
    assert a.sid not in local(room).track_publications  # unpublished with the session
    assert local(room).permissions[-1] == (False, {"bob": [b.sid]})
    await alice.aclose()  # twice is fine


async def test_closing_a_session_does_not_wait_for_a_room_that_is_gone(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    """Regression (issue 17, item 5): once a room is deleted the server never answers an
    unpublish, and closing a session waited for one (``UNPUBLISH_TIMEOUT``, and before that
    bound until livekit gave up on the job, 300 s), then logged an error for a room that was
    simply gone. Its tracks went with it: there is nothing to unpublish."""
    alice = privacy.view("alice")
    await alice.local_participant.publish_track(object())
    local(room).answers = False
    room.connected = False

    await alice.aclose()  # returns at once, raising nothing

    assert not local(room).unpublishing.is_set()


@pytest.mark.parametrize("gone", [True, False])
async def test_an_unpublish_left_unanswered_is_bounded_and_a_failure_only_while_the_room_is_there(
    room: ByteStreamRoom, privacy: Surface, monkeypatch: pytest.MonkeyPatch, gone: bool
) -> None:
    monkeypatch.setattr(privacy_module, "UNPUBLISH_TIMEOUT", 0.05)
    alice = privacy.view("alice")
    await alice.local_participant.publish_track(object())
    local(room).answers = False

    async def room_deleted() -> None:  # while the unpublish waits for its answer
        await local(room).unpublishing.wait()
        room.connected = not gone

    deleted = asyncio.create_task(room_deleted())
    if gone:
        await alice.aclose()
    else:  # the track may still be published: that is a failure
        with pytest.raises(ExceptionGroup) as failed:
            await alice.aclose()
        assert failed.group_contains(TimeoutError)
    await deleted


async def test_a_republished_track_keeps_its_grant(room: ByteStreamRoom, privacy: Surface) -> None:
    alice = privacy.view("alice")
    publication = await alice.local_participant.publish_track(object())
    old = publication.sid
    publication.sid = "TR_new"  # a full reconnect re-issues the sid in place
    room.emit("local_track_republished", publication, old)
    assert local(room).permissions[-1] == (False, {"alice": ["TR_new"]})


async def test_what_the_agent_sends_through_a_view_goes_to_its_participant_only(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    directed = privacy.view("alice").local_participant
    await directed.stream_text(topic="lk.transcription", destination_identities=["bob"])
    await directed.send_text("hi", topic="lk.chat")
    await directed.stream_bytes("f", topic="x")
    await directed.send_bytes(b"x", topic="x")
    await directed.send_file("/dev/null", topic="x")
    await directed.publish_data(b"x", topic="x")
    await directed.publish_transcription(rtc.Transcription("alice", "TR_1", []))

    assert [to for _, to in local(room).sent] == [["alice"]] * 5
    assert local(room).published == [("x", "x", ["alice"])]
    assert local(room).transcriptions == 0  # the deprecated packet cannot be addressed


def test_every_way_the_sdk_offers_to_send_is_directed() -> None:
    """Fails loudly when a livekit upgrade adds a way to send that a view would let through
    to the whole room."""
    senders = {
        name
        for name, method in inspect.getmembers(rtc.LocalParticipant, inspect.isfunction)
        if not name.startswith("_")
        and "destination_identities" in inspect.signature(method).parameters
    }
    senders |= {"publish_track", "publish_transcription", "set_attributes"}
    assert senders <= set(vars(DirectedLocalParticipant)), senders - set(
        vars(DirectedLocalParticipant)
    )


async def test_agent_states_are_per_participant_and_lk_agent_state_is_the_busiest(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    alice, bob = privacy.view("alice"), privacy.view("bob")
    await alice.local_participant.set_attributes({"lk.agent.state": "speaking"})
    await bob.local_participant.set_attributes({"lk.agent.state": "listening"})
    attributes = room.local_participant.attributes

    # one writer task publishes the states (coalescing them); wait for it
    await until(
        lambda: attributes.get(agent_state_attribute("bob")) == "listening",
        timeout=2,
        what="the states written",
    )
    assert attributes[agent_state_attribute("alice")] == "speaking"
    assert attributes["lk.agent.state"] == "speaking"

    await alice.aclose()
    await until(lambda: agent_state_attribute("alice") not in attributes, timeout=2, what="removal")
    assert attributes["lk.agent.state"] == "listening"


def test_the_busiest_state_wins() -> None:
    assert busiest_state([]) is None
    assert busiest_state(["listening"]) == "listening"
    assert busiest_state(["listening", "thinking", "idle"]) == "thinking"
    assert busiest_state(["initializing", "speaking"]) == "speaking"


async def test_stream_handlers_are_per_participant(room: ByteStreamRoom, privacy: Surface) -> None:
    got: list[tuple[str, str]] = []
    alice, bob = privacy.view("alice"), privacy.view("bob")
    alice.register_byte_stream_handler(
        "lk.agent.pre-connect-audio-buffer", lambda r, s: got.append(("a", s))
    )
    bob.register_byte_stream_handler(
        "lk.agent.pre-connect-audio-buffer", lambda r, s: got.append(("b", s))
    )

    room.send_bytes("alice", [b"a"], PRE_CONNECT)
    room.send_bytes("bob", [b"b"], PRE_CONNECT)
    stranger = room.send_bytes("mallory", [b"m"], PRE_CONNECT)  # no session: refused
    assert got == [("a", "alice"), ("b", "bob")]
    assert stranger.closed and stranger.chunks_read == 0

    alice.unregister_byte_stream_handler("lk.agent.pre-connect-audio-buffer")
    late = room.send_bytes("alice", [b"a"], PRE_CONNECT)
    room.send_bytes("bob", [b"b"], PRE_CONNECT)
    assert got[-1] == ("b", "bob") and len(got) == 3
    assert late.closed
    await bob.aclose()
    assert room.byte_stream_handlers == {}


async def test_streams_clara_does_not_read_are_closed_at_once(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    """Regression (issue 16, item 4): a refused or ignored stream reader was left open, and
    livekit's readers stay subscribed to every FFI event (audio frames included) and keep
    their chunks until closed."""
    kept: list[Any] = []
    alice = privacy.view("alice")
    alice.register_byte_stream_handler(PRE_CONNECT, lambda reader, sender: kept.append(reader))

    # a flood from one sender: past the budget, each stream is closed unread
    flood = [room.send_bytes("alice", [b"x"], PRE_CONNECT) for _ in range(int(STREAM_BURST) + 3)]
    assert len(kept) == STREAM_BURST
    assert all(r.closed and r.chunks_read == 0 for r in flood[int(STREAM_BURST) :])
    assert privacy.streams.refused["rate_limited"] == 3

    # the streams handed over and not finished are closed when the conversation ends
    assert privacy.streams.open_readers() == STREAM_BURST
    await alice.aclose()
    assert all(r.closed for r in flood)
    assert privacy.streams.open_readers() == 0


async def test_a_stream_past_its_bound_ends_and_is_closed(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    read: list[bytes] = []
    failures: list[Exception] = []

    async def consume(reader: Any) -> None:
        try:
            async for chunk in reader:
                read.append(chunk)
        except rtc.StreamError as exc:
            failures.append(exc)

    tasks: list[Any] = []
    privacy.streams.add(
        "byte",
        "big",
        "alice",
        lambda reader, sender: tasks.append(asyncio.ensure_future(consume(reader))),
        max_bytes=10,
    )
    huge = room.send_bytes("alice", [b"x" * 6] * 100, "big")
    await asyncio.gather(*tasks)

    assert huge.closed and huge.chunks_read == 2  # not read past the bound
    assert len(read) == 1 and failures and "over 10 bytes" in str(failures[0])
    assert privacy.streams.refused["too_large"] == 1
    assert privacy.streams.open_readers() == 0
    privacy.streams.remove("byte", "big", "alice")


async def test_stream_budgets_outlive_a_leave_and_rejoin(
    room: ByteStreamRoom, privacy: Surface
) -> None:
    """Regression (issue 16, item 4): leaving and joining again must not refill a sender's
    budget."""
    for _ in range(2):
        view = privacy.view("alice")
        view.register_byte_stream_handler(PRE_CONNECT, lambda reader, sender: reader.close())
        for _ in range(int(STREAM_BURST)):
            room.send_bytes("alice", [b"x"], PRE_CONNECT)
        await view.aclose()
    assert privacy.streams.refused["rate_limited"] >= STREAM_BURST - 1
