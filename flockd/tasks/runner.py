"""One node's part in one running task: the daemon's shell around the shared adapter.

The round machine and the carrying out of its actions are `TaskAdapter`'s
(`tasks/adapter.py`, shared with `flockd.sim`); the actions run as trio tasks in
`DaemonActions` (`tasks/executor.py`); the chain is read by `ChainFeed`
(`tasks/chain_feed.py`) through the `TaskChain` seam (`tasks/abc.py`). What is left here
is the trio part: one task owns the adapter and feeds it from an inbox; everything else
only posts events (the chain feed, peers pushing deltas, the actions' answers).

Generations. Start, restart and reorgs are one path: the feed reads what the machine is
replayed from and posts a `Rebuild`; the runner replaces the machine, cancels the
actions of the old one, and drops answers to them (each answer carries the generation of
its action).

Errors. A documented failure of an action reaches the machine as an event. A model the
machine holds that the store cannot give (`DaemonActions._held_model`) makes the feed read
for a rebuild, as a reorg does: the machine replayed from the chain and what the store
really holds fetches or computes the model again. Any other
exception is a bug: it is not swallowed, it ends this task's runner; ``error`` and
``status()`` say what it was, and the task service logs it with its traceback. The other
tasks and the node go on.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import trio

from flockd import round as rnd
from flockd.chain.client.registry import TaskParams
from flockd.logs import get_logger
from flockd.stats import Counters
from flockd.tasks.abc import ChainReadFailed, TaskChain, TaskWork
from flockd.tasks.adapter import TaskAdapter
from flockd.tasks.chain_feed import ChainFeed, ChainMoved, Rebuild
from flockd.tasks.context import NodeContext, describe, hex0x
from flockd.tasks.executor import ActionTask, DaemonActions
from flockd.tasks.history import RoundRecords, round_history
from flockd.tasks.registry_chain import RegistryChain
from flockd.tasks.spec import TaskSpec
from flockd.tasks.start import initial_state

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = ["NodeContext", "TaskRunner", "round_history"]

log = get_logger("flockd.tasks")
POLL_SECONDS = 0.25
INBOX_LIMIT = 10_000  # events waiting before a peer's pushed delta is dropped
FETCH_RETRY_SECONDS = 1.0  # pause after a fetch that no peer could answer, before asking again

InboxItem = tuple[int | None, rnd.Event | Rebuild]  # (generation of the answered action, event)


class TaskRunner:
    def __init__(
        self, ctx: NodeContext, task_id: int, spec: TaskSpec, params: TaskParams, participants: list[bytes],
        worker: TaskWork, *, chain: TaskChain | None = None,
    ) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.spec = spec
        self.params = params
        self.participants = participants
        self.worker = worker
        self.chain: TaskChain = chain if chain is not None else RegistryChain(ctx.registry)
        self.config = rnd.TaskConfig(
            task_id=task_id,
            me=ctx.address,
            participants=tuple(participants),
            rounds=params.rounds,
            propose_blocks=params.propose_blocks,
            commit_blocks=params.commit_blocks,
            reveal_blocks=params.reveal_blocks,
            max_proposals=params.max_proposals,
            vote_mode=rnd.VoteMode(params.vote_mode),
            model_init_hash=params.model_init_hash,
            lag_blocks=ctx.confirmations,
        )
        self.counters = Counters()
        self.error: str | None = None  # the bug that stopped this runner, if one did
        records = RoundRecords()
        self.poll_seconds = POLL_SECONDS
        actions = DaemonActions(
            ctx, task_id, params, participants, worker, self.chain, records, self.counters, self._spawn,
            self._post, self._store_mismatch, retry_seconds=POLL_SECONDS, fetch_retry_seconds=FETCH_RETRY_SECONDS,
        )
        self.adapter = TaskAdapter(self.config, _salt, actions)
        self.feed = ChainFeed(
            ctx, task_id, params.model_init_hash, participants, self.chain, records, self.counters,
            self.deliver, lambda rebuild: self._post(None, rebuild),
        )
        # Unbounded for chain events and the answers to the machine's own actions (never
        # dropped); peers' pushed deltas stop at INBOX_LIMIT.
        self._inbox_send, self._inbox = trio.open_memory_channel[InboxItem](math.inf)
        self._nursery: trio.Nursery | None = None
        self._actions: trio.Nursery | None = None  # this generation's actions
        self._actions_scope = trio.CancelScope()
        self._actions_done = trio.Event()
        self._generation = 0  # bumped by each rebuild; answers to older actions are dropped
        self.done = trio.Event()

    @property
    def machine(self) -> rnd.TaskMachine:
        return self.adapter.machine

    @property
    def isolated(self) -> bool:
        """No peers: the task's clock waits."""
        return self.feed.isolated

    @property
    def final_model_hash(self) -> bytes | None:
        return self.adapter.final_model_hash

    # -- inputs ----------------------------------------------------------------------------

    def deliver(self, event: rnd.Event) -> None:
        """An event from the chain: never dropped (the feed reads at its own pace)."""
        self._post(None, event)

    def on_delta_push(self, received: rnd.DeltaReceived) -> None:
        """A peer's delta, admitted by the task's push gate (tasks/pushes.py): dropped
        while INBOX_LIMIT events wait (the fetch gets it later)."""
        if self._inbox_send.statistics().current_buffer_used >= INBOX_LIMIT:
            self.counters.incr("pushes_dropped")
            log.warning("task inbox full: dropping a pushed delta", task=self.task_id, sender=hex0x(received.sender))
            return
        self.deliver(received)

    def _post(self, generation: int | None, item: rnd.Event | Rebuild) -> None:
        self._inbox_send.send_nowait((generation, item))

    def _store_mismatch(self, generation: int, why: str) -> None:
        """An action of ``generation`` found a model its machine holds missing from the
        store: rebuild (a replaced machine's picture is gone already)."""
        if generation == self._generation:
            self.feed.want_rebuild(why)

    def _spawn(self, task: ActionTask, action: Any) -> None:
        assert self._actions is not None
        self._actions.start_soon(task, action, self._generation)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            self.error = describe(exc)
            log.error("task runner stopped by an error", task=self.task_id, error=self.error)
            raise
        finally:
            self.done.set()

    async def _put_initial_model(self) -> None:
        """The initial model in the store, checked against the chain's: every replay holds
        it (ModelReady(-1))."""
        init = await trio.to_thread.run_sync(initial_state, self.worker, self.ctx.store, getattr(self.spec, "start", {}))  # start hook
        init_hash = await trio.to_thread.run_sync(self.ctx.store.put_model, init)
        if init_hash != self.params.model_init_hash:
            raise RuntimeError(
                f"task {self.task_id}: our initial model {init_hash.hex()} is not the one on chain "
                f"({self.params.model_init_hash.hex()}): different recipe code or config"
            )

    async def _run(self) -> None:
        await self._put_initial_model()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._new_generation()
            poller = trio.CancelScope()
            nursery.start_soon(self._poll_chain, poller)
            async for generation, item in self._inbox:
                # Receiving yields with cancellation shielded: when the runner is stopped
                # meanwhile, this generation's actions nursery has closed, and handling the
                # item would spawn into it ("Nursery is closed to new arrivals").
                await trio.lowlevel.checkpoint_if_cancelled()
                if isinstance(item, Rebuild):
                    await self._rebuild(item)
                elif generation is None or generation == self._generation:
                    self._handle(item)
                if self.machine.finished:
                    break
            poller.cancel()
            self._actions_done.set()  # the last actions (history, model) still run to their end
        log.info("task finished", task=self.task_id, model=(self.final_model_hash or b"").hex())

    def _handle(self, event: rnd.Event) -> None:
        refused = self.adapter.handle(event)
        if isinstance(refused, rnd.ConflictingEvent):
            # The chain contradicts what the machine was told: a reorg the poller has not
            # seen yet. Ask it to rebuild from the canonical chain.
            log.warning("conflicting chain event", task=self.task_id, error=str(refused))
            self.feed.want_rebuild("conflicting event")
        elif refused is not None:
            log.info("event refused by the round machine", task=self.task_id, error=describe(refused))

    async def _new_generation(self) -> None:
        assert self._nursery is not None
        self._actions_scope.cancel()
        self._actions_scope, self._actions = await self._nursery.start(self._hold_actions)

    async def _hold_actions(self, task_status: TaskStatus[tuple[trio.CancelScope, trio.Nursery]]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as actions:
                task_status.started((scope, actions))
                await self._actions_done.wait()

    async def _rebuild(self, rebuild: Rebuild) -> None:
        try:
            replayed, actions = rnd.TaskMachine.replay(self.config, rebuild.events, _salt)
        except rnd.ConflictingEvent as exc:
            log.warning("replay met a conflicting event: reading the chain again", task=self.task_id, error=str(exc))
            self.feed.want_rebuild("conflicting replay")
            return
        if not self.ctx.store.has_model(self.params.model_init_hash):
            await self._put_initial_model()  # its file was not that model, and was removed
        self._generation += 1
        await self._new_generation()  # actions of the replaced machine are cancelled
        log.info("task state rebuilt from the chain", task=self.task_id, reason=rebuild.reason,
                 round=replayed.current_round, events=len(rebuild.events))
        self.adapter.replace(replayed, actions)

    async def _poll_chain(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await self.feed.poll()
                except ChainReadFailed as exc:
                    log.warning("chain poll failed", task=self.task_id, error=str(exc))
                except ChainMoved as exc:
                    self.feed.moved(exc)
                await self._until_next_poll()

    async def _until_next_poll(self) -> None:
        """`poll_seconds`, or less when the head moves first: a quarter of a 1 s slot spent
        waiting to notice a block is a quarter less for the step it starts."""
        with trio.move_on_after(self.poll_seconds):
            if self.ctx.head_moved is None:
                await trio.sleep_forever()
            await self.ctx.head_moved()

    def status(self) -> dict[str, Any]:
        current = self.machine.current_round
        machine = self.machine.machine(current) if current is not None else None
        return {
            "round": current,
            "finished": self.machine.finished,
            "model_hash": hex0x(self.machine.model_hash) if self.machine.model_hash else None,
            "role": machine.role.value if machine else None,
            "phase": machine.phase.value if machine else None,
            "error": self.error,
        }


def _salt() -> bytes:
    return os.urandom(32)
