"""os.fsync that holds the first sync of one file until released: a disk slow to sync
under load, so a test can put a second write beside the first, deterministically."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class HeldFsync:
    """Install with ``monkeypatch.setattr(os, "fsync", HeldFsync(name_part, os.fsync))``:
    the first fsync of a file whose path contains ``name_part`` waits (in its thread)
    until ``release`` is set, or ``hold_seconds`` have passed."""

    def __init__(self, name_part: str, real: Callable[[int], None], hold_seconds: float = 10.0) -> None:
        self.name_part = name_part
        self.real = real
        self.hold_seconds = hold_seconds
        self.holding = threading.Event()
        self.release = threading.Event()
        self._held = False
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        with self._lock:
            hold = self.name_part in path and not self._held
            self._held = self._held or hold
        if hold:
            self.holding.set()
            self.release.wait(self.hold_seconds)
        self.real(fd)
