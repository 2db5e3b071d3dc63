"""The daemon's services stop in reverse start order, each one finished before the one it
depends on is cancelled: a task runner's chain read in a worker thread must not outlive
the chain database (a stop once closed the database under such a read, and the daemon
exited 1)."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.testing

from flockd.lifecycle import ServiceStack


class Database:
    def __init__(self) -> None:
        self.closed = False
        self.reads_after_close = 0

    def read(self, entered: threading.Event) -> int:
        entered.set()
        time.sleep(0.2)  # a read the stop finds in flight
        if self.closed:
            self.reads_after_close += 1
        return 1


@pytest.mark.trio
async def test_a_dependent_service_finishes_before_its_dependency_is_cancelled() -> None:
    db = Database()
    entered = threading.Event()
    stack = ServiceStack([])

    async def database(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            db.closed = True  # no checkpoint: closes the moment this service is cancelled

    async def reader(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.to_thread.run_sync(db.read, entered)

    async def stop_mid_read() -> None:
        await trio.to_thread.run_sync(entered.wait)
        stack.request_stop()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_mid_read)
        async with stack:
            assert await stack.start("database", database)
            assert await stack.start("reader", reader)
            assert stack.up == ["database", "reader"]
            await stack.wait_for_stop()
    assert db.closed
    assert db.reads_after_close == 0
    assert stack.up == []


async def stop_once_blocked(stack: ServiceStack) -> None:
    await trio.testing.wait_all_tasks_blocked()
    stack.request_stop()


@pytest.mark.trio
async def test_a_stop_during_a_start_cancels_it_and_starts_nothing_more() -> None:
    stack = ServiceStack([])
    stopped: list[str] = []

    async def slow(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await trio.sleep_forever()  # never reports started
        finally:
            stopped.append("slow")

    async def first(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stopped.append("first")

    async with trio.open_nursery() as nursery, stack:
        assert await stack.start("first", first)
        nursery.start_soon(stop_once_blocked, stack)
        assert not await stack.start("slow", slow)
        assert stack.up == ["first"]
        await stack.wait_for_stop()  # returns at once: the stop was requested
    assert stopped == ["slow", "first"]


@pytest.mark.trio
async def test_a_stop_requested_before_the_start_returns_at_once() -> None:
    stack = ServiceStack([])
    stack.request_stop()
    started: list[str] = []

    async def service(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started.append("service")
        task_status.started()
        await trio.sleep_forever()

    async with stack:
        assert not await stack.start("service", service)
        await stack.wait_for_stop()
    assert started == [] and stack.up == []
