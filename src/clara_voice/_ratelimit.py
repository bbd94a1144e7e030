"""Per-participant rate limits: a token bucket for each identity.

Every request a client can send that costs the agent real work (a chat message: an LLM and
a TTS call; a push-to-talk turn; a session type change) is admitted by the sender's own
bucket: ``capacity`` at once, then ``rate`` per second. Buckets are kept for the most
recent ``MAX_IDENTITIES`` senders, so a flood of identities cannot grow them without bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_IDENTITIES = 1024


class TokenBucket:
    """``capacity`` requests at once, then ``rate`` per second."""

    def __init__(
        self, *, capacity: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._rate = rate
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def take(self) -> bool:
        """Spend one token; ``False`` when there is none left."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class RateLimits:
    """One :class:`TokenBucket` per identity."""

    def __init__(
        self, *, capacity: float, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, identity: str) -> bool:
        """Whether ``identity`` may make one more request now (spending a token if so)."""
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = TokenBucket(
                capacity=self._capacity, rate=self._rate, clock=self._clock
            )
            while len(self._buckets) > MAX_IDENTITIES:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(identity)
        return bucket.take()

    def forget(self, identity: str) -> None:
        self._buckets.pop(identity, None)

    def clear(self) -> None:
        self._buckets.clear()


__all__ = ["MAX_IDENTITIES", "RateLimits", "TokenBucket"]
