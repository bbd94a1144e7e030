"""The web page (``web/``) in a real browser: Debian's Chromium, through Playwright, on the
page ``python -m clara_voice web`` serves, talking to the real worker through the real
LiveKit server (the providers are the loopback peers). The microphone is Chromium's fake
capture device playing an espeak-ng WAV over and over: an utterance, then seconds of
silence. What the tests assert is what a person sees and hears on the page: the status
line, the transcript, Clara's voice as the page plays it (measured in the page by an
``AnalyserNode`` of the test's own), the push-to-talk button; ``window.claraDebug`` and
the probes of ``testkit/browser.py`` only say when to look.

The browser makes its room as a person's would: it joins with the page's token, which asks
for Clara's agent (LiveKit's explicit dispatch), while the machine is busy starting
Chromium; the worker's load is its own, so it takes the job (issue 17).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.browser import (
    SOUND_RMS,
    STEP_TIMEOUT,
    ClaraPage,
    PageNotBuiltError,
    WebPageServer,
    check_page_built,
    chromium,
    microphone_wav,
    running_web_page,
)
from testkit.checks import event, joined, talk
from testkit.human import Human
from testkit.livekit_server import LiveKitServer
from testkit.network import CLIENT_GID, Outage
from tests.e2e.conftest import Providers, StartClara

QUESTION = "What is the weather like today"
SPOKEN_REPLY = "It is sunny and warm today."
TYPED = "Could you write that down for me?"
TYPED_REPLY = "Sunny and warm, in writing."
HELD = "This one was asked for"
PTT_REPLY = "Push to talk answer, spoken once the button is let go."  # 3 s of voice
# web/src/status.ts, the seed's words
FAILED_MESSAGE = "Connection lost. Please check your internet and try starting a new session."

SILENCE_AFTER_SPEECH = 5.0
"""Seconds of silence after each utterance of the looping microphone: more than a turn
takes, so Clara is not interrupted by the next one."""
TURN_TIMEOUT = 40.0  # a loop of the microphone (~7 s), then the turn, on a busy machine
OUTAGE_SECONDS = 5.0
NOTICE_TIMEOUT = 45.0  # LiveKit's ping timeout is 15 s, its resume attempt up to 15 s more
BACKOFF_MS = [1000, 2000, 4000, 8000, 16000]  # web/src/reconnect.ts, seed 001
FAILED_TIMEOUT = 200.0
"""Seconds from the cut to "Failed": notice (~15 s), livekit-client's one resume attempt
(~15 s), the backoff (31 s) and five attempts whose token requests time out (10 s each)."""


@pytest.fixture
async def web_page(livekit_server: LiveKitServer) -> AsyncIterator[WebPageServer]:
    """``python -m clara_voice web`` for the test's server, stopped when the test ends."""
    try:
        check_page_built()
    except PageNotBuiltError as exc:
        pytest.fail(str(exc), pytrace=False)
    async with running_web_page(
        livekit_url=livekit_server.url,
        api_key=livekit_server.api_key,
        api_secret=livekit_server.api_secret,
    ) as server:
        yield server


