"""Failed API authentications per client: a token bucket each, in bounded memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class FailureLimiter:
    """Each client may fail ``limit`` times at once, then once per ``window / limit`` seconds.

    A client with no failure left is refused (429) until its bucket has refilled one failure:
    ``blocked_for`` says how long. At most ``max_clients`` clients are remembered (the least
    recently seen is forgotten first), so a flood of addresses cannot grow memory.
    """

    def __init__(self, limit: int, window: float, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ValueError("limit, window and max_clients must be positive")
        self.limit = limit
        self.rate = limit / window  # failures regained per second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, client: str, now: float) -> float:
        entry = self._buckets.get(client)
        if entry is None:
            return float(self.limit)
        tokens, updated = entry
        return min(float(self.limit), tokens + (now - updated) * self.rate)

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may now."""
        tokens = self._tokens(client, self.clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, client: str) -> float:
        """Count one failed attempt; returns ``blocked_for`` afterwards."""
        now = self.clock()
        tokens = max(0.0, self._tokens(client, now) - 1)
        self._buckets[client] = (tokens, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(seconds: float) -> str:
    """Whole seconds, at least 1 (RFC 9110 delay-seconds)."""
    return str(max(1, math.ceil(seconds)))
