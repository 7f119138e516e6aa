"""A token bucket per client, in process memory, bounded by an LRU of clients.

Each client (an API key's digest, or a client IP) owns a bucket of ``burst``
tokens refilled at ``rate`` tokens per second; a request takes one token or,
when the bucket holds less than one, is refused with the seconds until it
would hold one (the ``Retry-After`` of the 429).

Cost and concurrency: :meth:`RateLimiter.take` is a dict lookup, a
``move_to_end`` and a few float operations. It runs only on the event loop's
thread (from the ASGI middleware), so it needs no lock and nothing on the hot
path of ``/v1/recommend`` waits for another request. The state is per worker
process: with ``--workers N`` (or N pods) a client may send up to N times the
rate in total, and a restart forgets every bucket.

Memory: at most ``max_clients`` buckets; past that the least recently seen
client is forgotten (it comes back with a full bucket).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class RateLimiter:
    """Token buckets of up to ``max_clients`` clients (least recently seen evicted first).

    Args:
      rate: tokens added per second (> 0).
      burst: bucket size (>= 1): requests a fresh client may send at once.
      max_clients: buckets kept.
      clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError(f"rate {rate} > 0, burst {burst} >= 1, max_clients {max_clients} >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        # client -> [tokens, last refill time]; order = least recently seen first.
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: Hashable) -> float:
        """Take one token of ``client``'s bucket: 0.0 if granted, else seconds until one is there."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
            self._buckets[client] = [self.burst - 1.0, now]
            return 0.0
        self._buckets.move_to_end(client)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate
