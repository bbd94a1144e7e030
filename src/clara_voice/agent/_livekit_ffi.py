"""How many readers of livekit's FFI event queue this process has (a leak shows here).

Every livekit stream reader, audio stream and room subscribes to the process-wide FFI
queue (``FfiClient.instance.queue``), and each subscriber's filter runs for every FFI event
of the process, audio frames included; one that is never closed costs CPU for good. The
count is private livekit state (``FfiQueue._subscribers``); tests/agent/test_health.py
fails loudly if it moves, and this returns ``None`` instead of raising.
"""

from __future__ import annotations

from livekit.rtc._ffi_client import FfiClient


def ffi_subscriptions() -> int | None:
    """The FFI queue's subscribers now, or ``None`` when livekit no longer says."""
    try:
        queue = FfiClient.instance.queue
        with queue._lock:
            return len(queue._subscribers)
    except Exception:
        return None


__all__ = ["ffi_subscriptions"]
