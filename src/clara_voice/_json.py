"""JSON from outside the process (a client, a room's creator, a backend), parsed safely.

``json.loads`` raises ``RecursionError``, not ``ValueError``, on a value nested more deeply
than the interpreter's recursion limit ("[[[[…" a few thousand times fits in a small
payload), and a handler that catches ``ValueError`` for bad JSON lets that one escape.
"""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``; any bad JSON, too deep a nesting included, is a ``ValueError``."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


__all__ = ["parse_json"]
