"""``python -m clara_voice outbox {status,dead-letters,replay}``: the outbox for an operator.

- ``status``: each outbox file under ``CLARA_DATA_DIR/outbox`` (live: a running worker's;
  orphan: an ended one's, adopted at the next start), its waiting records and their size,
  and its dead letters; then the totals.
- ``dead-letters``: every dead letter as one JSON object per line (key, kind, payload,
  error, times, file), to keep, inspect or edit.
- ``replay [KEY ...]``: deliver the dead letters (all, or the given keys) to the configured
  backend; each one the backend takes leaves the dead letters. Exit 0 when every one was
  delivered, 1 otherwise (the others stay, with a line saying why).

Its command line is parsed, and its help printed, by :mod:`clara_voice._cli`, before
settings are read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from clara_voice._redact import redact
from clara_voice.config import Settings
from clara_voice.persistence.dead_letters import dead_letters, outbox_files, replay
from clara_voice.persistence.factory import build_backend
from clara_voice.persistence.outbox import OUTBOX_DIRNAME


def main(args: argparse.Namespace, settings: Settings) -> int:
    """The ``outbox`` command, its command line parsed (``_cli.outbox_parser``)."""
    directory = settings.data_dir / OUTBOX_DIRNAME
    if args.command == "status":
        return _status(directory)
    if args.command == "dead-letters":
        for letter in dead_letters(directory):
            print(json.dumps(letter.to_json(), ensure_ascii=False))
        return 0
    return asyncio.run(_replay(directory, settings, set(args.keys)))


def _status(directory: Path) -> int:
    files = outbox_files(directory)
    print(f"{'file':<34} {'state':<7} {'waiting':>8} {'bytes':>12} {'dead letters':>13}")
    for f in files:
        state = "live" if f.live else "orphan"
        print(f"{f.name:<34} {state:<7} {f.pending:>8} {f.pending_bytes:>12} {f.dead_letters:>13}")
    total = (sum(f.pending for f in files), sum(f.pending_bytes for f in files))
    dead = sum(f.dead_letters for f in files)
    print(f"{'total':<34} {len(files):<7} {total[0]:>8} {total[1]:>12} {dead:>13}")
    return 0


async def _replay(directory: Path, settings: Settings, keys: set[str]) -> int:
    letters = [letter for letter in dead_letters(directory) if not keys or letter.key in keys]
    backend = build_backend(settings)
    delivered = failed = 0
    try:
        for letter in letters:
            try:
                await replay(letter, directory, backend)
            except Exception as exc:
                failed += 1
                why = redact(f"{type(exc).__name__}: {exc}")[:300]
                print(f"kept {letter.key}: {why}", file=sys.stderr)
            else:
                delivered += 1
                print(f"delivered {letter.key}")
    finally:
        await backend.aclose()
    missing = keys - {letter.key for letter in letters}
    for key in sorted(missing):
        print(f"no dead letter {key}", file=sys.stderr)
    print(f"replayed {delivered} of {len(letters)} dead letters", file=sys.stderr)
    return 0 if failed == 0 and not missing else 1


__all__ = ["main"]
