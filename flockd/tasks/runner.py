"""One node's part in one running task: the adapter around flockd.round.TaskMachine.

One task owns the machine and feeds it from an inbox; everything else only posts events:
the chain poller (the block clock and the registry's logs, acted on `confirmations`
blocks deep), peers pushing deltas, and the tasks that carry out the machine's actions
(training, scoring, aggregating in worker threads; transactions; blob transfers). The
chain is reached through the `TaskChain` seam (`tasks/abc.py`) only.

Failures. An action that fails in a documented, recoverable way answers the machine
with an event it handles: TrainingFailed (the node declines and votes), AggregateFailed
(it takes the recorded model), DeltaFetchFailed / ModelFetchFailed (asked again, after a
pause, while the delta or model still matters), TxFailed. Each is counted in
``counters["action_failures"]``. Any other exception is a bug: it is not swallowed, it
ends this task's runner; ``error`` and ``status()`` say what it was, and the task service
logs it with its traceback. The other tasks and the node go on.

Start, restart and reorgs are one path: the runner rebuilds its machine by replay
(`TaskMachine.replay`) from the canonical chain, starting at the open block of the round
before the current one (not block 0), plus what it saved: the models it holds, its
ballots (so a voter restarted between commit and reveal reveals) and its stored deltas.
It remembers the hash of the newest block it fed; when that block is no longer
canonical (a reorg) or the chain contradicts what the machine was told, it rebuilds.
A node with no peers feeds no new blocks (it may be sealing alone, on a fork that will be
reorganised away), so it sends nothing on the strength of them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from flockd import round as rnd
from flockd.chain.registry import Registry, TaskParams
from flockd.fl.errors import FLError
from flockd.fl.tensors import Tensors
from flockd.logs import get_logger
from flockd.p2p.abc import P2PError, P2PNetwork
from flockd.p2p.blobs import BlobError
from flockd.sortition import Stakes, elect
from flockd.stats import Counters
from flockd.store import Store, StoreError
from flockd.tasks.abc import ChainReadFailed, TaskChain, TaskLog, TxNotLanded, TxReverted
from flockd.tasks.bridge import Submission, as_address, round_events, transaction
from flockd.tasks.exchange import (
    DELTA_KIND,
    FETCH_KIND,
    DeltaPush,
    FetchRequest,
    encode_fetch,
    encode_push,
)
from flockd.tasks.registry_chain import RegistryChain
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = get_logger("flockd.tasks")
POLL_SECONDS = 0.25
INBOX_LIMIT = 10_000  # events waiting before a peer's pushed delta is dropped
FETCH_RETRY_SECONDS = 1.0  # pause after a fetch that no peer could answer, before asking again

# The documented failures of the node's own work, which the machine answers (anything
# else is a bug). Training: the base model unreadable (StoreError), the recipe, data or
# codec refusing (FLError: a diverged, non-finite delta, say), memory. Aggregating: an
# accepted delta that does not decode or fit the model (FLError, ValueError), the base
# model unreadable.
TRAINING_ERRORS: tuple[type[Exception], ...] = (StoreError, FLError, MemoryError)
AGGREGATE_ERRORS: tuple[type[Exception], ...] = (StoreError, FLError, ValueError, MemoryError)


@dataclass
class NodeContext:
    """What a task runner needs of its node. ``min_peers``: how many connected peers the
    node needs before it acts on new blocks (0 for a chain it cannot seal alone)."""

    network: P2PNetwork
    registry: Registry
    store: Store
    address: bytes
    vrf_secret: bytes
    confirmations: int
    min_peers: int = 1
    # Whether the chain's head is one to act on (the embedded chain: ChainService.head_synced,
    # false while it may still be a branch of our own that our peers' chain will replace).
    head_synced: Callable[[], Awaitable[bool]] | None = None


@dataclass
class RoundRecord:
    """What the chain said of one round, kept for its history line (the round machine
    forgets a round once the next one is under way)."""

    round: int
    started_block: int | None = None
    finished_block: int | None = None
    finished_hash: bytes | None = None  # a line whose finishing block a reorg replaced is written again
    started_at: float = field(default_factory=time.time)
    proposers: dict[int, bytes] = field(default_factory=dict)  # by proposal index
    accepted_mask: int = 0
    gas_used: int = 0  # by this node's own transactions of the round


@dataclass(frozen=True)
class Rebuild:
    """Inbox item: replace the machine by one replayed from these events."""

    events: tuple[rnd.Event, ...]
    reason: str


class ChainMoved(Exception):
    """A log read is no longer canonical: the chain reorganised while the runner read it."""


InboxItem = tuple[int | None, rnd.Event | Rebuild]  # (generation of the answered action, event)


class TaskRunner:
    def __init__(
        self, ctx: NodeContext, task_id: int, spec: TaskSpec, params: TaskParams, participants: list[bytes],
        worker: Worker, *, chain: TaskChain | None = None,
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
        self.machine = rnd.TaskMachine(self.config, _salt)
        self.counters = Counters()
        self.error: str | None = None  # the bug that stopped this runner, if one did
        # Unbounded for chain events and the answers to the machine's own actions (never
        # dropped); peers' pushed deltas stop at INBOX_LIMIT.
        self._inbox_send, self._inbox = trio.open_memory_channel[InboxItem](math.inf)
        self._nursery: trio.Nursery | None = None
        self._actions: trio.Nursery | None = None  # this generation's actions
        self._actions_scope = trio.CancelScope()
        self._actions_done = trio.Event()
        self._generation = 0  # bumped by each rebuild; answers to older actions are dropped
        self._rounds: dict[int, RoundRecord] = {}
        self._fed: tuple[int, bytes] | None = None  # newest block fed to the machine: number, hash
        self._next_block = 0
        self._rebuild_wanted: str | None = "start"
        self.isolated = False  # no peers: the task's clock waits
        self.final_model_hash: bytes | None = None
        self.done = trio.Event()

    # -- inputs ----------------------------------------------------------------------------

    def deliver(self, event: rnd.Event) -> None:
        """An event from the chain: never dropped (the poller reads at its own pace)."""
        self._post(None, event)

    def on_delta_push(self, received: rnd.DeltaReceived) -> None:
        """A peer's delta, admitted by the task's push gate (tasks/pushes.py): dropped
        while INBOX_LIMIT events wait (the fetch gets it later)."""
        if self._inbox_send.statistics().current_buffer_used >= INBOX_LIMIT:
            self.counters.incr("pushes_dropped")
            log.warning("task inbox full: dropping a pushed delta", task=self.task_id, sender=_hex(received.sender))
            return
        self.deliver(received)

    def _post(self, generation: int | None, item: rnd.Event | Rebuild) -> None:
        self._inbox_send.send_nowait((generation, item))

    def _answer(self, generation: int, event: rnd.Event) -> None:
        self._post(generation, event)

    async def _failed(self, generation: int, event: rnd.Event, why: str, pause: float = 0.0) -> None:
        """A documented failure of an action: counted, logged, and told to the machine."""
        self.counters.incr("action_failures")
        log.warning("action failed", task=self.task_id, answer=type(event).__name__, error=why)
        if pause:
            await trio.sleep(pause)  # a fetch nobody could answer is asked again, not at once
        self._answer(generation, event)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            self.error = _describe(exc)
            log.error("task runner stopped by an error", task=self.task_id, error=self.error)
            raise
        finally:
            self.done.set()

    async def _run(self) -> None:
        init = await trio.to_thread.run_sync(self.worker.initial_model)
        init_hash = self.ctx.store.put_model(init)
        if init_hash != self.params.model_init_hash:
            raise RuntimeError(
                f"task {self.task_id}: our initial model {init_hash.hex()} is not the one on chain "
                f"({self.params.model_init_hash.hex()}): different recipe code or config"
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._new_generation()
            poller = trio.CancelScope()
            nursery.start_soon(self._poll_chain, poller)
            async for generation, item in self._inbox:
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
        try:
            actions = self.machine.handle(event)
        except rnd.ConflictingEvent as exc:
            # The chain contradicts what the machine was told: a reorg the poller has not
            # seen yet. Ask it to rebuild from the canonical chain.
            log.warning("conflicting chain event", task=self.task_id, error=str(exc))
            self._rebuild_wanted = self._rebuild_wanted or "conflicting event"
            return
        except rnd.RoundError as exc:
            log.info("event refused by the round machine", task=self.task_id, error=f"{type(exc).__name__}: {exc}")
            return
        for action in actions:
            self._dispatch(action)

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
            machine, actions = rnd.TaskMachine.replay(self.config, rebuild.events, _salt)
        except rnd.ConflictingEvent as exc:
            log.warning("replay met a conflicting event: reading the chain again", task=self.task_id, error=str(exc))
            self._rebuild_wanted = self._rebuild_wanted or "conflicting replay"
            return
        self.machine = machine
        self._generation += 1
        await self._new_generation()  # actions of the replaced machine are cancelled
        log.info("task state rebuilt from the chain", task=self.task_id, reason=rebuild.reason,
                 round=machine.current_round, events=len(rebuild.events))
        for action in actions:
            self._dispatch(action)

    # -- the chain -------------------------------------------------------------------------

    async def _poll_chain(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                try:
                    await self._poll_once()
                except ChainReadFailed as exc:
                    log.warning("chain poll failed", task=self.task_id, error=str(exc))
                except ChainMoved as exc:
                    if self._rebuild_wanted is None:
                        self.counters.incr("reorgs")
                        self._rebuild_wanted = str(exc)
                await trio.sleep(POLL_SECONDS)

    def _connected(self) -> bool:
        others = len([p for p in self.participants if p != self.ctx.address])
        needed = min(self.ctx.min_peers, others)
        return needed == 0 or len(self.ctx.network.peers()) >= needed

    async def _poll_once(self) -> None:
        if not self._connected():
            if not self.isolated:
                log.warning("no peers: the task's clock waits (blocks sealed alone may be reorganised)",
                            task=self.task_id)
                self.isolated = True
            return
        self.isolated = False
        if self.ctx.head_synced is not None and not await self.ctx.head_synced():
            return  # back among peers, but our head may still be a branch of our own
        confirmed = await self.chain.head() - self.ctx.confirmations
        if confirmed < 0:
            return
        if self._rebuild_wanted is None and self._fed is not None:
            number, digest = self._fed
            if await self.chain.block_hash(number) != digest:
                self.counters.incr("reorgs")
                self._rebuild_wanted = f"block {number} is no longer canonical"
        if self._rebuild_wanted is not None:
            await self._read_for_rebuild(confirmed)
            return
        if confirmed < self._next_block:
            return
        # The machine's clock is the confirmed head, fed after that block's logs
        # (TaskConfig.lag_blocks tells it how far behind the chain that is).
        for event in await self._read(self._next_block, confirmed):
            self.deliver(event)
        self.deliver(rnd.BlockSealed(confirmed))
        self._next_block = confirmed + 1

    async def _read(self, first: int, last: int) -> list[rnd.Event]:
        """The round events of blocks [first, last], every log checked to be in the
        canonical block of its height; remembers ``last``'s hash as the newest fed."""
        tip = await self.chain.block_hash(last)
        if tip is None:
            raise ChainMoved(f"block {last} is gone")
        canonical = {last: tip}
        logs = await self.chain.task_logs(self.task_id, first, last)
        events: list[rnd.Event] = []
        for entry in logs:
            number = entry.block_number
            if number not in canonical:
                found = await self.chain.block_hash(number)
                if found is None:
                    raise ChainMoved(f"block {number} is gone")
                canonical[number] = found
            if entry.block_hash != canonical[number]:
                raise ChainMoved(f"a log of block {number} is from another branch")
            events += self._translate(entry, canonical)
        self._fed = (last, tip)
        return events

    async def _read_for_rebuild(self, confirmed: int) -> None:
        """Read what the machine must be rebuilt from, and post it to the inbox: the logs
        from the open block of the round before the current one (as of the confirmed head),
        then what this node saved."""
        reason = self._rebuild_wanted
        start = await self.chain.round_start(self.task_id, None, confirmed)
        first = confirmed + 1  # nothing to replay while no round is open
        if start.open_block is not None:
            first = start.open_block
            if start.current_round > 0:
                before = await self.chain.round_start(self.task_id, start.current_round - 1, confirmed)
                first = before.open_block or first
        self._rounds = {}
        unwritten = await self._read_unwritten_rounds(start.current_round, min(first, confirmed + 1), confirmed)
        if first <= confirmed:
            logged = [*unwritten, *await self._read(first, confirmed)]
        else:
            logged = unwritten
            tip = await self.chain.block_hash(confirmed)
            if tip is None:
                raise ChainMoved(f"block {confirmed} is gone")
            self._fed = (confirmed, tip)
        saved_models, saved_votes = await trio.to_thread.run_sync(self._saved, logged)
        events = (rnd.BlockSealed(confirmed), *saved_models, *logged, *saved_votes)
        self._next_block = confirmed + 1
        self._rebuild_wanted = None
        self._post(None, Rebuild(events, reason or "start"))

    async def _read_unwritten_rounds(self, current: int, before: int, confirmed: int) -> list[rnd.Event]:
        """The rounds before the replayed ones that have no history line here (the node was
        down, cut off or restarted when they ended) or one whose finishing block a reorg
        replaced (decided on a fork): their logs up to block ``before`` give their lines'
        figures, and their recorded models, which the machine then fetches to complete
        them. Only the ModelRecordedOnChain events are returned."""
        lines = round_history(self.ctx.store.history(self.task_id))
        written = {int(line["round"]) for line in lines}
        for line in reversed(lines):  # a reorg replaces the newest blocks: the newest lines
            if await self._finished_on_chain(line):
                break
            written.discard(int(line["round"]))
        unwritten = [r for r in range(current) if r not in written]
        if not unwritten:
            return []
        opened = (await self.chain.round_start(self.task_id, unwritten[0], confirmed)).open_block
        if opened is None or opened >= before:
            return []
        return [e for e in await self._read(opened, before - 1) if isinstance(e, rnd.ModelRecordedOnChain)]

    async def _finished_on_chain(self, line: dict[str, Any]) -> bool:
        """The line's round was finalised in a block of the canonical chain (lines written
        before the block hash was kept count as canonical)."""
        number, digest = line.get("finished_block"), line.get("finished_block_hash")
        if not isinstance(number, int) or not isinstance(digest, str):
            return True
        found = await self.chain.block_hash(number)
        return found is not None and _hex(found) == digest

    def _saved(self, logged: list[rnd.Event]) -> tuple[list[rnd.Event], list[rnd.Event]]:
        """What this node kept on disk, as replay events: the models it holds (initial and
        per finished round), then its ballots and the stored deltas of the replayed
        proposals."""
        store = self.ctx.store
        models: list[rnd.Event] = [rnd.ModelReady(-1, self.params.model_init_hash)]
        for line in round_history(store.history(self.task_id)):
            digest = bytes.fromhex(str(line.get("model_hash", ""))[2:])
            if len(digest) == 32 and store.has_model(digest):
                models.append(rnd.ModelReady(int(line["round"]), digest))
        ballots: dict[int, rnd.BallotRestored] = {}
        for line in store.history(self.task_id, log="ballots"):
            try:
                ballots[int(line["round"])] = rnd.BallotRestored(
                    int(line["round"]), tuple(int(v) for v in line["votes"]), bytes.fromhex(line["salt"])
                )
            except (KeyError, TypeError, ValueError, rnd.InvalidEvent) as exc:
                log.warning("unreadable saved ballot skipped", task=self.task_id, error=str(exc))
        deltas: list[rnd.Event] = []
        for event in logged:
            if isinstance(event, rnd.ProposalOnChain):
                try:
                    data = store.get_delta(event.delta_hash)
                except StoreError as exc:
                    log.warning("stored delta unreadable", task=self.task_id, error=str(exc))
                    continue
                if data is not None:
                    deltas.append(rnd.DeltaReceived(event.round, event.proposer, data, self.ctx.address))
        return models, [*ballots.values(), *deltas]

    def _translate(self, entry: TaskLog, canonical: dict[int, bytes]) -> list[rnd.Event]:
        args = entry.args
        name, r = entry.name, args.get("round", 0)
        record = self._rounds.setdefault(r, RoundRecord(r))
        block_hash = None
        if name == "RoundOpened":
            # A round opens in the block of its log, so its hash was just checked.
            block_hash = canonical[args["open_block"]]
            record.started_block = args["open_block"]
        elif name == "Proposed":
            record.proposers[args["index"]] = as_address(args["proposer"])
        elif name == "RoundFinalised":
            record.accepted_mask, record.finished_block = args["accepted_mask"], entry.block_number
            record.finished_hash = canonical[entry.block_number]  # checked by _read just before
        return round_events(name, args, block_hash)

    # -- actions ---------------------------------------------------------------------------

    def _dispatch(self, action: rnd.Action) -> None:
        assert self._actions is not None
        # A transaction goes straight to the chain unless it needs its own care first.
        handler = getattr(self, f"_do_{type(action).__name__}", None)
        if handler is None and isinstance(action, Submission):
            handler = self._transact
        if handler is None:
            raise TypeError(f"no handler for {type(action).__name__}")
        self._actions.start_soon(handler, action, self._generation)

    async def _do_RunElection(self, action: rnd.RunElection, generation: int) -> None:
        while True:  # a read that failed is retried; a late answer the machine handles
            try:
                stake, total = await self.chain.stakes(self.task_id, self.ctx.address)
                break
            except ChainReadFailed as exc:
                log.warning("stake read failed", task=self.task_id, error=str(exc))
                await trio.sleep(POLL_SECONDS)
        stakes = Stakes(stake, total, self.params.stake_unit, self.params.expected_proposers)
        election = await trio.to_thread.run_sync(elect, self.ctx.vrf_secret, action.seed, stakes)
        self._answer(generation, rnd.ElectionDone(action.round, election))

    async def _do_StartTraining(self, action: rnd.StartTraining, generation: int) -> None:
        try:
            base = await trio.to_thread.run_sync(self._model, action.base_model_hash)
            delta = await trio.to_thread.run_sync(self.worker.train, base, action.round)
        except TRAINING_ERRORS as exc:
            await self._failed(generation, rnd.TrainingFailed(action.round, _describe(exc)), _describe(exc))
            return
        await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        self._answer(generation, rnd.TrainingDone(action.round, delta))

    async def _do_PushDelta(self, action: rnd.PushDelta, generation: int) -> None:
        blob = encode_push(DeltaPush(self.task_id, action.round, self.ctx.address, action.delta))
        async with trio.open_nursery() as nursery:
            for peer_id in self._participant_peers().values():
                nursery.start_soon(self._send_quietly, peer_id, DELTA_KIND, blob)

    async def _do_FetchDelta(self, action: rnd.FetchDelta, generation: int) -> None:
        """Every connected participant in turn (the proposer first): a voter serves the
        deltas it verified, so the proposer alone cannot withhold one."""
        request = encode_fetch(FetchRequest("delta", action.delta_hash))
        peers = self._participant_peers(first=action.proposer, avoid=action.avoid)
        for address, peer_id in peers.items():
            data = await self._send_quietly(peer_id, FETCH_KIND, request)
            digest = await trio.to_thread.run_sync(rnd.delta_hash, data) if data else None  # model-sized
            if data and digest == action.delta_hash:
                self._answer(generation, rnd.DeltaReceived(action.round, action.proposer, data, address, digest))
                return
            if data:
                log.warning("peer sent a wrong delta", task=self.task_id, peer=peer_id, delta=_hex(action.delta_hash))
        why = f"none of {len(peers)} peers had delta {_hex(action.delta_hash)}"
        await self._failed(generation, rnd.DeltaFetchFailed(action.round, action.delta_hash), why, FETCH_RETRY_SECONDS)

    async def _do_DeltaRejected(self, action: rnd.DeltaRejected, generation: int) -> None:
        log.warning("delta rejected", task=self.task_id, round=action.round, proposer=_hex(action.proposer),
                    sender=_hex(action.sender), reason=action.reason.value)

    async def _do_ScoreProposals(self, action: rnd.ScoreProposals, generation: int) -> None:
        # Verified against the chain by the machine: kept, so this voter serves them to the
        # voters that did not get them from the proposer.
        for delta in action.deltas:
            if delta is not None:
                await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        base = await trio.to_thread.run_sync(self._model, action.base_model_hash)
        whole = action.mode is rnd.VoteMode.WHOLE_ROUND
        # The deltas are the first proposals in on-chain order (more may land meanwhile).
        machine = self.machine.machine(action.round)
        proposals = machine.proposals[: len(action.deltas)] if machine is not None else []
        proposers = [p.proposer for p in proposals]
        votes = await trio.to_thread.run_sync(
            self.worker.score, base, action.deltas, proposers, whole, action.round
        )
        self._answer(generation, rnd.ScoresReady(action.round, votes))

    async def _do_SubmitCommit(self, action: rnd.SubmitCommit, generation: int) -> None:
        # Durable before the digest goes out: without votes and salt we could not reveal.
        ballot = {"round": action.round, "votes": list(action.votes), "salt": action.salt.hex()}
        await trio.to_thread.run_sync(lambda: self.ctx.store.append_history(self.task_id, ballot, log="ballots"))
        await self._transact(action, generation)

    async def _do_Aggregate(self, action: rnd.Aggregate, generation: int) -> None:
        try:
            base = await trio.to_thread.run_sync(self._model, action.base_model_hash)
            state = await trio.to_thread.run_sync(self.worker.aggregate, base, list(action.deltas))
        except AGGREGATE_ERRORS as exc:
            await self._failed(generation, rnd.AggregateFailed(action.round, _describe(exc)), _describe(exc))
            return
        for delta in action.deltas:  # kept: model_verify replays the lineage from them
            await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        digest = await trio.to_thread.run_sync(self.ctx.store.put_model, state)
        self._answer(generation, rnd.ModelReady(action.round, digest))

    async def _do_FetchModel(self, action: rnd.FetchModel, generation: int) -> None:
        if not self.ctx.store.has_model(action.model_hash):
            request = encode_fetch(FetchRequest("model", action.model_hash))
            peers = self._participant_peers()
            for peer_id in peers.values():
                data = await self._send_quietly(peer_id, FETCH_KIND, request)
                if not data:
                    continue
                try:
                    await trio.to_thread.run_sync(self.ctx.store.put_model_bytes, data, action.model_hash)
                    break
                except FLError as exc:  # not the model the chain recorded
                    log.warning("peer sent a wrong model", peer=peer_id, error=str(exc))
            else:
                why = f"none of {len(peers)} peers had model {_hex(action.model_hash)}"
                event = rnd.ModelFetchFailed(action.round, action.model_hash)
                await self._failed(generation, event, why, FETCH_RETRY_SECONDS)
                return
        self._answer(generation, rnd.ModelReady(action.round, action.model_hash))

    async def _do_RoundComplete(self, action: rnd.RoundComplete, generation: int) -> None:
        if self._written(action):
            return  # before a restart or rebuild
        state = await trio.to_thread.run_sync(self._model, action.model_hash)
        metrics = await trio.to_thread.run_sync(self.worker.evaluate_test, state)
        # Asked again: the machine replaced by a rebuild may have completed the round too,
        # and its action (its thread not cancellable) comes here. No checkpoint from this
        # check to the append, so one of the two writes.
        if self._written(action):
            return
        record = self._rounds.pop(action.round, RoundRecord(action.round))
        proposers = [record.proposers[i] for i in sorted(record.proposers)]
        accepted = [p for i, p in sorted(record.proposers.items()) if record.accepted_mask >> i & 1]
        self.ctx.store.append_history(self.task_id, {
            "round": action.round,
            "model_hash": _hex(action.model_hash),
            "proposals": len(proposers),
            "accepted": len(accepted),
            "rejected": len(proposers) - len(accepted),
            "proposers": [_hex(p) for p in proposers],
            "accepted_proposers": [_hex(p) for p in accepted],
            "test_accuracy": metrics["accuracy"],
            "test_loss": metrics["loss"],
            "started_block": record.started_block,
            "finished_block": record.finished_block,
            "finished_block_hash": None if record.finished_hash is None else _hex(record.finished_hash),
            "seconds": round(time.time() - record.started_at, 2),
            "gas_used": record.gas_used,
        })
        log.info("round complete", task=self.task_id, round=action.round, accepted=len(accepted),
                 proposals=len(proposers), accuracy=round(metrics["accuracy"], 4))

    def _written(self, complete: rnd.RoundComplete) -> bool:
        """The round's newest history line is for this model (a round a reorg gave another
        outcome is written again: its newest line tells it)."""
        lines = {int(line["round"]): line for line in round_history(self.ctx.store.history(self.task_id))}
        line = lines.get(complete.round)
        return line is not None and line.get("model_hash") == _hex(complete.model_hash)

    async def _do_TaskComplete(self, action: rnd.TaskComplete, generation: int) -> None:
        self.final_model_hash = action.model_hash

    # -- helpers ---------------------------------------------------------------------------

    def _model(self, digest: bytes) -> Tensors:
        return self.ctx.store.load_model(digest)

    async def _transact(self, action: Submission, generation: int) -> None:
        kind, fn, args = transaction(action)
        log.info("transaction sent", task=self.task_id, round=action.round, fn=fn)
        try:
            gas_used = await self.chain.transact(fn, self.task_id, action.round, *args)
        except TxReverted as exc:
            await self._failed(generation, rnd.TxFailed(action.round, kind, exc.reason, reverted=True), exc.reason)
        except TxNotLanded as exc:
            await self._failed(generation, rnd.TxFailed(action.round, kind, str(exc), reverted=False), str(exc))
        else:
            # .get: a receipt that comes after the round's history line was written must
            # not bring its record back (it would never be dropped again)
            record = self._rounds.get(action.round)
            if record is not None:
                record.gas_used += gas_used

    def _participant_peers(self, first: bytes | None = None, avoid: tuple[bytes, ...] = ()) -> dict[bytes, str]:
        """Connected participants' peer ids by address, `first` first, never ourselves."""
        by_address = {bytes.fromhex(p.address[2:]): p.peer_id for p in self.ctx.network.peers()}
        wanted = [a for a in self.participants if a != self.ctx.address and a not in avoid and a in by_address]
        if first in wanted:
            wanted.remove(first)
            wanted.insert(0, first)
        return {a: by_address[a] for a in wanted}

    async def _send_quietly(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        try:
            return await self.ctx.network.send_blob(peer_id, kind, data)
        except (P2PError, BlobError) as exc:
            log.info("blob transfer failed", peer=peer_id, kind=kind, error=f"{type(exc).__name__}: {exc}")
            return None

    def status(self) -> dict[str, Any]:
        current = self.machine.current_round
        machine = self.machine.machine(current) if current is not None else None
        return {
            "round": current,
            "finished": self.machine.finished,
            "model_hash": _hex(self.machine.model_hash) if self.machine.model_hash else None,
            "role": machine.role.value if machine else None,
            "phase": machine.phase.value if machine else None,
            "error": self.error,
        }


def round_history(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A task's history log as one line per round, in round order: a round written again
    after a reorg changed its outcome (another model) is told by its newest line."""
    by_round: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            by_round[int(line["round"])] = line
        except (KeyError, TypeError, ValueError):
            continue  # not a round line
    return [by_round[r] for r in sorted(by_round)]


def _salt() -> bytes:
    return os.urandom(32)


def _describe(exc: BaseException) -> str:
    """'Type: message' of the error itself, not of the exception groups around it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _hex(value: bytes) -> str:
    return "0x" + value.hex()