def answers(replies: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """The loopback LLM's reply to a request: by its last user message."""

    def reply(request: dict[str, Any]) -> str:
        said = [str(m["content"]) for m in request["messages"] if m["role"] == "user"]
        return replies.get(said[-1] if said else "", "I did not expect that.")

    return reply


def user_turns(providers: Providers) -> list[str]:
    """The user messages of the LLM's last request (the conversation so far)."""
    if not providers.openai.chat_requests:
        return []
    messages = providers.openai.chat_requests[-1]["messages"]
    return [str(m["content"]) for m in messages if m["role"] == "user"]


SHOWN_STATES = """() => {
  window.__shownStates = [];
  const line = document.getElementById('agent-state');
  new MutationObserver(() => window.__shownStates.push(line.textContent)).observe(line, {
    childList: true, characterData: true, subtree: true,
  });
}"""
"""Records every text the page's agent-state line shows from now on."""


def clara_said(text: str) -> str:
    """A condition: the page's transcript holds Clara's final ``text``."""
    return (
        f"d.transcript.some(e => e.speaker === 'clara' && e.final && e.text === {json.dumps(text)})"
    )


def session_ids(state: dict[str, Any], identity: str) -> set[str]:
    """The session ids of the ``clara.sync`` events the page received about ``identity``."""
    return {
        e["sessionId"]
        for e in state["syncEvents"]
        if e["participant"] == identity and e["sessionId"] is not None
    }


async def type_message(page: ClaraPage, text: str, reply: str) -> None:
    """Type ``text``, send it with the button, and wait for Clara's written ``reply``."""
    await page.page.fill("#chat-input", text)
    await page.page.click("#send-chat")
    await page.wait_for(clara_said(reply), f"Clara's answer to {text!r}")
    assert await page.page.input_value("#chat-input") == ""


async def test_a_spoken_question_is_answered_aloud_and_switching_to_text_keeps_the_conversation(
    livekit_server: LiveKitServer,
    clara: StartClara,
    providers: Providers,
    web_page: WebPageServer,
    room_name: str,
    tmp_path: Path,
) -> None:
    providers.deepgram.default_transcript = QUESTION.lower()
    providers.openai.replies = answers({QUESTION.lower(): SPOKEN_REPLY, TYPED: TYPED_REPLY})
    worker = await clara()
    microphone = microphone_wav(tmp_path / "microphone.wav", QUESTION, SILENCE_AFTER_SPEECH)

    async with chromium(tmp_path, microphone=microphone) as browser:
        page = await ClaraPage.open(browser, web_page.url)
        ada = await page.start(room=room_name, name="Ada", session_type="voice-vad")
        assert await page.text("#status-text") == "Connected"

        await page.wait_for(clara_said(SPOKEN_REPLY), "Clara's spoken answer", timeout=TURN_TIMEOUT)
        await page.wait_for(
            "p.agent.soundWhileSpeakingMs >= 500", "Clara's voice playing on the page"
        )
        probe, state = await page.probe(), await page.debug()
        print(
            f"\nClara's voice on the page: loudest RMS {probe['agent']['max']:.3f}, "
            f"{probe['agent']['soundMs']:.0f} ms of sound "
            f"(the page's own meter: {state['agentAudioLevelMax']:.3f})"
        )
        assert probe["agent"]["playing"] == 1  # one <audio> element, playing her track
        assert state["agentAudioLevelMax"] > SOUND_RMS  # the page's meter heard her too
        assert state["linkArmed"]  # the link-stall watch is watching this voice session
        assert await page.text("#agent-audio-info") == "Clara's audio: playing"
        shown = await page.transcript()
        assert ("You", QUESTION.lower()) in shown
        assert ("Clara", SPOKEN_REPLY) in shown

        screenshot = tmp_path / "connected-page.png"
        await page.page.screenshot(path=screenshot, full_page=True)
        print(f"screenshot of the connected page: {screenshot}")
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Voice -> Text, in the same session
        before = session_ids(state, ada)
        assert len(before) == 1
        await page.page.select_option("#session-type", "text")
        await page.page.click("#switch-type")
        await page.wait_for(
            "d.sessionType === 'text' && d.config && d.config.type === 'text'"
            " && d.config.state === 'active'",
            "the session switched to text",
        )
        assert await page.text("#config-type") == "Text (text)"
        await page.wait_for("!d.linkArmed", "the link-stall watch off with the microphone muted")
        await type_message(page, TYPED, TYPED_REPLY)

        shown = await page.transcript()
        spoken = shown.index(("Clara", SPOKEN_REPLY))
        assert shown.index(("You", QUESTION.lower())) < spoken  # the earlier conversation
        assert shown[-2:] == [("You", TYPED), ("Clara", TYPED_REPLY)]
        assert spoken < len(shown) - 2
        assert await page.text("#status-text") == "Connected"
        assert session_ids(await page.debug(), ada) == before
        # a healthy voice session never shows a false alarm of the link-stall watch
        texts = [t["text"] for t in (await page.probe())["statusTexts"]]
        assert "Reconnecting…" not in texts, texts
        assert page.errors == []

    assert len(worker.find(event("session initialized", participant=ada))) == 1
    assert not worker.find(event("cleaning up session", participant=ada))
    assert user_turns(providers)[-1] == TYPED


async def test_push_to_talk_answers_only_what_is_said_while_the_button_is_held(
    livekit_server: LiveKitServer,
    clara: StartClara,
    providers: Providers,
    web_page: WebPageServer,
    room_name: str,
    tmp_path: Path,
) -> None:
    providers.deepgram.transcripts = [HELD.lower()]  # what the STT hears first
    providers.openai.replies = [PTT_REPLY]
    await clara()
    microphone = microphone_wav(tmp_path / "microphone.wav", HELD, SILENCE_AFTER_SPEECH)

    async with chromium(tmp_path, microphone=microphone) as browser:
        page = await ClaraPage.open(browser, web_page.url)
        await page.start(room=room_name, name="Bo", session_type="voice-ptt")
        await page.wait_for("d.config && d.config.state === 'active'", "the session active")
        ptt = page.page.locator("#ptt")
        await ptt.wait_for(state="visible")
        assert await ptt.is_enabled()

        # an utterance from start to end with the button up: nobody answers it
        first = len((await page.probe())["mic"]["spans"])
        await page.wait_for(
            f"p.mic.spans.length > {first} && p.mic.spans[{first}].end !== null",
            "an utterance with the button up",
            timeout=TURN_TIMEOUT,
        )
        assert await page.transcript() == []  # not a word of it reached Clara
        # the next utterance, with the button held from before it starts to after it ends
        box = await ptt.bounding_box()
        assert box is not None
        await page.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.page.mouse.down()
        pressed_at = await page.wait_for("d.pttPressed && performance.now()", "the button held")
        assert await ptt.get_attribute("aria-pressed") == "true"
        held = await page.wait_for(
            f"p.mic.spans.length > {first + 1} && p.mic.spans[{first + 1}].end !== null"
            f" && p.mic.spans[{first + 1}]",
            "an utterance with the button held",
            timeout=TURN_TIMEOUT,
        )
        assert held["start"] > pressed_at
        await page.page.mouse.up()
        await page.wait_for("!d.pttPressed", "the button released")

        await page.wait_for(clara_said(PTT_REPLY), "Clara's answer to the held turn")
        await page.wait_for("p.agent.soundWhileSpeakingMs >= 300", "Clara's voice")
        assert await page.transcript() == [("You", HELD.lower()), ("Clara", PTT_REPLY)]
        assert page.errors == []

    # only the held turn reached the LLM: the utterance before it was never listened to
    assert len(providers.openai.chat_requests) == 1
    assert user_turns(providers) == [HELD.lower()]


async def test_a_network_outage_shows_reconnecting_then_connected_and_the_talk_goes_on(
    livekit_server: LiveKitServer,
    clara: StartClara,
    providers: Providers,
    web_page: WebPageServer,
    outage: Outage,
    room_name: str,
    tmp_path: Path,
) -> None:
    """Seed 001's checklist in a browser whose packets are dropped (no leave, no close),
    for 5 s, in a voice session.

    livekit-client would notice only after ~15-18 s (livekit-server pings every 5 s and
    gives up after 15 s), so a 5 s outage would pass unseen. The page's link-stall watch
    (``web/src/link-watch.ts``) sees it: with the microphone published, the SFU's RTCP
    feedback arrives without a pause, and ~2 s without a byte is "Reconnecting…"; the
    first bytes after the outage are "Connected" again, in the same session. The
    microphone captures silence: the sparsest steady flow there is (Opus DTX, a packet
    every 400 ms, ~350 bytes/s of feedback), and no turn of the person's own gets in the
    way of the typed conversation (the loopback Deepgram hears Chromium's beep as speech).
    """
    messages = {f"Message {n}": f"Answer {n}." for n in range(1, 3)}
    providers.openai.replies = answers(messages)
    worker = await clara(CLARA_RECONNECT_GRACE_PERIOD="60")
    microphone = microphone_wav(tmp_path / "microphone.wav", OUTAGE_SECONDS * 4)
    async with chromium(tmp_path, microphone=microphone, gid=CLIENT_GID) as browser:
        page = await ClaraPage.open(browser, web_page.url)
        cy = await page.start(room=room_name, name="Cy", session_type="voice-vad")
        await page.wait_for(
            "d.config && d.config.state === 'active' && d.micPublished", "the session active"
        )
        await type_message(page, "Message 1", "Answer 1.")
        await page.wait_for("d.linkArmed", "the link-stall watch armed")
        session = session_ids(await page.debug(), cy)

        outage.cut()
        cut_at = await page.now()
        await page.wait_for(
            "d.status === 'reconnecting'", '"Reconnecting…"', timeout=OUTAGE_SECONDS
        )
        assert await page.text("#status-text") == "Reconnecting…"
        assert (await page.debug())["linkStalled"]  # the watch saw it, not livekit-client
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (await page.now() - cut_at) / 1000))
        assert await page.text("#status-text") == "Reconnecting…"  # all through the outage
        outage.restore()
        restored_at = await page.now()
        await page.wait_for("d.status === 'connected'", '"Connected" again', timeout=STEP_TIMEOUT)
        assert await page.text("#status-text") == "Connected"

        shown = (await page.probe())["statusTexts"]
        reconnecting = next(t["at"] for t in shown if t["text"] == "Reconnecting…")
        connected = next(t["at"] for t in shown if t["at"] > reconnecting)
        print(
            f"\n'Reconnecting…' {(reconnecting - cut_at) / 1000:.1f} s after the cut; "
            f"'Connected' {(connected - restored_at) / 1000:.1f} s after the network came "
            f"back ({(restored_at - cut_at) / 1000:.1f} s outage)"
        )
        assert reconnecting - cut_at < OUTAGE_SECONDS * 1000
        assert connected > restored_at  # "Reconnecting…" all through the outage

        assert (await page.debug())["config"]["state"] == "active"
        await type_message(page, "Message 2", "Answer 2.")

        texts = [t["text"] for t in (await page.probe())["statusTexts"]]
        assert texts[texts.index("Connected") :] == ["Connected", "Reconnecting…", "Connected"]
        assert await page.transcript() == [
            ("You", "Message 1"),
            ("Clara", "Answer 1."),
            ("You", "Message 2"),
            ("Clara", "Answer 2."),
        ]
        assert session_ids(await page.debug(), cy) == session

    assert len(worker.find(event("session initialized", participant=cy))) == 1
    assert not worker.find(event("cleaning up session", participant=cy))


