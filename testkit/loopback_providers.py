"""Loopback peers speaking the OpenAI and Deepgram wire formats, for offline plugin tests.

Both are aiohttp servers on 127.0.0.1 (ephemeral port), used with ``async with``, that the
REAL livekit plugins talk to through their ``base_url`` argument, so tests exercise the
plugins' own request building, streaming and parsing with no provider key and no network.

:class:`LoopbackOpenAI` (``base_url`` = ``http://127.0.0.1:PORT/v1``; any bearer key):

* ``POST /v1/chat/completions`` — what ``openai.LLM`` uses (the Chat Completions API, not
  the Responses API). With ``"stream": true`` it answers Server-Sent Events as OpenAI does:
  ``data: {chat.completion.chunk}`` blocks (a role delta, the reply split into word
  deltas, an empty delta with ``finish_reason: "stop"``, then — when the request asks for
  ``stream_options.include_usage`` — a chunk with no choices carrying ``usage``), ending
  with ``data: [DONE]``. Without ``stream`` it answers one ``chat.completion`` object.
  Replies come from :attr:`LoopbackOpenAI.replies` (a list consumed in order, or a
  callable given the request JSON), then :attr:`LoopbackOpenAI.default_reply`.
* ``POST /v1/audio/speech`` — what ``openai.TTS`` uses. The audio is a speech-like
  waveform (see :func:`speech_signal`) lasting :meth:`LoopbackOpenAI.speech_duration`
  (60 ms per character, capped, divided by ``speed``), at 24 kHz mono, encoded as the
  request's ``response_format`` (``pcm`` = raw s16le, ``wav``, or ``mp3``/``opus``/
  ``aac``/``flac`` through PyAV). ``stream_format: "sse"`` (the plugin's choice for every
  model but tts-1/tts-1-hd) gets ``text/event-stream`` with ``speech.audio.delta`` events
  (base64 ``audio``) and a ``speech.audio.done`` event with token usage; otherwise the
  encoded bytes are streamed raw, in ~100 ms chunks, with the format's content type.
  With ``voice`` (text -> int16 samples at 24 kHz, e.g. the Piper voice of
  ``testkit.speech_models``) the audio is that real speech instead.
* ``POST /v1/audio/transcriptions`` — what ``openai.STT.recognize`` uses when not in
  realtime mode: multipart with ``file``, ``model``, ``language``, ``response_format``…
  Answers ``json`` (``{"text", "usage"}``), ``verbose_json`` (whisper-1: language,
  duration, segments) or ``text``, with the next of :attr:`LoopbackOpenAI.transcripts`,
  or, with ``recognize`` ((audio bytes, language) -> text, e.g. Whisper), what a real
  recognizer hears in the uploaded audio.
* ``GET /v1/models`` — what ``LLM.prewarm`` asks for.

:class:`LoopbackDeepgram` (``base_url`` = ``http://127.0.0.1:PORT/v1/listen``, the whole
endpoint, as ``deepgram.STT(base_url=...)`` takes it; the plugin swaps http for ws):

* ``GET /v1/listen`` upgrades to Deepgram's live-transcription websocket. It reads the
  plugin's linear16 audio (``sample_rate``/``channels`` from the query) through an energy
  detector: speech onset sends ``SpeechStarted`` (when ``vad_events=true``) and interim
  ``Results`` (when ``interim_results=true``); once the trailing silence reaches
  ``endpoint_silence`` (or the query's ``endpointing`` if longer) — or on
  ``{"type": "Finalize"}`` — it sends a final ``Results`` (``is_final``; ``speech_final``
  unless ``endpointing=false``; ``from_finalize`` when finalizing) carrying the next of
  :attr:`LoopbackDeepgram.transcripts`, with start/duration and word timings; then
  ``UtteranceEnd`` once ``utterance_end_ms`` of silence has passed, when asked for.
  ``KeepAlive`` is recorded and ignored; ``CloseStream`` flushes, sends ``Metadata`` and
  closes normally. All times are audio time (samples received), never wall-clock time.
* ``POST /v1/listen`` answers a prerecorded (``STT.recognize``) request.

Failure injection: :meth:`LoopbackOpenAI.fail` (``chat``/``speech``/``transcriptions`` ×
``status_500``/``drop``/``hang``) and :meth:`LoopbackDeepgram.fail` (``status_500`` =
refuse the upgrade, ``drop`` = cut the TCP connection after the first audio, ``hang`` =
never answer the upgrade). Failures are consumed in order by the next requests, then
normal service resumes. Every request is recorded, failed or not.

Tests wait on what a peer saw with ``wait_for`` (a condition with a timeout), never by
sleeping. Leaving ``async with`` wakes hanging handlers, closes websockets, stops the
server and cancels whatever handler is left, waiting for all of them.
"""

from __future__ import annotations

import asyncio
import base64
import fractions
import hashlib
import io
import json
import math
import re
import secrets
import time
import uuid
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, get_args

