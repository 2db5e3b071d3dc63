"""serve_*: the daemon's serving service over the control socket (present when [serve] is
enabled): what it serves and counts, re-indexing its knowledge folder without a restart, and
naming another folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import trio

from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.serve.app import ServeApp, describe_model
from flockd.serve.retrieval import KnowledgeIndex, RetrievalError


class ServeNamespace:
    namespace: ClassVar[str] = "serve"

    def __init__(self, app: ServeApp, port: Callable[[], int | None], index_path: Path | None = None) -> None:
        self._app = app
        self._port = port
        self._index_path = index_path  # where serve_knowledge keeps the index of a folder it names

    async def serve_status(self) -> dict[str, Any]:
        """The bound port, the models served, the knowledge folder and the counters."""
        index = self._app.index
        return {
            "port": self._port(),
            "models": [describe_model(m) for m in self._app.models.values()],
            "knowledge": None if index is None else str(index.folder),
            "chunks": 0 if index is None else await trio.to_thread.run_sync(index.chunk_count),
            "counters": self._app.counters.snapshot(),
        }

    async def serve_reindex(self) -> dict[str, int]:
        """Bring the index up to date with the knowledge folder (reads only changed files)."""
        index = self._app.index
        if index is None:
            raise RPCError(INVALID_PARAMS, "serve_reindex: this node serves no knowledge folder ([serve] knowledge)")
        report = await trio.to_thread.run_sync(index.refresh)
        return dataclasses.asdict(report)

    async def serve_knowledge(self, folder: str) -> dict[str, Any]:
        """Retrieve from another folder of .txt/.md files from now on (until a restart, which
        reads [serve] knowledge again): index it, incrementally, in the server's index file."""
        if self._index_path is None:
            raise RPCError(INVALID_PARAMS, "serve_knowledge: this server has no index file to keep a folder in")
        try:
            index = await trio.to_thread.run_sync(KnowledgeIndex, folder, self._index_path)
            report = await trio.to_thread.run_sync(index.refresh)
        except RetrievalError as exc:
            raise RPCError(INVALID_PARAMS, f"serve_knowledge: {exc}") from None
        # The old index is not closed: a search may still be running on it in a thread.
        self._app.index = index
        return {"folder": str(index.folder), **dataclasses.asdict(report)}