@pytest.mark.timeout(300)
async def test_an_outage_longer_than_the_backoff_schedule_ends_in_failed(
    livekit_server: LiveKitServer,
    clara: StartClara,
    web_page: WebPageServer,
    outage: Outage,
    room_name: str,
    tmp_path: Path,
) -> None:
    await clara()
    async with chromium(tmp_path, gid=CLIENT_GID) as browser:
        page = await ClaraPage.open(browser, web_page.url)
        await page.start(room=room_name, name="Dee", session_type="text")
        await page.wait_for("d.config && d.config.state === 'active'", "the session active")
        outage.cut()
        cut_at = await page.now()
        await page.wait_for(
            "d.status === 'reconnecting'", '"Reconnecting…"', timeout=NOTICE_TIMEOUT
        )
        await page.wait_for("d.status === 'failed'", '"Failed"', timeout=FAILED_TIMEOUT)

        assert await page.text("#status-text") == "Failed"
        assert await page.text("#status-detail") == FAILED_MESSAGE
        assert await page.page.is_enabled("#start-session")
        assert await page.page.is_disabled("#end-session")
        assert await page.page.is_disabled("#send-chat")

        # the page went through the seed's schedule: retries 1 to 5, each at least its
        # delay after the one before, then "Failed"
        states = (await page.probe())["states"]
        states = states[[s["status"] for s in states].index("reconnecting") :]
        assert [(s["status"], s["attempts"]) for s in states] == [
            *(("reconnecting", n) for n in range(6)),
            ("failed", 5),
        ]
        starts = [s["at"] for s in states]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts[:-1])]
        assert all(gap >= delay - 100 for gap, delay in zip(gaps, BACKOFF_MS, strict=True)), gaps
        print(
            f"\n'Reconnecting…' {(starts[0] - cut_at) / 1000:.1f} s after the cut, "
            f"retries after {', '.join(f'{g / 1000:.1f}' for g in gaps)} s, "
            f"'Failed' {(starts[-1] - cut_at) / 1000:.1f} s after the cut"
        )
        outage.restore()


