"""Crash-safe small-file writes: a key or config is either wholly there or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically; refuse if `path` exists.

    The bytes go to a temporary file that is fsynced and then hard-linked into place:
    link() fails if the target exists, so two racing `init`s cannot both win, and a
    kill -9 at any point leaves either no file or the complete one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
