"""py-evm's key-value store on disk: one sqlite table in WAL mode behind `BaseAtomicDB`.

py-evm 0.12 ships no on-disk backend. Every `atomic_batch()` (block persist, state persist)
becomes ONE sqlite transaction, so a process killed at any instant leaves either the whole
batch or none of it. Writes outside a batch autocommit one by one; py-evm only does that for
content-addressed trie nodes, which are harmless if orphaned.

synchronous=NORMAL in WAL mode: a committed transaction survives the process being killed
(it is in the WAL, in the OS cache); only a power cut may lose the last few, never tear one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDBWriteBatch
from eth.db.backends.base import BaseAtomicDB

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"


class SqliteDB(BaseAtomicDB):
    """A py-evm AtomicDatabaseAPI stored in one sqlite file. Safe to share between threads
    (one connection, serialised by a lock), but one process at a time (the daemon holds a
    datadir lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is exactly one
        # transaction and single writes autocommit.
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __getitem__(self, key: bytes) -> bytes:
        with self._lock:
            row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            cursor = self._conn.execute("DELETE FROM kv WHERE k = ?", (key,))
        if cursor.rowcount == 0:
            raise KeyError(key)

    def _exists(self, key: bytes) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        # Reads inside the batch see its own pending writes, then fall through to us.
        batch = AtomicDBWriteBatch(self)
        try:
            yield batch
            diff = batch._diff()
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", diff.pending_items()
                    )
                    self._conn.executemany(
                        "DELETE FROM kv WHERE k = ?", ((k,) for k in diff.deleted_keys())
                    )
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
        finally:
            # Make the batch unusable outside its context, as py-evm's own AtomicDB does.
            batch._track_diff = None  # type: ignore[assignment]
            batch._write_target_db = None  # type: ignore[assignment]
