"""``python -m clara_voice {start,dev,console,connect,download-files,outbox,web}``.

Settings are read and validated first: a bad value, or a selected cloud provider without
its API key, prints one line per variable and exits 2 before anything registers with
LiveKit. Then livekit's CLI runs over a ClaraWorker; ``outbox`` is the operator's look at
the outbox (:mod:`clara_voice.outbox_cli`), ``web`` serves the page to talk to Clara
(:mod:`clara_voice.web`).
"""

from __future__ import annotations

import sys
import warnings

from clara_voice.config import Settings, SettingsError, load_settings


def check_providers(settings: Settings) -> None:
    """Stop at start when a selected cloud provider has no API key."""
    from clara_voice.voice.providers import missing_keys

    if problems := missing_keys(settings):
        raise SettingsError(problems)


def main() -> int:
    command = sys.argv[1:2]
    try:
        settings = load_settings()
        if not {"download-files", "outbox", "web", "db"} & set(command):
            check_providers(settings)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"clara_voice: {problem}", file=sys.stderr)
        return 2

    if command == ["outbox"]:
        from clara_voice.outbox_cli import main as outbox

        return outbox(sys.argv[2:], settings)
    if command == ["db"]:
        from clara_voice.db_cli import main as db

        return db(sys.argv[2:], settings)
    if command == ["web"]:
        from clara_voice.web import main as web

        return web(sys.argv[2:], settings)

    from livekit.agents import cli

    from clara_voice.worker import ClaraWorker

    worker = ClaraWorker(settings)
    # livekit calls its Python CLI deprecated in favour of the `lk` tool; we keep it because
    # it is what gives `python -m clara_voice start|dev|...` without an extra binary
    warnings.filterwarnings("ignore", "the built-in Python CLI is deprecated")
    try:
        cli.run_app(worker)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    else:
        code = 0
    return 1 if worker.gave_up else code


if __name__ == "__main__":
    sys.exit(main())
