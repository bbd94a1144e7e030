"""The command line of the smoke-test client: ``python -m clara_voice.client``.

Reads ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` (through
:func:`clara_voice.config.load_settings`; provider keys are not needed), mints a token,
runs a :class:`clara_voice.client.VoiceClient` and prints one line per state change and
the latency at the end (JSON lines with ``--json``). A missing or invalid setting, a bad
argument or an unusable WAV is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import get_args

from livekit import rtc

from clara_voice.client.audio import WavFormatError, load_wav_frames
from clara_voice.client.client import (
    EXIT_USAGE,
    ClientResult,
    ClientStateChanged,
    VoiceClient,
    mint_token,
)
from clara_voice.config import Settings, SettingsError, load_settings
from clara_voice.logging import configure_logging
from clara_voice.states import SessionType

_LIVEKIT_FIELDS = ("livekit_url", "livekit_api_key", "livekit_api_secret")


def missing_livekit_settings(settings: Settings) -> list[str]:
    """The LiveKit variables not given (the dev defaults never point at a deployment)."""
    return [Settings.env_name(f) for f in _LIVEKIT_FIELDS if f not in settings.model_fields_set]


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clara_voice.client",
        description="Smoke-test a live deployment: join a room, speak a WAV, record the "
        "agent's reply and measure voice-to-voice latency. Reads LIVEKIT_URL, "
        "LIVEKIT_API_KEY and LIVEKIT_API_SECRET from the environment.",
    )
    parser.add_argument("--room", required=True, help="room to join")
    parser.add_argument("--identity", help="participant identity (default: random)")
    parser.add_argument("--wav", type=Path, help="16-bit PCM WAV to speak")
    parser.add_argument("--record", type=Path, help="WAV file for what the agent says")
    parser.add_argument("--session-type", choices=get_args(SessionType))
    parser.add_argument("--timeout", type=_positive, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log reconnect attempts")
    return parser


def _print_state(change: ClientStateChanged, *, as_json: bool) -> None:
    if as_json:
        line = json.dumps({"event": "connection_state_changed", **asdict(change)})
    elif change.message:
        line = f"{change.state}: {change.message}"
    else:
        line = f"{change.state} ({change.reason})" if change.reason else change.state
    print(line, flush=True)


def _print_result(result: ClientResult, *, as_json: bool) -> None:
    if as_json:
        fields = {
            "event": "result",
            "state": result.state,
            "latency_s": None if result.latency is None else round(result.latency, 3),
            "agent_heard": result.agent_heard,
            "reconnections": result.reconnections,
            "recorded": None if result.recorded is None else str(result.recorded),
            "exit_code": result.exit_code,
        }
        print(json.dumps(fields), flush=True)
        return
    if result.latency is not None:
        print(f"latency: {result.latency:.3f} s (end of speech → agent's first audio)")
    elif result.spoke:
        what = "reply" if result.agent_heard else "audio track"
        print(f"latency: none (no {what} from the agent)")
    if result.recorded is not None:
        print(f"recorded: {result.recorded}")


async def _amain(
    args: argparse.Namespace, settings: Settings, speech: list[rtc.AudioFrame] | None
) -> int:
    token = mint_token(
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret.get_secret_value(),
        room=args.room,
        identity=args.identity or f"clara-smoke-{secrets.token_hex(4)}",
        session_type=args.session_type,
        agent_name=settings.agent_name,
    )
    client = VoiceClient(
        url=settings.livekit_url,
        token=token,
        speech=speech,
        record=args.record,
        push_to_talk=args.session_type == "voice-ptt",
        timeout=args.timeout,
    )
    client.on("connection_state_changed", partial(_print_state, as_json=args.json))
    result = await client.run()
    _print_result(result, as_json=args.json)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.session_type == "text" and args.wav is not None:
        parser.error("--wav needs a voice session type (text sessions have no audio)")
    if args.record is not None and not args.record.parent.is_dir():
        parser.error(f"--record: no directory {args.record.parent}")
    try:
        settings = load_settings()
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"clara_voice.client: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if missing := missing_livekit_settings(settings):
        print(
            f"clara_voice.client: {', '.join(missing)} not set: export the deployment's "
            "LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        speech = None if args.wav is None else load_wav_frames(args.wav)
    except WavFormatError as exc:
        print(f"clara_voice.client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    level = "INFO" if args.verbose else "WARNING"
    configure_logging(level=level, fmt="json" if args.json else "console", stream=sys.stderr)
    try:
        return asyncio.run(_amain(args, settings, speech))
    except KeyboardInterrupt:
        return 130
