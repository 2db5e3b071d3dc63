"""The bounded queue in front of the models: ``running`` requests at work and at most
``waiting`` more in line; a request beyond that is refused at once (503, an OpenAI-style
error), never queued without bound. A request cancelled while in line (its client left)
leaves the line."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from flockd.serve.errors import APIError


class Admission:
    def __init__(self, running: int = 1, waiting: int = 8) -> None:
        if running < 1 or waiting < 0:
            raise ValueError("need running >= 1 and waiting >= 0")
        self.capacity = running + waiting
        self._slots = trio.Semaphore(running)
        self.inside = 0  # running + waiting now

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.inside >= self.capacity:
            raise APIError(
                503, "the server is busy: too many requests in line; retry later",
                type="server_overloaded", code="queue_full",
            )
        self.inside += 1
        try:
            async with self._slots:
                yield
        finally:
            self.inside -= 1
