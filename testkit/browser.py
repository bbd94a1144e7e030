"""A real browser on the web page (``web/``), for its end-to-end tests.

* :func:`running_web_page` runs ``python -m clara_voice web`` as a subprocess on a free
  port of 127.0.0.1, serving the built page (``web/dist``, see :func:`check_page_built`)
  and tokens for the test's LiveKit server, and waits until it says it listens.
* :func:`microphone_wav` writes what the browser's microphone will capture: espeak-ng
  speech and silences, one after the other.
* :func:`chromium` launches Debian's Chromium through Playwright (never a downloaded
  browser), headless, with that WAV as its microphone (Chromium's fake capture device,
  which reads espeak-ng's 22050 Hz mono 16-bit PCM as it is), audio allowed to play
  without a gesture, and, given a group id, all of its processes run with that group id
  (a ``setpriv`` wrapper), so that :class:`testkit.network.Outage` cuts the browser's
  network and nothing else.
* :class:`ClaraPage` is the test's handle on one tab: the page's own snapshot of its state
  (``window.claraDebug``), waits on conditions over it with timeouts that fail with the
  page's state, console and errors, and probes of the test's own in the page (see
  ``_PROBES``): Clara's audio as her ``<audio>`` elements play it, measured by an
  ``AnalyserNode``; the spans of speech the microphone meter shows; every text
  ``#status-text`` showed; every (status, attempts) the page went through.

Waits are conditions Playwright checks in the page every :data:`POLL_MS`, never sleeps
that hope something happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from testkit.audio import read_wav_pcm, speech_wav
from testkit.livekit_server import ROOT
from testkit.worker import SRC, free_port

WEB_DIST = ROOT / "web" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
READY_TIMEOUT = 30.0
"""Seconds for ``python -m clara_voice web`` to import and listen."""
STEP_TIMEOUT = 20.0
POLL_MS = 50
SOUND_RMS = 0.01
"""An RMS level (of full scale) above this is sound, not silence."""
ESPEAK_RATE = 22050
SPEECH_END_MS = 400
"""Milliseconds of silence after which the microphone probe counts an utterance as ended
(espeak-ng's pauses between words are shorter)."""


class PageNotBuiltError(RuntimeError):
    """``web/dist`` has not been built."""


def check_page_built(dist: Path = WEB_DIST) -> Path:
    """``dist``, once it holds the built page; :class:`PageNotBuiltError` (one line) if not."""
    missing = [n for n in ("index.html", "app.js", "style.css") if not (dist / n).is_file()]
    if missing:
        raise PageNotBuiltError(
            f"the web page is not built ({dist} lacks {', '.join(missing)}): run `make web`"
        )
    return dist


def microphone_wav(path: Path, *parts: str | float) -> Path:
    """A WAV at ``path`` of ``parts`` in order: text spoken by espeak-ng, or a number of
    seconds of silence. Mono 16-bit PCM at espeak-ng's own rate (22050 Hz), which
    Chromium's fake capture device reads and resamples itself."""
    spoken = {part: read_wav_pcm(speech_wav(part)) for part in parts if isinstance(part, str)}
    rates = {rate for _, rate in spoken.values()} or {ESPEAK_RATE}
    if len(rates) != 1:
        raise ValueError(f"espeak-ng wrote WAVs at several rates: {sorted(rates)}")
    (rate,) = rates
    samples = [
        np.frombuffer(spoken[part][0], dtype=np.int16)
        if isinstance(part, str)
        else np.zeros(round(part * rate), dtype=np.int16)
        for part in parts
    ]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"".join(s.tobytes() for s in samples))
    return path


# -- the page's server ----------------------------------------------------------------------


@dataclass
class WebPageServer:
    """A running ``python -m clara_voice web``: its address and what it wrote."""

    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def tail(self, count: int = 15) -> str:
        return "\n".join(self.lines[-count:])


@asynccontextmanager
async def running_web_page(
    *, livekit_url: str, api_key: str, api_secret: str, dist: Path = WEB_DIST
) -> AsyncIterator[WebPageServer]:
    """``python -m clara_voice web`` serving ``dist`` and tokens for ``livekit_url`` (the
    URL the browser is given too), in a process group of its own, ended on the way out."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEKIT_", "CLARA_")) and not k.lower().endswith("_proxy")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        LIVEKIT_URL=livekit_url,
        LIVEKIT_API_KEY=api_key,
        LIVEKIT_API_SECRET=api_secret,
        CLARA_WEB_HOST="127.0.0.1",
        CLARA_WEB_PORT=str(port),
        CLARA_WEB_LIVEKIT_URL=livekit_url,
        CLARA_WEB_DIST=str(dist),
        CLARA_LOG_FORMAT="json",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clara_voice",
        "web",
        env=env,
        cwd=dist,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    server = WebPageServer(proc, port)
    listening: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(_read_server(server, listening))
    try:
        try:
            await asyncio.wait_for(asyncio.shield(listening), READY_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"`python -m clara_voice web` did not listen within {READY_TIMEOUT}s\n"
                f"{server.tail()}"
            ) from None
        if not listening.result():
            raise AssertionError(
                f"`python -m clara_voice web` exited ({await proc.wait()}) before it "
                f"listened\n{server.tail()}"
            )
        yield server
    finally:
        await _end_group(proc)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _read_server(server: WebPageServer, listening: asyncio.Future[bool]) -> None:
    assert server.proc.stdout is not None
    async for raw in server.proc.stdout:
        text = raw.decode(errors="replace").rstrip("\n")
        server.lines.append(text)
        with contextlib.suppress(ValueError):
            line = json.loads(text)
            if (
                isinstance(line, dict)
                and str(line.get("event", "")).startswith("web page at ")
                and not listening.done()
            ):
                listening.set_result(True)
    if not listening.done():
        listening.set_result(False)


async def _end_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the process group, SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


# -- the browser ----------------------------------------------------------------------------


def chromium_args(microphone: Path | None, *, loop: bool = True) -> list[str]:
    """Chromium's flags: a fake microphone that captures ``microphone`` (over and over, or
    once from the start of capture unless ``loop``; a beeping tone when None), no
    permission prompt, and audio that plays without a user gesture."""
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
    ]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}{'' if loop else '%noloop'}")
    return args


def group_wrapper(directory: Path, gid: int, executable: Path = CHROMIUM) -> Path:
    """A script that execs ``executable`` (so every process it starts) with group id
    ``gid`` and no supplementary groups; Playwright launches it as the browser. Each exec
    keeps the process id, so Playwright still owns (and kills) the browser itself."""
    setpriv = shutil.which("setpriv") or "setpriv"
    script = directory / f"chromium-gid-{gid}"
    script.write_text(f'#!/bin/sh\nexec {setpriv} --regid={gid} --clear-groups {executable} "$@"\n')
    script.chmod(0o755)
    return script


@asynccontextmanager
async def chromium(
    workdir: Path,
    *,
    microphone: Path | None = None,
    loop_microphone: bool = True,
    gid: int | None = None,
) -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through Playwright; closed, all of it, on the way out."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    executable = CHROMIUM if gid is None else group_wrapper(workdir, gid)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            args=chromium_args(microphone, loop=loop_microphone),
            env={k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")},
        )
        try:
            yield browser
        finally:
            await browser.close()


# -- the page -------------------------------------------------------------------------------

# The test's own measurements, in the page (times are performance.now(), in ms):
# - agent: Clara's <audio> elements (the page plays her tracks through them), each measured
#   by an AnalyserNode of ours on its stream while it plays: the loudest RMS, and how long
#   it was louder than silence, in all and while the page showed Clara `speaking`;
# - mic: the spans of speech the page's microphone meter (claraDebug.micLevel) showed;
# - statusTexts: every text #status-text showed (a MutationObserver, nothing missed);
# - states: every (status, attempts) of claraDebug, with when it began.
_PROBES = """
(() => {
  if (window.__claraProbe) return;
  const SOUND = %(sound)s, SPEECH_END_MS = %(speech_end_ms)s;
  const probe = {
    agent: { max: 0, soundMs: 0, soundWhileSpeakingMs: 0, playing: 0 },
    mic: { spans: [], speaking: false, quietSince: null },
    statusTexts: [],
    states: [],
  };
  window.__claraProbe = probe;
  const statusText = document.getElementById('status-text');
  probe.statusTexts.push({ at: performance.now(), text: statusText.textContent });
  new MutationObserver(() => {
    const text = statusText.textContent;
    if (probe.statusTexts[probe.statusTexts.length - 1].text !== text) {
      probe.statusTexts.push({ at: performance.now(), text });
    }
  }).observe(statusText, { childList: true, characterData: true, subtree: true });

  const context = new AudioContext();
  const buffer = new Float32Array(1024);
  const meters = new Map();
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    const elapsed = now - last;
    last = now;
    const d = window.claraDebug;

    const top = probe.states[probe.states.length - 1];
    if (!top || top.status !== d.status || top.attempts !== d.attempts) {
      probe.states.push({ at: now, status: d.status, attempts: d.attempts });
    }

    for (const el of document.querySelectorAll('#agent-audio audio')) {
      if (meters.has(el) || !(el.srcObject instanceof MediaStream)) continue;
      if (el.srcObject.getAudioTracks().length === 0) continue;
      const analyser = context.createAnalyser();
      analyser.fftSize = buffer.length;
      context.createMediaStreamSource(el.srcObject).connect(analyser);
      meters.set(el, analyser);
    }
    let loudest = 0;
    let playing = 0;
    for (const [el, analyser] of meters) {
      if (!el.isConnected) { meters.delete(el); continue; }
      if (el.paused) continue;
      playing += 1;
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (const s of buffer) sum += s * s;
      loudest = Math.max(loudest, Math.sqrt(sum / buffer.length));
    }
    const agent = probe.agent;
    agent.playing = playing;
    agent.max = Math.max(agent.max, loudest);
    if (loudest > SOUND) {
      agent.soundMs += elapsed;
      if (d.agentState === 'speaking') agent.soundWhileSpeakingMs += elapsed;
    }

    const mic = probe.mic;
    if (d.micLevel > SOUND) {
      mic.quietSince = null;
      if (!mic.speaking) { mic.speaking = true; mic.spans.push({ start: now, end: null }); }
    } else if (mic.speaking) {
      mic.quietSince ??= now;
      if (now - mic.quietSince >= SPEECH_END_MS) {
        mic.speaking = false;
        mic.spans[mic.spans.length - 1].end = mic.quietSince;
      }
    }
  }, 25);
})()
"""


class ClaraPage:
    """The web page in one browser tab: its controls, ``window.claraDebug`` and probes."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Browser, url: str) -> ClaraPage:
        """A new tab on ``url``, once the page is ready to start, with the probes running."""
        clara = cls(await browser.new_page(viewport={"width": 1280, "height": 900}))
        await clara.page.goto(url)
        await clara.wait_for("d.status === 'idle'", "the page ready to start")
        await clara.page.evaluate(_PROBES % {"sound": SOUND_RMS, "speech_end_ms": SPEECH_END_MS})
        return clara

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}"[:500])

    async def start(self, *, room: str, name: str, session_type: str) -> str:
        """Fill in the form, click Start Session (a real click: the page's audio starts
        from it) and wait until the page shows "Connected"; the identity the page's token
        endpoint gave it."""
        await self.page.fill("#room", room)
        await self.page.fill("#name", name)
        await self.page.select_option("#session-type", session_type)
        await self.page.click("#start-session")
        await self.wait_for("d.status === 'connected'", '"Connected"')
        identity: str = (await self.debug())["identity"]
        return identity

    async def debug(self) -> dict[str, Any]:
        """A copy of ``window.claraDebug``: the page's state as it shows it now."""
        state: dict[str, Any] = await self.page.evaluate("() => window.claraDebug")
        return state

    async def probe(self) -> dict[str, Any]:
        """A copy of the probes' measurements (see ``_PROBES``)."""
        value: dict[str, Any] = await self.page.evaluate("() => window.__claraProbe")
        return value

    async def now(self) -> float:
        """The page's clock (``performance.now()``, ms), the probes' time."""
        value: float = await self.page.evaluate("() => performance.now()")
        return value

    async def wait_for(self, condition: str, what: str, *, timeout: float = STEP_TIMEOUT) -> Any:
        """The value of the JavaScript ``condition`` over ``d`` (``window.claraDebug``) and
        ``p`` (the probes) once it is truthy; an :class:`AssertionError` naming ``what``,
        with the page's state, console and errors, after ``timeout`` seconds."""
        function = (
            "() => { const d = window.claraDebug, p = window.__claraProbe;"
            f" return ({condition}); }}"
        )
        try:
            handle = await self.page.wait_for_function(
                function, polling=POLL_MS, timeout=timeout * 1000
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"the page did not show {what} within {timeout}s\n{await self.report()}"
            ) from None
        return await handle.json_value()

    async def text(self, selector: str) -> str:
        return (await self.page.text_content(selector)) or ""

    async def transcript(self) -> list[tuple[str, str]]:
        """The conversation as the page shows it: (speaker label, text) per line."""
        rows: list[list[str]] = await self.page.eval_on_selector_all(
            "#transcript li",
            "items => items.map(li => [...li.querySelectorAll('span')].map(s => s.textContent))",
        )
        return [(row[0], row[1]) for row in rows]

    async def report(self) -> str:
        """The page's state, console and errors, for a failure message."""
        try:
            state = await self.debug()
            shown_text = await self.text("#status-text")
        except PlaywrightError as exc:
            return f"(the page cannot be read: {exc})"
        shown = {k: v for k, v in state.items() if k != "syncEvents"}
        shown["syncEvents"] = [
            f"{e['type']}:{e['trigger']}:{(e.get('config') or {}).get('state')}"
            for e in state.get("syncEvents", [])[-10:]
        ]
        return "\n".join(
            [
                f"--- #status-text: {shown_text!r}",
                "--- claraDebug:",
                json.dumps(shown, default=str)[:4000],
                "--- console (last lines):",
                *self.console[-20:],
                "--- page errors:",
                *self.errors[-10:],
            ]
        )


__all__ = [
    "CHROMIUM",
    "READY_TIMEOUT",
    "SOUND_RMS",
    "SPEECH_END_MS",
    "STEP_TIMEOUT",
    "WEB_DIST",
    "ClaraPage",
    "PageNotBuiltError",
    "WebPageServer",
    "check_page_built",
    "chromium",
    "chromium_args",
    "group_wrapper",
    "microphone_wav",
    "running_web_page",
]