async def test_the_page_shows_only_its_own_conversations_state(
    livekit_server: LiveKitServer,
    clara: StartClara,
    providers: Providers,
    web_page: WebPageServer,
    room_name: str,
    tmp_path: Path,
) -> None:
    """Regression (issue 16, item 8): the page fell back to ``lk.agent.state`` (the busiest
    conversation of the room, maybe another person's) whenever its own state was absent, so
    a page waiting for a place showed "Clara is speaking" over someone else's talk."""
    providers.deepgram.transcripts = ["bob asks about the weather"]
    providers.openai.replies = ["Bob, it will be sunny all day long."]
    worker = await clara(CLARA_MAX_SESSIONS_PER_ROOM="1")
    bob = Human(livekit_server, room_name, "bob")
    await joined(worker, bob)
    async with chromium(tmp_path, gid=CLIENT_GID) as browser:
        page = await ClaraPage.open(browser, web_page.url)
        await page.start(room=room_name, name="Eve", session_type="voice-ptt")
        await page.wait_for("d.waiting && d.notice", "the room-full notice")
        assert await page.text("#agent-state") == "Clara is busy: waiting for a place"
        await page.page.evaluate(SHOWN_STATES)

        await talk(bob, "Will it be sunny", "Bob, it will be sunny all day long.")
        states = {c["lk.agent.state"] for c in bob.agent_attribute_changes if "lk.agent.state" in c}
        assert {"thinking", "speaking"} <= states  # the room's state moved with bob's talk
        assert (await page.debug())["agentState"] is None  # and the page never showed it
        shown = await page.page.evaluate("() => window.__shownStates")
        assert all(text == "Clara is busy: waiting for a place" for text in shown), shown

        await bob.leave()  # a place frees up: the page's own session, its own state
        await page.wait_for("d.config && d.config.state === 'active'", "its own session")
        await page.wait_for("d.agentState === 'listening'", "its own state")
        assert not (await page.debug())["waiting"]
