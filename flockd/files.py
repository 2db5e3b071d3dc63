"""Crash-safe small-file writes: a key or config is either wholly there or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# A write's temp file ends so (flockd.store clears its leftovers at open).
TEMP_SUFFIX = ".tmp"


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` atomically; refuse if `path` exists.

    The bytes go to a temporary file that is fsynced and then hard-linked into place:
    link() fails if the target exists, so two racing `init`s cannot both win, and a
    kill -9 at any point leaves either no file or the complete one.
    """
    # A temp name of this write's own, not one per process: two threads may write one
    # path at once, and a leftover of a killed process must not collide with a new write.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)
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
