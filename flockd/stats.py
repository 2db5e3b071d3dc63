"""Named event counters a service keeps for the metrics endpoint.

A service owns one ``Counters`` (attribute ``counters``) and bumps it where something
happens (a reorg, a banned peer, a failed action); the Prometheus collector reads every
service's counters at scrape time. Plain ints under one lock-free owner: every service
runs on the trio thread, so no locking is needed.
"""

from __future__ import annotations

from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def incr(self, name: str, amount: int = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self._counts[name] += amount

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
