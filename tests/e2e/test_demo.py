"""The README's quickstart without Docker, as a person runs it: ``python -m clara_voice
demo`` (what ``make demo`` runs once it has built the server and the page), the page it
prints opened in Chromium, Start Session pressed once, a question spoken, Clara heard;
then Ctrl-C (SIGINT), and nothing the demo started is left running.

The providers are the loopback stand-ins for Deepgram and OpenAI, reached through the
settings a person sets for a local server (``CLARA_STT_BASE_URL``, ``CLARA_LLM_BASE_URL``,
``CLARA_TTS_BASE_URL``, no key); the ports are free ones, through the settings the demo
names when one is busy. Nothing else is set: the demo runs its own LiveKit server, worker
and page with the product's defaults (the worker in livekit's development mode, no room
made in advance: the page's join dispatches Clara).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest

from testkit.browser import WEB_DIST, ClaraPage, chromium, microphone_wav
from testkit.livekit_server import free_port, server_binary
from testkit.loopback_providers import LoopbackDeepgram, LoopbackOpenAI
from testkit.processes import is_loopback, process_tree, running, serving_addresses
from testkit.worker import SRC, wait_exited
from tests.e2e.conftest import Providers
from tests.e2e.test_web_page import SILENCE_AFTER_SPEECH, answers, clara_said

QUESTION = "What is the weather like today"
REPLY = "It is sunny and warm today."
READY_TIMEOUT = 200.0
"""Seconds until the demo prints the page's address: the server, then the worker's
imports and registration (up to the demo's own 120 s bound) and the page."""
TURN_TIMEOUT = 90.0
"""Seconds from Start Session to Clara's answer: the job dispatched, its process started
(development mode keeps none warm), a loop of the microphone, the turn."""
STOP_TIMEOUT = 60.0
"""Seconds from Ctrl-C to the demo's exit: the worker's live job closing, then the page
and the server."""
_URL = re.compile(r"Talk to Clara: open (http://\S+)")


def demo_env(tmp_path: Path, providers: Providers) -> dict[str, str]:
    """The environment of a person's shell with the keyless settings and free ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLARA_", "LIVEKIT_", "OPENAI_", "DEEPGRAM_"))
        and not k.lower().endswith("_proxy")
    }
    return env | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        **providers.env(),
        "LIVEKIT_URL": f"ws://localhost:{free_port()}",
        "CLARA_DEMO_RTC_PORT": str(free_port(socket.SOCK_DGRAM)),
        "CLARA_HTTP_PORT": str(free_port()),
        "CLARA_PROMETHEUS_PORT": str(free_port()),
        "CLARA_WEB_PORT": str(free_port()),
        "CLARA_DATA_DIR": str(tmp_path / "data"),
        "CLARA_WEB_DIST": str(WEB_DIST),
        "LIVEKIT_SERVER_BIN": str(server_binary()),
    }


async def read_until_url(proc: asyncio.subprocess.Process, output: list[str]) -> str:
    """The page's address, from the line the demo prints once everything is ready."""
    assert proc.stdout is not None
    async for raw in proc.stdout:
        output.append(line := raw.decode(errors="replace").rstrip("\n"))
        if found := _URL.search(line):
            return found.group(1)
    raise AssertionError("the demo exited before it printed the page's address")


async def stderr_of(proc: asyncio.subprocess.Process) -> str:
    """What the demo wrote on stderr, once it has exited (else nothing)."""
    if proc.returncode is None or proc.stderr is None:
        return "(the demo still runs)"
    return (await proc.stderr.read()).decode(errors="replace")


@pytest.mark.timeout(READY_TIMEOUT + TURN_TIMEOUT + STOP_TIMEOUT + 60)
async def test_the_demo_lets_a_person_talk_to_clara_and_ctrl_c_leaves_nothing_running(
    private_network: None, tmp_path: Path
) -> None:
    microphone = microphone_wav(tmp_path / "microphone.wav", QUESTION, SILENCE_AFTER_SPEECH)
    async with LoopbackOpenAI() as openai, LoopbackDeepgram() as deepgram:
        providers = Providers(openai, deepgram)
        deepgram.default_transcript = QUESTION.lower()
        openai.replies = answers({QUESTION.lower(): REPLY})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clara_voice",
            "demo",
            cwd=tmp_path,
            env=demo_env(tmp_path, providers),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        output: list[str] = []
        started: list[int] = []
        groups = {proc.pid}
        try:
            try:
                url = await asyncio.wait_for(read_until_url(proc, output), READY_TIMEOUT)
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(
                    f"the demo printed no page address ({exc!r}):\n"
                    + "\n".join([*output, await stderr_of(proc)])
                ) from None
            # the server, the worker and the page, each in a group of its own
            started = process_tree(proc.pid)
            groups |= {pid for pid in started if os.getpgid(pid) == pid}
            assert len(groups) == 4, started
            serving = serving_addresses(started)
            assert {port for _, _, port, _ in serving} >= {int(url.rsplit(":", 1)[1].strip("/"))}
            assert all(is_loopback(address) for _, address, _, _ in serving), serving

            async with chromium(tmp_path, microphone=microphone) as browser:
                page = await ClaraPage.open(browser, url)
                await page.page.click("#start-session")  # the page's own room and name
                await page.wait_for("d.status === 'connected'", '"Connected"')
                await page.wait_for(clara_said(REPLY), "Clara's answer", timeout=TURN_TIMEOUT)
                await page.wait_for(
                    "p.agent.soundWhileSpeakingMs >= 500", "Clara's voice playing on the page"
                )
                probe = await page.probe()
                assert probe["agent"]["playing"] == 1
                assert ("You", QUESTION.lower()) in await page.transcript()
                assert ("Clara", REPLY) in await page.transcript()
                assert page.errors == []

                # Ctrl-C with the conversation still open
                started = process_tree(proc.pid)  # now with the room's job process
                proc.send_signal(signal.SIGINT)
                code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            assert proc.stdout is not None and proc.stderr is not None
            output += (await proc.stdout.read()).decode(errors="replace").splitlines()
            errors = (await proc.stderr.read()).decode(errors="replace")
            assert code == 0, "\n".join([*output, errors])
            assert output[-1] == "clara_voice demo: stopped", output
            assert errors == ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_exited(started), 5)
            assert [pid for pid in started if running(pid)] == []
        finally:
            for pid in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
