"""Misbehaviour scores: points per participant that decay with time; over the threshold, a ban.

Sans-I/O (`now` is an argument) and bounded however many keys peers invent. Keys are
participants' addresses, so a peer id and the sender of its envelopes share one score.
"""

from __future__ import annotations

from collections import OrderedDict


class PeerScores:
    """`decay` points are forgiven per second; reaching `threshold` bans for `ban_seconds`."""

    def __init__(
        self, *, threshold: float, decay: float, ban_seconds: float, max_keys: int = 4096
    ) -> None:
        if threshold <= 0 or decay < 0 or ban_seconds <= 0:
            raise ValueError("threshold and ban_seconds must be > 0, decay >= 0")
        self.threshold = threshold
        self.decay = decay
        self.ban_seconds = ban_seconds
        self.max_keys = max_keys
        self._points: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (points, at)
        self._banned_until: OrderedDict[str, float] = OrderedDict()

    def penalize(self, key: str, points: float, now: float) -> bool:
        """Add `points`; True when this call banned the key (not when it already was)."""
        if self.is_banned(key, now):
            return False
        held, at = self._points.pop(key, (0.0, now))
        held = max(0.0, held - max(0.0, now - at) * self.decay) + points
        if held < self.threshold:
            self._points[key] = (held, now)
            while len(self._points) > self.max_keys:
                self._points.popitem(last=False)  # forgetting points only ever forgives
            return False
        self._banned_until[key] = now + self.ban_seconds
        self._banned_until.move_to_end(key)
        while len(self._banned_until) > self.max_keys:
            self._banned_until.popitem(last=False)
        return True

    def is_banned(self, key: str, now: float) -> bool:
        until = self._banned_until.get(key)
        if until is None:
            return False
        if now < until:
            return True
        del self._banned_until[key]
        return False
