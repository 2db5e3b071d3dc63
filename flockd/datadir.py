"""The data directory: its files, and the lock that keeps a second daemon out."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

IPC_SOCKET = "flockd.ipc"
LOCK_FILE = "flockd.lock"


class DatadirLockedError(Exception):
    """Another flockd process already runs on this datadir."""


class DatadirLock:
    """An flock(2) on <datadir>/flockd.lock, held for the daemon's lifetime.

    The kernel drops it when the process dies, kill -9 included, so a crash never
    leaves a stale lock behind; the pid inside is only for the error message.
    """

    def __init__(self, datadir: Path) -> None:
        self.path = datadir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatadirLockedError(
                f"another flockd (pid {holder}) is already running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DatadirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
