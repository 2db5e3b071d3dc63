"""Per-key token buckets and a time-windowed seen-set: the two bits of state inbound checks keep.

Both take `now` as an argument (sans-I/O) and stay bounded however many keys a peer invents.
"""

from __future__ import annotations

from collections import OrderedDict


class TokenBuckets:
    """One token bucket per key (a relaying peer): `rate` tokens/second, at most `burst` saved.
    A take costs one token by default; byte budgets take the message size."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 4096) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, now: float, cost: float = 1.0) -> bool:
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)  # most recently used last
        while len(self._buckets) > self.max_keys:
            # Forgetting the least recently used key only ever refills it: never unfair to it.
            self._buckets.popitem(last=False)
        return allowed


class SeenWindow:
    """Ids seen within the last `window` seconds; older ones are forgotten (freshness rejects them)."""

    def __init__(self, window: float, *, max_items: int = 200_000) -> None:
        self.window = window
        self.max_items = max_items
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, item: bytes) -> bool:
        return item in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, item: bytes, now: float) -> None:
        self._expiry[item] = now + self.window
        self._expiry.move_to_end(item)
        self.prune(now)

    def prune(self, now: float) -> None:
        # Insertion order is expiry order (the window is constant), so stop at the first live one.
        while self._expiry:
            oldest, expires = next(iter(self._expiry.items()))
            if expires > now and len(self._expiry) <= self.max_items:
                break
            del self._expiry[oldest]
