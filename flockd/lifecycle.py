"""The daemon's services, started in order and stopped in reverse, one at a time.

Each service runs in a nursery of its own. A stop cancels the newest service and waits
until it has finished (its worker threads included: `trio.to_thread` is not cancellable)
before it cancels the one started before it. One cancel scope over all of them would
stop them together: the chain service would close its database while a task runner's
read of it was still in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import trio

Service = Callable[..., Awaitable[Any]]  # trio's `nursery.start` convention: takes task_status


class ServiceStack:
    """An async context: `start` services in order, `wait_for_stop` until `request_stop`;
    leaving it stops them in reverse. `up` names the running services, in start order."""

    def __init__(self, up: list[str]) -> None:
        self.up = up
        self._stack = AsyncExitStack()
        self._stop_requested = False
        self._waiting = trio.CancelScope()  # the start or the wait a stop interrupts

    def request_stop(self) -> None:
        """From the event loop's thread: interrupts a start in progress or the wait."""
        self._stop_requested = True
        self._waiting.cancel()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    async def __aenter__(self) -> ServiceStack:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return bool(await self._stack.__aexit__(kind, exc, tb))

    async def start(self, name: str, service: Service) -> bool:
        """Start `service` in a nursery of its own; False (and nothing started) when a stop
        was requested before or during its start."""
        if self._stop_requested:
            return False
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._stack.callback(nursery.cancel_scope.cancel)  # unwound first: cancel, then wait
        with self._interruptible() as scope:
            await nursery.start(service)
        if scope.cancelled_caught:
            return False
        self.up.append(name)
        self._stack.callback(self.up.remove, name)
        return True

    async def wait_for_stop(self) -> None:
        with self._interruptible():
            await trio.sleep_forever()

    def _interruptible(self) -> trio.CancelScope:
        self._waiting = trio.CancelScope()
        if self._stop_requested:
            self._waiting.cancel()
        return self._waiting
