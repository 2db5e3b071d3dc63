"""serve_*: the daemon's serving service over the control socket (present when [serve] is
enabled): what it serves and counts, and re-indexing its knowledge folder without a restart."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import trio

from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.serve.app import ServeApp, describe_model


class ServeNamespace:
    namespace: ClassVar[str] = "serve"

    def __init__(self, app: ServeApp, port: Callable[[], int | None]) -> None:
        self._app = app
        self._port = port

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
