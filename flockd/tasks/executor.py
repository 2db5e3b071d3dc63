"""The daemon's ActionHost: the round machine's actions carried out as trio tasks.

Each action runs in the runner's nursery of the current generation (`Spawn`), its CPU
work in worker threads, its chain calls through the TaskChain seam, its transfers over
libp2p, and its answer is posted to the runner's inbox tagged with that generation
(`Answer`), so the answers of a machine a rebuild replaced are dropped.

Failures. An action that fails in a documented, recoverable way answers with the event
the machine handles: TrainingFailed, AggregateFailed, DeltaFetchFailed / ModelFetchFailed
(posted after a pause: asked again while the delta or model still matters), TxFailed.
Each is counted in ``counters["action_failures"]``.

A model the machine holds (it was told ModelReady, or replayed it from the store) that
the store cannot give (gone, or its file not that model) means the machine's picture is
wrong: no answer can fix that, so the action asks the runner to rebuild the machine from
the chain and what the store really holds (`Mismatch`), counted in
``counters["store_mismatches"]``; the rebuilt machine fetches or computes the model again.
Any other exception is a bug: it is not caught here and ends the task's runner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from flockd import round as rnd
from flockd.chain.client.registry import TaskParams
from flockd.fl.errors import FLError
from flockd.fl.tensors import Tensors
from flockd.logs import get_logger
from flockd.p2p.abc import P2PError
from flockd.p2p.blobs import BlobError
from flockd.sortition import Stakes, elect
from flockd.stats import Counters
from flockd.store import StoreError
from flockd.tasks.abc import ChainReadFailed, TaskChain, TaskWork, TxNotLanded, TxReverted
from flockd.tasks.adapter import ActionHost, Call
from flockd.tasks.bridge import Submission
from flockd.tasks.context import NodeContext, describe, hex0x
from flockd.tasks.exchange import (
    DELTA_KIND,
    FETCH_KIND,
    DeltaPush,
    FetchRequest,
    encode_fetch,
    encode_push,
)
from flockd.tasks.history import RoundRecords, is_written, round_line

log = get_logger("flockd.tasks")

# The documented failures of the node's own work, which the machine answers (anything
# else is a bug; a model the store cannot give is a Mismatch). Training: the recipe, data
# or codec refusing (FLError: a diverged, non-finite delta, say), memory. Aggregating: an
# accepted delta that does not decode or fit the model (FLError, ValueError), memory.
TRAINING_ERRORS: tuple[type[Exception], ...] = (FLError, MemoryError)
AGGREGATE_ERRORS: tuple[type[Exception], ...] = (FLError, ValueError, MemoryError)

ActionTask = Callable[[Any, int], Awaitable[None]]  # (action, generation)
Spawn = Callable[[ActionTask, Any], None]  # start it in the current generation's nursery
Answer = Callable[[int, rnd.Event], None]  # post an answer of that generation
Mismatch = Callable[[int, str], None]  # (generation, why): rebuild the machine of that generation


class DaemonActions(ActionHost):
    def __init__(
        self, ctx: NodeContext, task_id: int, params: TaskParams, participants: list[bytes], worker: TaskWork,
        chain: TaskChain, records: RoundRecords, counters: Counters, spawn: Spawn, answer: Answer,
        mismatch: Mismatch, *, retry_seconds: float, fetch_retry_seconds: float,
    ) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.params = params
        self.participants = participants
        self.worker = worker
        self.chain = chain
        self.records = records
        self.counters = counters
        self._spawn = spawn
        self._answer = answer
        self._mismatch = mismatch
        self.retry_seconds = retry_seconds  # between stake reads that failed
        self.fetch_retry_seconds = fetch_retry_seconds  # after a fetch no peer could answer

    # -- ActionHost: start each action as a task ------------------------------------------

    def elect(self, action: rnd.RunElection) -> None:
        self._spawn(self._elect, action)

    def train(self, action: rnd.StartTraining) -> None:
        self._spawn(self._train, action)

    def push_delta(self, action: rnd.PushDelta) -> None:
        self._spawn(self._push_delta, action)

    def fetch_delta(self, action: rnd.FetchDelta) -> None:
        self._spawn(self._fetch_delta, action)

    def score(self, action: rnd.ScoreProposals, proposers: tuple[bytes, ...]) -> None:
        self._spawn(self._score, (action, proposers))

    def aggregate(self, action: rnd.Aggregate) -> None:
        self._spawn(self._aggregate, action)

    def fetch_model(self, action: rnd.FetchModel) -> None:
        self._spawn(self._fetch_model, action)

    def commit(self, action: rnd.SubmitCommit, call: Call) -> None:
        self._spawn(self._commit, (action, call))

    def transact(self, action: Submission, call: Call) -> None:
        self._spawn(self._transact, (action, call))

    def delta_rejected(self, action: rnd.DeltaRejected) -> None:
        log.warning("delta rejected", task=self.task_id, round=action.round, proposer=hex0x(action.proposer),
                    sender=hex0x(action.sender), reason=action.reason.value)

    def round_complete(self, action: rnd.RoundComplete) -> None:
        self._spawn(self._round_complete, action)

    # -- the tasks ---------------------------------------------------------------------

    async def _failed(self, generation: int, event: rnd.Event, why: str, pause: float = 0.0) -> None:
        """A documented failure of an action: counted, logged, and told to the machine."""
        self.counters.incr("action_failures")
        log.warning("action failed", task=self.task_id, answer=type(event).__name__, error=why)
        if pause:
            await trio.sleep(pause)  # a fetch nobody could answer is asked again, not at once
        self._answer(generation, event)

    async def _held_model(self, digest: bytes, generation: int, why: str) -> Tensors | None:
        """A model the machine holds, from the store; None when the store cannot give it
        (counted, logged, and the machine rebuilt from what the store really holds)."""
        try:
            return await trio.to_thread.run_sync(self.ctx.store.load_model, digest)
        except StoreError as exc:
            self.counters.incr("store_mismatches")
            log.warning("a model the round machine holds is not in the store: rebuilding", task=self.task_id,
                        model=hex0x(digest), wanted_for=why, error=str(exc))
            self._mismatch(generation, f"model {hex0x(digest)} not in the store")
            return None

    async def _elect(self, action: rnd.RunElection, generation: int) -> None:
        while True:  # a read that failed is retried; a late answer the machine handles
            try:
                stake, total = await self.chain.stakes(self.task_id, self.ctx.address)
                break
            except ChainReadFailed as exc:
                log.warning("stake read failed", task=self.task_id, error=str(exc))
                await trio.sleep(self.retry_seconds)
        stakes = Stakes(stake, total, self.params.stake_unit, self.params.expected_proposers)
        election = await trio.to_thread.run_sync(elect, self.ctx.vrf_secret, action.seed, stakes)
        self._answer(generation, rnd.ElectionDone(action.round, election))

    async def _train(self, action: rnd.StartTraining, generation: int) -> None:
        base = await self._held_model(action.base_model_hash, generation, "training")
        if base is None:
            return
        try:
            delta = await trio.to_thread.run_sync(self.worker.train, base, action.round)
        except TRAINING_ERRORS as exc:
            await self._failed(generation, rnd.TrainingFailed(action.round, describe(exc)), describe(exc))
            return
        await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        self._answer(generation, rnd.TrainingDone(action.round, delta))

    async def _push_delta(self, action: rnd.PushDelta, generation: int) -> None:
        blob = encode_push(DeltaPush(self.task_id, action.round, self.ctx.address, action.delta))
        async with trio.open_nursery() as nursery:
            for peer_id in self._participant_peers().values():
                nursery.start_soon(self._send_quietly, peer_id, DELTA_KIND, blob)

    async def _fetch_delta(self, action: rnd.FetchDelta, generation: int) -> None:
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
                log.warning("peer sent a wrong delta", task=self.task_id, peer=peer_id, delta=hex0x(action.delta_hash))
        why = f"none of {len(peers)} peers had delta {hex0x(action.delta_hash)}"
        event = rnd.DeltaFetchFailed(action.round, action.delta_hash)
        await self._failed(generation, event, why, self.fetch_retry_seconds)

    async def _score(self, asked: tuple[rnd.ScoreProposals, tuple[bytes, ...]], generation: int) -> None:
        action, proposers = asked
        # Verified against the chain by the machine: kept, so this voter serves them to the
        # voters that did not get them from the proposer.
        for delta in action.deltas:
            if delta is not None:
                await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        base = await self._held_model(action.base_model_hash, generation, "scoring")
        if base is None:
            return
        whole = action.mode is rnd.VoteMode.WHOLE_ROUND
        votes = await trio.to_thread.run_sync(
            self.worker.score, base, action.deltas, list(proposers), whole, action.round
        )
        self._answer(generation, rnd.ScoresReady(action.round, votes))

    async def _commit(self, asked: tuple[rnd.SubmitCommit, Call], generation: int) -> None:
        action, _ = asked
        # Durable before the digest goes out: without votes and salt we could not reveal.
        ballot = {"round": action.round, "votes": list(action.votes), "salt": action.salt.hex(),
                  "proposals": action.proposals_digest.hex()}
        await trio.to_thread.run_sync(lambda: self.ctx.store.append_history(self.task_id, ballot, log="ballots"))
        await self._transact(asked, generation)

    async def _aggregate(self, action: rnd.Aggregate, generation: int) -> None:
        base = await self._held_model(action.base_model_hash, generation, "aggregating")
        if base is None:
            return
        try:
            state = await trio.to_thread.run_sync(self.worker.aggregate, base, list(action.deltas))
        except AGGREGATE_ERRORS as exc:
            await self._failed(generation, rnd.AggregateFailed(action.round, describe(exc)), describe(exc))
            return
        for delta in action.deltas:  # kept: model_verify replays the lineage from them
            await trio.to_thread.run_sync(self.ctx.store.put_delta, delta)
        digest = await trio.to_thread.run_sync(self.ctx.store.put_model, state)
        self._answer(generation, rnd.ModelReady(action.round, digest))

    async def _fetch_model(self, action: rnd.FetchModel, generation: int) -> None:
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
                why = f"none of {len(peers)} peers had model {hex0x(action.model_hash)}"
                event = rnd.ModelFetchFailed(action.round, action.model_hash)
                await self._failed(generation, event, why, self.fetch_retry_seconds)
                return
        self._answer(generation, rnd.ModelReady(action.round, action.model_hash))

    async def _round_complete(self, action: rnd.RoundComplete, generation: int) -> None:
        store = self.ctx.store
        if is_written(store.history(self.task_id), action):
            return  # before a restart or rebuild
        state = await self._held_model(action.model_hash, generation, "the round's history line")
        if state is None:
            return
        metrics = await trio.to_thread.run_sync(self.worker.evaluate_test, state)
        # Asked again: the machine replaced by a rebuild may have completed the round too,
        # and its action (its thread not cancellable) comes here. No checkpoint from this
        # check to the append, so one of the two writes.
        if is_written(store.history(self.task_id), action):
            return
        line = round_line(action, self.records.pop(action.round), metrics)
        store.append_history(self.task_id, line)
        log.info("round complete", task=self.task_id, round=action.round, accepted=line["accepted"],
                 proposals=line["proposals"], accuracy=round(metrics["accuracy"], 4))

    async def _transact(self, asked: tuple[Submission, Call], generation: int) -> None:
        action, (kind, fn, args) = asked
        log.info("transaction sent", task=self.task_id, round=action.round, fn=fn)
        try:
            gas_used = await self.chain.transact(fn, self.task_id, action.round, *args)
        except TxReverted as exc:
            await self._failed(generation, rnd.TxFailed(action.round, kind, exc.reason, reverted=True), exc.reason)
        except TxNotLanded as exc:
            await self._failed(generation, rnd.TxFailed(action.round, kind, str(exc), reverted=False), str(exc))
        else:
            self.records.add_gas(action.round, gas_used)

    # -- helpers -----------------------------------------------------------------------

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