import aiohttp
import av
import numpy as np
from aiohttp import web
from livekit import rtc

from clara_voice._lifecycle import AsyncService
from testkit.peer import PeerHandlers

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_TIMEOUT = 10.0
DEFAULT_REPLY = "Hello, this is Clara."
DEFAULT_TRANSCRIPT = "hello clara"

Segment = tuple[Literal["speech", "silence"], float]  # a piece of a test utterance script
OpenAIEndpoint = Literal["chat", "speech", "transcriptions"]
OpenAIFailure = Literal["status_500", "drop", "hang"]
DeepgramFailure = Literal["status_500", "drop", "hang"]

TTS_SAMPLE_RATE = 24000  # what OpenAI's speech endpoint produces (and the plugin expects)
_CHUNK_SECONDS = 0.1  # how much audio each streamed piece carries

# response_format -> (container for PyAV, encoder); pcm and wav are written by hand
_ENCODERS = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}
_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


# -- signals --------------------------------------------------------------------------------


def speech_signal(seconds: float, sample_rate: int, *, amplitude: float = 0.5) -> np.ndarray:
    """A voiced, speech-like float32 signal: harmonics of 150 Hz, syllable-rate envelope.

    Its envelope never drops below 30 % of ``amplitude``, so an energy detector hears one
    continuous utterance; 10 ms fades avoid clicks at both ends.
    """
    n = round(seconds * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    voice = np.zeros(n)
    for k in range(1, 6):
        voice += np.sin(2 * np.pi * 150.0 * k * t) / k
    if n:
        voice /= np.max(np.abs(voice))
    envelope = 0.65 + 0.35 * np.sin(2 * np.pi * 4.0 * t)  # ~4 syllables per second
    fade = min(n // 2, round(0.01 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        envelope[:fade] *= ramp
        envelope[n - fade :] *= ramp[::-1]
    return (amplitude * voice * envelope).astype(np.float32)


def silence_signal(seconds: float, sample_rate: int, *, noise_dbfs: float = -70.0) -> np.ndarray:
    """Room-tone "silence": deterministic white noise at ``noise_dbfs`` RMS."""
    n = round(seconds * sample_rate)
    rng = np.random.default_rng(n)
    noise: np.ndarray = rng.standard_normal(n) * 10 ** (noise_dbfs / 20)
    return noise.astype(np.float32)


def to_pcm16(signal: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as int16."""
    scaled: np.ndarray = np.clip(signal, -1.0, 1.0) * 32767
    return scaled.astype("<i2")


def audio_frames(
    signal: np.ndarray, sample_rate: int, *, frame_ms: int = 20
) -> list[rtc.AudioFrame]:
    """A mono float signal cut into ``rtc.AudioFrame`` s of ``frame_ms`` (the last shorter)."""
    pcm = to_pcm16(signal)
    step = sample_rate * frame_ms // 1000
    return [
        rtc.AudioFrame(
            data=pcm[i : i + step].tobytes(),
            sample_rate=sample_rate,
            num_channels=1,
            samples_per_channel=len(pcm[i : i + step]),
        )
        for i in range(0, len(pcm), step)
    ]


def utterance_frames(
    segments: Iterable[Segment],
    sample_rate: int,
    *,
    frame_ms: int = 20,
) -> list[rtc.AudioFrame]:
    """Frames for a script like ``[("silence", 0.3), ("speech", 1.0), ("silence", 0.5)]``."""
    parts = [
        speech_signal(seconds, sample_rate)
        if kind == "speech"
        else silence_signal(seconds, sample_rate)
        for kind, seconds in segments
    ]
    return audio_frames(np.concatenate(parts), sample_rate, frame_ms=frame_ms)


def _encode_audio(pcm: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """Mono int16 samples in one of OpenAI's speech response formats."""
    if response_format == "pcm":
        return pcm.tobytes()
    if response_format == "wav":
        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(pcm.tobytes())
        return out.getvalue()
    container_format, codec = _ENCODERS[response_format]
    out = io.BytesIO()
    with av.open(out, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = 0
        frame.time_base = fractions.Fraction(1, sample_rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


def _split(data: bytes, pieces: int) -> list[bytes]:
    size = max(1, math.ceil(len(data) / max(1, pieces)))
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _word_pieces(text: str) -> list[str]:
    """``text`` cut before each word, as token deltas arrive: joined, they give it back."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)) :]
    if tail:
        pieces.append(tail)
    return pieces


def _short_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


def _tokens(text: str) -> int:
    """A rough token count (OpenAI's rule of thumb: ~4 characters per token)."""
    return max(1, math.ceil(len(text) / 4))


def _text_of(content: Any) -> str:
    """The text of a chat message's content (a string or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _abort(request: web.Request) -> None:
    """Cut the TCP connection without a response, a close frame or a FIN handshake."""
    if request.transport is not None:
        request.transport.abort()


# -- shared server plumbing ---------------------------------------------------------------


class _LoopbackServer(PeerHandlers, AsyncService):
    """Lifecycle, handler tracking and ``wait_for`` shared by both peers."""

    def __init__(self, *, host: str) -> None:
        self.host = host
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._init_handlers()
        self._sockets: set[web.WebSocketResponse] = set()
        self._closing = asyncio.Event()

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def origin(self) -> str:
        if not self.port:
            raise RuntimeError("the loopback peer is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        self._closing.set()  # hanging and delayed handlers cut their connection and return
        for ws in list(self._sockets):
            if not ws.closed:
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server closing")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._cancel_handlers()

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the server started closing meanwhile."""
        if seconds <= 0:
            return not self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _hang(self, request: web.Request) -> web.StreamResponse:
        """Never answer: hold the request until the server closes, then cut the connection."""
        await self._closing.wait()
        _abort(request)
        return web.Response(status=503)


# -- OpenAI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderRequest:
    """One request a loopback peer received, and what it did with it."""

    endpoint: str
    outcome: str  # "ok", the failure mode it was given, or "status_401"
    at: float
    authorization: str | None = None


@dataclass(frozen=True)
class TranscriptionRequest:
    """The multipart fields of one ``/audio/transcriptions`` request."""

    model: str
    language: str | None
    response_format: str
    audio_bytes: int
    filename: str | None
    content_type: str | None
    audio_seconds: float | None  # from the WAV header, when the file is a WAV
    fields: dict[str, str] = field(default_factory=dict)  # every non-file field


@dataclass
class _Reply:
    """A whole response, cut into the pieces it is streamed in."""

    headers: dict[str, str]
    pieces: list[bytes]
    status: int = 200


class LoopbackOpenAI(_LoopbackServer):
    """An OpenAI API stand-in on 127.0.0.1; use ``async with``."""

    def __init__(
        self,
        *,
        replies: list[str] | Callable[[dict[str, Any]], str] | None = None,
        transcripts: list[str] | None = None,
        default_reply: str = DEFAULT_REPLY,
        default_transcript: str = DEFAULT_TRANSCRIPT,
        latency: float = 0.0,
        seconds_per_char: float = 0.06,
        max_speech_seconds: float = 15.0,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        recognize: Callable[[bytes, str | None], str] | None = None,
        voice: Callable[[str], np.ndarray] | None = None,
    ) -> None:
        super().__init__(host=host)
        self.recognize = recognize
        """Real recognition: (uploaded audio, language) -> text, instead of the script."""
        self.voice = voice
        """Real speech: text -> int16 samples at 24 kHz, instead of the speech-like tone."""
        self.replies: list[str] | Callable[[dict[str, Any]], str] = (
            replies if replies is not None else []
        )
        self.transcripts: list[str] = transcripts if transcripts is not None else []
        self.default_reply = default_reply
        self.default_transcript = default_transcript
        self.latency = latency  # seconds before the first byte of every answer
        self.seconds_per_char = seconds_per_char
        self.max_speech_seconds = max_speech_seconds
        self.api_key = api_key  # None: any bearer key is accepted

        self.requests: list[ProviderRequest] = []
        self.chat_requests: list[dict[str, Any]] = []
        self.speech_requests: list[dict[str, Any]] = []
        self.transcription_requests: list[TranscriptionRequest] = []
        self.recognized: list[str] = []
        """What ``recognize`` heard, one per transcription request."""
        self._failures: dict[str, deque[str]] = {e: deque() for e in get_args(OpenAIEndpoint)}

    @property
    def base_url(self) -> str:
        """What to pass as the plugins' ``base_url``."""
        return f"{self.origin}/v1"

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._tracked(self._chat))
        app.router.add_post("/v1/audio/speech", self._tracked(self._speech))
        app.router.add_post("/v1/audio/transcriptions", self._tracked(self._transcriptions))
        app.router.add_get("/v1/models", self._tracked(self._models))

    # -- scripting ----------------------------------------------------------------------------

    def fail(self, endpoint: OpenAIEndpoint, mode: OpenAIFailure, count: int = 1) -> None:
        """Make the next ``count`` requests to ``endpoint`` fail with ``mode``.

        ``status_500``: an OpenAI ``server_error`` JSON body with HTTP 500. ``drop``: a 200
        with the response's headers and first piece (the role chunk, the first audio chunk,
        half the JSON), then the connection is cut. ``hang``: no answer until the server
        closes. Queued failures are consumed in order, before normal service resumes.
        """
        if endpoint not in self._failures:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        if mode not in get_args(OpenAIFailure):
            raise ValueError(f"unknown failure mode {mode!r}")
        self._failures[endpoint].extend([mode] * count)

    def speech_duration(self, text: str, speed: float = 1.0) -> float:
        """How long the synthesized audio for ``text`` lasts, in seconds."""
        seconds = min(len(text.strip()) * self.seconds_per_char, self.max_speech_seconds)
        return round(seconds / speed * TTS_SAMPLE_RATE) / TTS_SAMPLE_RATE

    def count(self, endpoint: OpenAIEndpoint | None = None) -> int:
        """How many requests reached ``endpoint`` (every endpoint when None), failed or not."""
        return sum(1 for r in self.requests if endpoint is None or r.endpoint == endpoint)

    def outcomes(self, endpoint: OpenAIEndpoint) -> list[str]:
        return [r.outcome for r in self.requests if r.endpoint == endpoint]

    def _next_reply(self, body: dict[str, Any], *, consume: bool) -> str:
        if callable(self.replies):
            return self.replies(body)
        if not self.replies:
            return self.default_reply
        return self.replies.pop(0) if consume else self.replies[0]

    def _next_transcript(self, *, consume: bool) -> str:
        if not self.transcripts:
            return self.default_transcript
        return self.transcripts.pop(0) if consume else self.transcripts[0]

    # -- endpoints ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.chat_requests.append(body)
        return await self._serve(request, "chat", lambda consume: self._chat_reply(body, consume))

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.speech_requests.append(body)
        spoken = None
        if self.voice is not None and str(body.get("input", "")).strip():
            spoken = await asyncio.to_thread(self.voice, str(body["input"]))
        return await self._serve(request, "speech", lambda _: self._speech_reply(body, spoken))

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form.get("file")
        audio = upload.file.read() if isinstance(upload, web.FileField) else b""
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        recorded = TranscriptionRequest(
            model=fields.get("model", ""),
            language=fields.get("language"),
            response_format=fields.get("response_format", "json"),
            audio_bytes=len(audio),
            filename=upload.filename if isinstance(upload, web.FileField) else None,
            content_type=upload.content_type if isinstance(upload, web.FileField) else None,
            audio_seconds=_wav_seconds(audio),
            fields=fields,
        )
        self.transcription_requests.append(recorded)
        heard = None
        if self.recognize is not None:
            heard = await asyncio.to_thread(self.recognize, audio, recorded.language)
            self.recognized.append(heard)
        return await self._serve(
            request,
            "transcriptions",
            lambda consume: self._transcription_reply(recorded, consume, heard),
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        models = ["gpt-4.1", "gpt-4o-mini", "gpt-4o-mini-tts", "gpt-4o-mini-transcribe"]
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in models]
        return web.json_response({"object": "list", "data": data})

    async def _serve(
        self, request: web.Request, endpoint: str, build: Callable[[bool], _Reply]
    ) -> web.StreamResponse:
        """Record the request, apply a queued failure or the latency, then stream the reply.

        ``build(consume)`` makes the reply; a dropped one leaves the script where it was.
        """
        authorization = request.headers.get("Authorization")
        denied = self._unauthorized(request)
        failures = self._failures[endpoint]
        mode = "status_401" if denied is not None else (failures.popleft() if failures else None)
        self.requests.append(
            ProviderRequest(
                endpoint=endpoint,
                outcome=mode or "ok",
                at=time.monotonic(),
                authorization=authorization,
            )
        )
        await self._notify()
        if denied is not None:
            return denied
        if mode == "hang":
            return await self._hang(request)
        if not await self._pause(self.latency):
            _abort(request)
            return web.Response(status=503)
        if mode == "status_500":
            return _openai_error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
            )
        try:
            reply = build(mode != "drop")
        except _BadRequest as exc:
            return _openai_error(400, str(exc), "invalid_request_error")
        reply.headers.setdefault("x-request-id", _short_id("req_"))
        reply.headers.setdefault("openai-processing-ms", "1")
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        try:
            await response.prepare(request)
            if mode == "drop":
                first = reply.pieces[0]
                await response.write(first if len(reply.pieces) > 1 else first[: len(first) // 2])
                _abort(request)
                return response
            for piece in reply.pieces:
                await response.write(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing left to answer
        return response

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and key.strip() and self.api_key in (None, key.strip()):
            return None
        return _openai_error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )

    # -- replies ------------------------------------------------------------------------------

    def _chat_reply(self, body: dict[str, Any], consume: bool) -> _Reply:
        text = self._next_reply(body, consume=consume)
        model = str(body.get("model", "gpt-4o-mini"))
        completion_id = _short_id("chatcmpl-")
        created = int(time.time())
        prompt = " ".join(_text_of(m.get("content")) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": _tokens(prompt),
            "completion_tokens": _tokens(text),
            "total_tokens": _tokens(prompt) + _tokens(text),
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        common = {
            "id": completion_id,
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_loopback",
        }
        if not body.get("stream"):
            completion = {
                **common,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return _Reply(
                headers={"Content-Type": "application/json"},
                pieces=[json.dumps(completion).encode()],
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out = {
                **common,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
        chunks += [chunk({"content": piece}) for piece in _word_pieces(text)]
        chunks.append(chunk({}, "stop"))
        if include_usage:
            chunks.append(
                {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        pieces = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks]
        pieces.append(b"data: [DONE]\n\n")
        return _Reply(headers=_sse_headers(), pieces=pieces)

    def _speech_reply(self, body: dict[str, Any], spoken: np.ndarray | None = None) -> _Reply:
        text = str(body.get("input", ""))
        if not text.strip():
            raise _BadRequest("[] is too short - 'input'")
        response_format = str(body.get("response_format", "mp3"))
        if response_format not in _CONTENT_TYPES:
            raise _BadRequest(f"'{response_format}' is not one of {sorted(_CONTENT_TYPES)}")
        speed = float(body.get("speed", 1.0))
        if not 0.25 <= speed <= 4.0:
            raise _BadRequest(f"{speed} is not between 0.25 and 4.0 - 'speed'")
        if spoken is None:
            seconds = self.speech_duration(text, speed)
            pcm = to_pcm16(speech_signal(seconds, TTS_SAMPLE_RATE, amplitude=0.4))
        else:
            pcm, seconds = spoken, spoken.size / TTS_SAMPLE_RATE
        data = _encode_audio(pcm, TTS_SAMPLE_RATE, response_format)
        pieces = _split(data, math.ceil(seconds / _CHUNK_SECONDS))
        if body.get("stream_format") != "sse":
            return _Reply(headers={"Content-Type": _CONTENT_TYPES[response_format]}, pieces=pieces)

        events: list[dict[str, Any]] = [
            {"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()} for p in pieces
        ]
        input_tokens = _tokens(text)
        output_tokens = math.ceil(seconds * 20)  # audio tokens: ~20 per second
        events.append(
            {
                "type": "speech.audio.done",
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            }
        )
        sse = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
        return _Reply(headers=_sse_headers(), pieces=sse)

    def _transcription_reply(
        self, recorded: TranscriptionRequest, consume: bool, heard: str | None = None
    ) -> _Reply:
        text = self._next_transcript(consume=consume) if heard is None else heard
        seconds = recorded.audio_seconds or 0.0
        if recorded.response_format == "text":
            return _Reply(
                headers={"Content-Type": "text/plain; charset=utf-8"},
                pieces=[f"{text}\n".encode()],
            )
        if recorded.response_format == "verbose_json":
            body: dict[str, Any] = {
                "task": "transcribe",
                "language": _LANGUAGE_NAMES.get(recorded.language or "en", "english"),
                "duration": round(seconds, 2),
                "text": text,
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": round(seconds, 2),
                        "text": f" {text}",
                        "tokens": list(range(50364, 50364 + _tokens(text))),
                        "temperature": 0.0,
                        "avg_logprob": -0.2,
                        "compression_ratio": 0.9,
                        "no_speech_prob": 0.01,
                    }
                ],
                "usage": {"type": "duration", "seconds": math.ceil(seconds)},
            }
        elif recorded.response_format == "json":
            audio_tokens = max(1, math.ceil(seconds * 10))
            output_tokens = _tokens(text)
            body = {
                "text": text,
                "usage": {
                    "type": "tokens",
                    "input_tokens": audio_tokens,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                    "output_tokens": output_tokens,
                    "total_tokens": audio_tokens + output_tokens,
                },
            }
        else:
            raise _BadRequest(f"response_format '{recorded.response_format}' is not supported")
        return _Reply(
            headers={"Content-Type": "application/json"}, pieces=[json.dumps(body).encode()]
        )


class _BadRequest(Exception):
    pass


_LANGUAGE_NAMES = {"en": "english", "fr": "french", "de": "german", "es": "spanish"}


def _sse_headers() -> dict[str, str]:
    return {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def _openai_error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers={"x-request-id": _short_id("req_")})


def _wav_seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError):
        return None


# -- Deepgram -------------------------------------------------------------------------------


@dataclass
class DeepgramConnection:
    """One request to ``/v1/listen`` (websocket or refused upgrade) and what went over it."""

    number: int
    query_items: list[tuple[str, str]]
    authorization: str | None
    request_id: str
    # "open", "closed" (after a normal close), "drop", "hang", "status_500/401/400"
    outcome: str = "open"
    messages: list[str] = field(default_factory=list)  # the types of the client's JSON messages
    audio_chunks: int = 0
    audio_bytes: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (the last value of a repeated one)."""
        return dict(self.query_items)

    @property
    def sent_types(self) -> list[str]:
        return [str(m.get("type")) for m in self.sent]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == "Results" and m.get("is_final")]


class _EnergyListener:
    """Deepgram's live-transcription behaviour over linear16 audio, with energy-based VAD.

    Pure logic: ``feed``/``finalize``/``close`` return the messages to send. Times are in
    seconds of audio received (what Deepgram's ``start``/``duration``/timestamps mean).
    """

    WINDOW_SECONDS = 0.02

    def __init__(
        self,
        *,
        query: dict[str, str],
        request_id: str,
        threshold_dbfs: float,
        endpoint_silence: float,
        interim_interval: float,
        take_transcript: Callable[[], str],
        peek_transcript: Callable[[], str],
    ) -> None:
        self.sample_rate = int(query.get("sample_rate", "16000"))
        self.channels = int(query.get("channels", "1"))
        self.model = query.get("model", "nova-3")
        self.vad_events = query.get("vad_events") == "true"
        self.interim_results = query.get("interim_results") == "true"
        self.diarize = query.get("diarize") == "true"
        endpointing = query.get("endpointing", "10")
        self.endpointing = endpointing != "false"
        query_silence = float(endpointing) / 1000 if self.endpointing else 0.0
        self.endpoint_silence = max(endpoint_silence, query_silence)
        utterance_end_ms = query.get("utterance_end_ms")
        self.utterance_end = float(utterance_end_ms) / 1000 if utterance_end_ms else None
        self.request_id = request_id
        self.threshold_dbfs = threshold_dbfs
        self.interim_interval = interim_interval
        self._take = take_transcript
        self._peek = peek_transcript
        self.model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"loopback-{self.model}"))

        self._window_bytes = round(self.sample_rate * self.WINDOW_SECONDS) * self.channels * 2
        self._pending = bytearray()
        self._sha256 = hashlib.sha256()
        self.now = 0.0  # end of the audio analysed so far
        self.result_start = 0.0  # start of the audio no final result has covered yet
        self.speaking = False
        self.speech_start = 0.0
        self.voice_end = 0.0
        self._last_interim = 0.0
        self._utterance_end_due: float | None = None  # last word end awaiting UtteranceEnd

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._sha256.update(data)
        self._pending += data
        out: list[dict[str, Any]] = []
        while len(self._pending) >= self._window_bytes:
            window = bytes(self._pending[: self._window_bytes])
            del self._pending[: self._window_bytes]
            out += self._analyse(window)
        return out

    def finalize(self) -> list[dict[str, Any]]:
        out = self.flush()
        if self.speaking:
            out.append(self._final(speech_final=True, from_finalize=True))
        else:  # nothing to finalize: an empty final closes the window, as Deepgram does
            out.append(self._results("", is_final=True, speech_final=False, from_finalize=True))
            self.result_start = self.now
        return out

    def close(self) -> list[dict[str, Any]]:
        out = self.flush()
        if self.speaking:
            out.append(self._final(speech_final=self.endpointing, from_finalize=False))
        out.append(
            {
                "type": "Metadata",
                "transaction_key": "deprecated",
                "request_id": self.request_id,
                "sha256": self._sha256.hexdigest(),
                "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "duration": round(self.now, 3),
                "channels": self.channels,
                "models": [self.model_uuid],
                "model_info": {self.model_uuid: self.model_info()},
            }
        )
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Analyse the audio left over from the last whole window."""
        whole = len(self._pending) - len(self._pending) % (2 * self.channels)
        window = bytes(self._pending[:whole])
        self._pending.clear()
        return self._analyse(window) if window else []

    def _analyse(self, window: bytes) -> list[dict[str, Any]]:
        samples = np.frombuffer(window, dtype="<i2").reshape(-1, self.channels)
        rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2)))
        voiced = 20 * math.log10(rms + 1e-12) >= self.threshold_dbfs
        start = self.now
        self.now += len(samples) / self.sample_rate
        out: list[dict[str, Any]] = []
        if voiced:
            if not self.speaking:
                self.speaking = True
                self.speech_start = start
                self._last_interim = start
                self._utterance_end_due = None
                if self.vad_events:
                    out.append(
                        {"type": "SpeechStarted", "channel": [0], "timestamp": round(start, 3)}
                    )
            self.voice_end = self.now
            if self.interim_results and self.now - self._last_interim >= self.interim_interval:
                self._last_interim = self.now
                out.append(self._interim())
            return out
        if self.speaking and self.now - self.voice_end >= self.endpoint_silence:
            out.append(self._final(speech_final=self.endpointing, from_finalize=False))
        due = self._utterance_end_due
        if (
            due is not None
            and self.utterance_end is not None
            and self.now - due >= self.utterance_end
        ):
            out.append({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(due, 3)})
            self._utterance_end_due = None
        return out

    def _interim(self) -> dict[str, Any]:
        words = self._peek().split()
        shown = min(len(words), 1 + int((self.now - self.speech_start) / 0.4))
        return self._results(
            " ".join(words[:shown]), is_final=False, speech_final=False, from_finalize=False
        )

    def _final(self, *, speech_final: bool, from_finalize: bool) -> dict[str, Any]:
        message = self._results(
            self._take(), is_final=True, speech_final=speech_final, from_finalize=from_finalize
        )
        self.speaking = False
        self.result_start = self.now
        self._utterance_end_due = self.voice_end
        return message

    def _results(
        self, transcript: str, *, is_final: bool, speech_final: bool, from_finalize: bool
    ) -> dict[str, Any]:
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(self.now - self.result_start, 3),
            "start": round(self.result_start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": transcript,
                        "confidence": 0.98 if transcript else 0.0,
                        "words": self.words(transcript),
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": self.model_info(),
                "model_uuid": self.model_uuid,
            },
        }

    def words(self, transcript: str) -> list[dict[str, Any]]:
        """Word timings spread over the voiced span, in proportion to each word's length."""
        tokens = transcript.split()
        if not tokens:
            return []
        begin, end = self.speech_start, max(self.voice_end, self.speech_start)
        total = sum(len(t) for t in tokens)
        words, at = [], begin
        for token in tokens:
            length = (end - begin) * len(token) / total
            word: dict[str, Any] = {
                "word": re.sub(r"[^\w']", "", token).lower() or token.lower(),
                "start": round(at, 3),
                "end": round(at + length, 3),
                "confidence": 0.97,
                "punctuated_word": token,
            }
            if self.diarize:
                word["speaker"] = 0
                word["speaker_confidence"] = 0.9
            words.append(word)
            at += length
        return words

    def model_info(self) -> dict[str, str]:
        return {"name": f"general-{self.model}", "version": "loopback", "arch": self.model}


class LoopbackDeepgram(_LoopbackServer):
    """A Deepgram API stand-in on 127.0.0.1; use ``async with``."""

    def __init__(
        self,
        *,
        transcripts: list[str] | None = None,
        default_transcript: str = DEFAULT_TRANSCRIPT,
        endpoint_silence: float = 0.3,
        threshold_dbfs: float = -40.0,
        interim_interval: float = 0.25,
        api_key: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host=host)
        self.transcripts: list[str] = transcripts if transcripts is not None else []
        self.default_transcript = default_transcript
        self.endpoint_silence = endpoint_silence  # trailing silence that ends an utterance
        self.threshold_dbfs = threshold_dbfs  # window RMS at or above this is speech
        self.interim_interval = interim_interval  # audio seconds between interim results
        self.api_key = api_key  # None: any ``Token`` key is accepted

        self.connections: list[DeepgramConnection] = []
        self.prerecorded: list[ProviderRequest] = []
        self._failures: deque[str] = deque()

    @property
    def base_url(self) -> str:
        """What to pass as ``deepgram.STT(base_url=...)``: the whole listen endpoint."""
        return f"{self.origin}/v1/listen"

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/listen", self._tracked(self._listen))
        app.router.add_post("/v1/listen", self._tracked(self._prerecorded))

    def fail(self, mode: DeepgramFailure, count: int = 1) -> None:
        """Make the next ``count`` requests to ``/v1/listen`` fail with ``mode``.

        ``status_500``: refuse the websocket upgrade with an HTTP 500. ``drop``: accept,
        then cut the TCP connection (no close frame) on the first audio message. ``hang``:
        never answer the upgrade until the server closes.
        """
        if mode not in get_args(DeepgramFailure):
            raise ValueError(f"unknown failure mode {mode!r}")
        self._failures.extend([mode] * count)

    def open_connections(self) -> list[DeepgramConnection]:
        return [c for c in self.connections if c.outcome == "open"]

    def _take_transcript(self) -> str:
        return self.transcripts.pop(0) if self.transcripts else self.default_transcript

    def _peek_transcript(self) -> str:
        return self.transcripts[0] if self.transcripts else self.default_transcript

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "token" and bool(key.strip()) and self.api_key in (None, key)

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        connection = DeepgramConnection(
            number=len(self.connections) + 1,
            query_items=list(request.query.items()),
            authorization=request.headers.get("Authorization"),
            request_id=str(uuid.uuid4()),
        )
        self.connections.append(connection)
        await self._notify()
        if not self._authorized(request):
            connection.outcome = "status_401"
            return _deepgram_error(401, "INVALID_AUTH", "Invalid credentials.", connection)
        mode = self._failures.popleft() if self._failures else None
        if mode == "status_500":
            connection.outcome = "status_500"
            return _deepgram_error(500, "INTERNAL_SERVER_ERROR", "loopback failure", connection)
        if mode == "hang":
            connection.outcome = "hang"
            return await self._hang(request)

        try:
            listener = _EnergyListener(
                query=connection.query,
                request_id=connection.request_id,
                threshold_dbfs=self.threshold_dbfs,
                endpoint_silence=self.endpoint_silence,
                interim_interval=self.interim_interval,
                take_transcript=self._take_transcript,
                peek_transcript=self._peek_transcript,
            )
        except ValueError as exc:
            connection.outcome = "status_400"
            return _deepgram_error(400, "Bad Request", f"invalid query: {exc}", connection)
        ws = web.WebSocketResponse(timeout=0.5, autoping=True)
        if not ws.can_prepare(request).ok:
            connection.outcome = "status_400"
            return _deepgram_error(400, "Bad Request", "expected a websocket", connection)
        ws.headers["dg-request-id"] = connection.request_id
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._converse(request, ws, connection, listener, drop=mode == "drop")
        finally:
            self._sockets.discard(ws)
            if connection.outcome == "open":
                connection.outcome = "closed"
                if not ws.closed:
                    await ws.close()
        return ws

    async def _converse(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        connection: DeepgramConnection,
        listener: _EnergyListener,
        *,
        drop: bool,
    ) -> None:
        async for message in ws:
            out: list[dict[str, Any]] = []
            closing = False
            if message.type == aiohttp.WSMsgType.BINARY:
                connection.audio_chunks += 1
                connection.audio_bytes += len(message.data)
                if drop:
                    connection.outcome = "drop"
                    _abort(request)
                    return
                out = listener.feed(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                try:
                    kind = str(json.loads(message.data).get("type"))
                except (ValueError, AttributeError):
                    kind = "<invalid>"
                connection.messages.append(kind)
                if kind == "Finalize":
                    out = listener.finalize()
                elif kind == "CloseStream":
                    out = listener.close()
                    closing = True
                # KeepAlive (and anything else) needs no answer
            try:
                for item in out:
                    await ws.send_str(json.dumps(item))
                    connection.sent.append(item)
            except ConnectionError:
                return
            await self._notify()
            if closing:
                await ws.close(code=aiohttp.WSCloseCode.OK)
                return

    async def _prerecorded(self, request: web.Request) -> web.StreamResponse:
        audio = await request.read()
        authorized = self._authorized(request)
        mode = self._failures.popleft() if authorized and self._failures else None
        outcome = "status_401" if not authorized else (mode or "ok")
        self.prerecorded.append(
            ProviderRequest(
                endpoint="listen",
                outcome=outcome,
                at=time.monotonic(),
                authorization=request.headers.get("Authorization"),
            )
        )
        await self._notify()
        request_id = str(uuid.uuid4())
        if not authorized:
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        if mode == "hang":
            return await self._hang(request)
        if mode == "status_500":
            return web.json_response({"err_code": "INTERNAL_SERVER_ERROR"}, status=500)

        query = dict(request.query)
        try:
            sample_rate, channels, pcm = _read_linear16(audio, query)
            listener = _EnergyListener(
                query={**query, "sample_rate": str(sample_rate), "channels": str(channels)},
                request_id=request_id,
                threshold_dbfs=self.threshold_dbfs,
                endpoint_silence=math.inf,  # one result for the whole file
                interim_interval=math.inf,
                take_transcript=self._take_transcript,
                peek_transcript=self._peek_transcript,
            )
        except ValueError as exc:
            return web.json_response({"err_code": "Bad Request", "err_msg": str(exc)}, status=400)
        listener.feed(pcm)
        listener.flush()
        transcript = ""
        if listener.speaking:  # a dropped answer leaves the script where it was
            transcript = self._peek_transcript() if mode == "drop" else self._take_transcript()
        alternative = {
            "transcript": transcript,
            "confidence": 0.98 if transcript else 0.0,
            "words": listener.words(transcript),
        }
        body = {
            "metadata": {
                "transaction_key": "deprecated",
                "request_id": request_id,
                "sha256": hashlib.sha256(audio).hexdigest(),
                "created": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "duration": round(listener.now, 3),
                "channels": channels,
                "models": [listener.model_uuid],
                "model_info": {listener.model_uuid: listener.model_info()},
            },
            "results": {"channels": [{"alternatives": [alternative]}]},
        }
        if mode == "drop":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            payload = json.dumps(body).encode()
            await response.write(payload[: len(payload) // 2])
            _abort(request)
            return response
        return web.json_response(body, headers={"dg-request-id": request_id})


def _deepgram_error(
    status: int, code: str, message: str, connection: DeepgramConnection
) -> web.Response:
    body = {"err_code": code, "err_msg": message, "request_id": connection.request_id}
    return web.json_response(body, status=status, headers={"dg-error": message})


def _read_linear16(audio: bytes, query: dict[str, str]) -> tuple[int, int, bytes]:
    """(sample rate, channels, samples) of a WAV body, or of raw linear16 per the query."""
    try:
        with wave.open(io.BytesIO(audio), "rb") as wav:
            return wav.getframerate(), wav.getnchannels(), wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        return int(query.get("sample_rate", "16000")), int(query.get("channels", "1")), audio


__all__ = [
    "DEFAULT_REPLY",
    "DEFAULT_TRANSCRIPT",
    "TTS_SAMPLE_RATE",
    "DeepgramConnection",
    "LoopbackDeepgram",
    "LoopbackOpenAI",
    "ProviderRequest",
    "Segment",
    "TranscriptionRequest",
    "audio_frames",
    "silence_signal",
    "speech_signal",
    "to_pcm16",
    "utterance_frames",
]
