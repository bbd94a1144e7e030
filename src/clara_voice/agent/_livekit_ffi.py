"""livekit's FFI client, where clara needs what the SDK does not offer.

How many readers of livekit's FFI event queue this process has (a leak shows here):

Every livekit stream reader, audio stream and room subscribes to the process-wide FFI
queue (``FfiClient.instance.queue``), and each subscriber's filter runs for every FFI event
of the process, audio frames included; one that is never closed costs CPU for good. The
count is private livekit state (``FfiQueue._subscribers``); tests/agent/test_health.py
fails loudly if it moves, and this returns ``None`` instead of raising.

An attribute update sent from any thread, without waiting for LiveKit's acknowledgement
(:func:`send_attributes`): the SDK's ``set_attributes`` runs on the event loop and waits
for the server, so a heartbeat written through it stops whenever the loop is held up (a
busy machine) or an acknowledgement does not come (5 s, now and then). The request is the
one ``LocalParticipant.set_attributes`` builds (``_ffi_handle`` is private).
"""

from __future__ import annotations

from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2


def ffi_subscriptions() -> int | None:
    """The FFI queue's subscribers now, or ``None`` when livekit no longer says."""
    try:
        queue = FfiClient.instance.queue
        with queue._lock:
            return len(queue._subscribers)
    except Exception:
        return None


def send_attributes(participant: rtc.LocalParticipant, attributes: dict[str, str]) -> None:
    """Send ``attributes`` as ``participant``'s, now, from any thread; the answer is not
    awaited (nobody reads it)."""
    req = ffi_pb2.FfiRequest()
    req.set_local_attributes.local_participant_handle = participant._ffi_handle.handle
    for key, value in attributes.items():
        entry = req.set_local_attributes.attributes.add()
        entry.key, entry.value = key, value
    FfiClient.instance.request(req)


__all__ = ["ffi_subscriptions", "send_attributes"]
