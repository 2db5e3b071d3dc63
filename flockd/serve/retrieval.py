"""A node's own documents as a persistent full-text index: SQLite FTS5 (standard library).

Files: ``.txt`` and ``.md`` under one folder (regular files only; symlinks are not
followed, so the index never reads outside the folder), each at most MAX_FILE_BYTES.
Chunks: blank-line separated paragraphs packed into chunks of at most CHUNK_CHARS
characters (a longer paragraph is cut at whitespace).

Re-indexing is incremental: a file whose (mtime, size) is unchanged is not read; one whose
stat changed is hashed, and only a new hash re-chunks it; a file gone loses its chunks.

Search: the query's words, each quoted (so no FTS5 syntax from a client reaches SQLite),
joined with OR, ranked by FTS5's ``bm25()``. SQLite's bm25 is lower-is-better; ``Hit.score``
is its negation, so a higher score is a better match.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".txt", ".md")
MAX_FILE_BYTES = 8 << 20
MAX_FILES = 100_000
CHUNK_CHARS = 800
MAX_QUERY_TERMS = 32
_WORD = re.compile(r"\w+", re.UNICODE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, mtime_ns INTEGER, size INTEGER, sha256 TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(text, path UNINDEXED, chunk UNINDEXED);
"""


class RetrievalError(Exception):
    """The index cannot be opened or built (no FTS5, an unreadable folder)."""


@dataclass(frozen=True)
class Hit:
    file: str  # relative to the knowledge folder
    chunk: int  # index of the chunk within its file, from 0
    score: float  # -bm25: higher is better
    text: str


@dataclass(frozen=True)
class IndexReport:
    added: int
    changed: int
    removed: int
    unchanged: int
    chunks: int


def fts5_available() -> bool:
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    return True


def chunk_text(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed into chunks of at most ``max_chars`` characters."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        while len(paragraph) > max_chars:
            cut = paragraph.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append(paragraph[:cut])
            paragraph = paragraph[cut:].lstrip()
        if paragraph:
            pieces.append(paragraph)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] += "\n\n" + piece
        else:
            chunks.append(piece)
    return chunks


def match_query(text: str) -> str | None:
    """An FTS5 MATCH expression of the text's words (quoted, OR), None when it has none."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_QUERY_TERMS]
    return " OR ".join(f'"{w}"' for w in words) if words else None


class KnowledgeIndex:
    """The index of one folder in one SQLite file. Thread-safe (one lock): searches run in
    worker threads, off the event loop."""

    def __init__(self, folder: str | Path, db_path: str | Path, *, chunk_chars: int = CHUNK_CHARS) -> None:
        if not fts5_available():
            raise RetrievalError("this Python's sqlite3 has no FTS5")
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise RetrievalError(f"knowledge folder {self.folder} is not a directory")
        self.chunk_chars = chunk_chars
        Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(db_path), check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def chunk_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def texts(self) -> list[str]:
        """Every chunk's text, in index order (for comparisons; the search never needs it)."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT text FROM chunks ORDER BY rowid")]

    def refresh(self) -> IndexReport:
        """Bring the index up to date with the folder; reads only what changed."""
        added = changed = unchanged = 0
        with self._lock, self._db:
            known = {row[0]: row[1:] for row in self._db.execute("SELECT path, mtime_ns, size, sha256 FROM files")}
            seen: set[str] = set()
            for path in self._files():
                name = path.relative_to(self.folder).as_posix()
                seen.add(name)
                stat = path.stat()
                old = known.get(name)
                if old is not None and (old[0], old[1]) == (stat.st_mtime_ns, stat.st_size):
                    unchanged += 1
                    continue
                data = _read_head(path)
                digest = hashlib.sha256(data).hexdigest()
                self._db.execute(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (name, stat.st_mtime_ns, stat.st_size, digest)
                )
                if old is not None and old[2] == digest:
                    unchanged += 1  # touched, same bytes
                    continue
                self._db.execute("DELETE FROM chunks WHERE path = ?", (name,))
                self._db.executemany(
                    "INSERT INTO chunks (text, path, chunk) VALUES (?, ?, ?)",
                    [(text, name, i) for i, text in enumerate(chunk_text(data.decode("utf-8", "replace"), self.chunk_chars))],
                )
                if old is None:
                    added += 1
                else:
                    changed += 1
            gone = set(known) - seen
            for name in gone:
                self._db.execute("DELETE FROM files WHERE path = ?", (name,))
                self._db.execute("DELETE FROM chunks WHERE path = ?", (name,))
            chunks = int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        return IndexReport(added, changed, len(gone), unchanged, chunks)

    def search(self, query: str, top_k: int = 4) -> list[Hit]:
        """The ``top_k`` best chunks for ``query`` by bm25, best first."""
        expression = match_query(query)
        if expression is None:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT path, chunk, bm25(chunks), text FROM chunks WHERE chunks MATCH ? ORDER BY bm25(chunks) LIMIT ?",
                (expression, top_k),
            ).fetchall()
        return [Hit(path, int(chunk), -float(rank), text) for path, chunk, rank, text in rows]

    def _files(self) -> Iterator[Path]:
        count = 0
        for root, dirs, names in os.walk(self.folder):  # followlinks=False: never leaves the folder
            dirs.sort()
            for name in sorted(names):
                path = Path(root) / name
                if path.suffix.lower() not in SUFFIXES or path.is_symlink() or not path.is_file():
                    continue
                count += 1
                if count > MAX_FILES:
                    raise RetrievalError(f"more than {MAX_FILES} files under {self.folder}")
                yield path


def _read_head(path: Path) -> bytes:
    """At most MAX_FILE_BYTES of a file (a larger one is indexed up to there)."""
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES)
