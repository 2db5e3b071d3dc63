"""One node's part in one running task: the adapter around flockd.round.TaskMachine.

One task owns the machine and feeds it from an inbox; everything else only posts events:
the chain poller (the block clock and the registry's logs, acted on `confirmations`
blocks deep), peers pushing deltas, and the tasks that carry out the machine's actions
(training, scoring, aggregating in worker threads; transactions; blob transfers).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from flockd import round as rnd
from flockd.chain.backends import ChainError
from flockd.chain.client import ContractRevert
from flockd.chain.registry import Event as ChainEvent
from flockd.chain.registry import Registry, TaskParams
from flockd.fl.tensors import Tensors
from flockd.logs import get_logger
from flockd.p2p.abc import P2PError, P2PNetwork
from flockd.p2p.blobs import BlobError
from flockd.sortition import Stakes, elect
from flockd.store import Store
from flockd.tasks.bridge import Submission, as_address, round_events, transaction
from flockd.tasks.exchange import (
    DELTA_KIND,
    FETCH_KIND,
    DeltaPush,
    FetchRequest,
    encode_fetch,
    encode_push,
)
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

log = get_logger("flockd.tasks")
POLL_SECONDS = 0.25


@dataclass
class NodeContext:
    """What a task runner needs of its node."""

    network: P2PNetwork
    registry: Registry
    store: Store
    address: bytes
    vrf_secret: bytes
    confirmations: int


@dataclass
class RoundRecord:
    """What the chain said of one round, kept for its history line (the round machine
    forgets a round once the next one is under way)."""

    round: int
    started_block: int | None = None
    finished_block: int | None = None
    started_at: float = field(default_factory=time.time)
    proposers: dict[int, bytes] = field(default_factory=dict)  # by proposal index
    accepted_mask: int = 0
    gas_used: int = 0  # by this node's own transactions of the round


class TaskRunner:
    def __init__(
        self, ctx: NodeContext, task_id: int, spec: TaskSpec, params: TaskParams, participants: list[bytes], worker: Worker
    ) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.spec = spec
        self.params = params
        self.participants = participants
        self.worker = worker
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
        self.machine = rnd.TaskMachine(self.config, lambda: os.urandom(32))
        self._inbox_send, self._inbox = trio.open_memory_channel[rnd.Event](10_000)
        self._nursery: trio.Nursery | None = None
        self._rounds: dict[int, RoundRecord] = {}
        self.final_model_hash: bytes | None = None
        self.done = trio.Event()

    # -- inputs ----------------------------------------------------------------------------

    def deliver(self, event: rnd.Event) -> None:
        try:
            self._inbox_send.send_nowait(event)
        except trio.WouldBlock:
            log.warning("task inbox full: dropping an event", task=self.task_id, kind=type(event).__name__)

    def on_delta_push(self, push: DeltaPush, sender: bytes) -> None:
        self.deliver(rnd.DeltaReceived(push.round, push.proposer, push.delta, sender))

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        init = await trio.to_thread.run_sync(self.worker.initial_model)
        init_hash = self.ctx.store.put_model(init)
        if init_hash != self.params.model_init_hash:
            raise RuntimeError(
                f"task {self.task_id}: our initial model {init_hash.hex()} is not the one on chain "
                f"({self.params.model_init_hash.hex()}): different recipe code or config"
            )
        self.deliver(rnd.ModelReady(-1, init_hash))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            poller = trio.CancelScope()
            nursery.start_soon(self._poll_chain, poller)
            async for event in self._inbox:
                try:
                    actions = self.machine.handle(event)
                except rnd.RoundError as exc:
                    log.info("event refused by the round machine", task=self.task_id, error=f"{type(exc).__name__}: {exc}")
                    continue
                for action in actions:
                    self._dispatch(action)
                if self.machine.finished:
                    break
            poller.cancel()  # the last actions (history, model) still run to their end
        self.done.set()
        log.info("task finished", task=self.task_id, model=(self.final_model_hash or b"").hex())

    async def _poll_chain(self, scope: trio.CancelScope) -> None:
        with scope:
            await self._poll_chain_forever()

    async def _poll_chain_forever(self) -> None:
        client = self.ctx.registry.client
        next_log_block = 0
        while True:
            try:
                # The machine's clock is the confirmed head, fed after that block's logs
                # (TaskConfig.lag_blocks tells it how far behind the chain that is).
                confirmed = await client.block_number() - self.ctx.confirmations
                if confirmed >= next_log_block:
                    for event in await self.ctx.registry.events(next_log_block, confirmed):
                        for translated in await self._translate(event):
                            self.deliver(translated)
                    next_log_block = confirmed + 1
                    self.deliver(rnd.BlockSealed(confirmed))
            except ChainError as exc:
                log.warning("chain poll failed", task=self.task_id, error=f"{type(exc).__name__}: {exc}")
            await trio.sleep(POLL_SECONDS)

    async def _translate(self, event: ChainEvent) -> list[rnd.Event]:
        args = event.args
        if args.get("task_id") != self.task_id:
            return []
        name, r = event.name, args.get("round", 0)
        record = self._rounds.setdefault(r, RoundRecord(r))
        block_hash = None
        if name == "RoundOpened":
            block_hash = await self.ctx.registry.client.block_hash(args["open_block"])
            record.started_block = args["open_block"]
        elif name == "Proposed":
            record.proposers[args["index"]] = as_address(args["proposer"])
        elif name == "RoundFinalised":
            record.accepted_mask, record.finished_block = args["accepted_mask"], event.log.block_number
        return round_events(name, args, block_hash)

    # -- actions ---------------------------------------------------------------------------

    def _dispatch(self, action: rnd.Action) -> None:
        assert self._nursery is not None
        # A transaction goes straight to the chain unless it needs its own care first.
        handler = getattr(self, f"_do_{type(action).__name__}", None)
        if handler is None and isinstance(action, Submission):
            handler = self._transact
        if handler is None:
            raise TypeError(f"no handler for {type(action).__name__}")
        self._nursery.start_soon(self._guarded, handler, action)

    async def _guarded(self, handler: Any, action: rnd.Action) -> None:
        # One failed action must not end the task: the machine's phase deadlines turn a
        # missing result into a timeout (a missed vote, a proposal not made), as for a
        # silent peer.
        try:
            await handler(action)
        except Exception:
            log.exception("action failed", task=self.task_id, action=type(action).__name__)

    async def _do_RunElection(self, action: rnd.RunElection) -> None:
        registry, me = self.ctx.registry, self.ctx.address
        participant = await registry.get_participant(self.task_id, me)
        state = await registry.get_state(self.task_id)
        stakes = Stakes(participant.stake, state.total_stake, self.params.stake_unit, self.params.expected_proposers)
        election = await trio.to_thread.run_sync(elect, self.ctx.vrf_secret, action.seed, stakes)
        self.deliver(rnd.ElectionDone(action.round, election))

    async def _do_StartTraining(self, action: rnd.StartTraining) -> None:
        base = self._model(action.base_model_hash)
        delta = await trio.to_thread.run_sync(self.worker.train, base, action.round)
        self.ctx.store.put_delta(delta)
        self.deliver(rnd.TrainingDone(action.round, delta))

    async def _do_PushDelta(self, action: rnd.PushDelta) -> None:
        blob = encode_push(DeltaPush(self.task_id, action.round, self.ctx.address, action.delta))
        async with trio.open_nursery() as nursery:
            for peer_id in self._participant_peers().values():
                nursery.start_soon(self._send_quietly, peer_id, DELTA_KIND, blob)

    async def _do_FetchDelta(self, action: rnd.FetchDelta) -> None:
        request = encode_fetch(FetchRequest("delta", action.delta_hash))
        peers = self._participant_peers(first=action.proposer, avoid=action.avoid)
        for address, peer_id in peers.items():
            data = await self._send_quietly(peer_id, FETCH_KIND, request)
            if data:
                self.deliver(rnd.DeltaReceived(action.round, action.proposer, data, address))
                return

    async def _do_DeltaRejected(self, action: rnd.DeltaRejected) -> None:
        log.warning("delta rejected", task=self.task_id, round=action.round, proposer=_hex(action.proposer),
                    sender=_hex(action.sender), reason=action.reason.value)

    async def _do_ScoreProposals(self, action: rnd.ScoreProposals) -> None:
        base = self._model(action.base_model_hash)
        whole = action.mode is rnd.VoteMode.WHOLE_ROUND
        # The deltas are the first proposals in on-chain order (more may land meanwhile).
        machine = self.machine.machine(action.round)
        proposals = machine.proposals[: len(action.deltas)] if machine is not None else []
        proposers = [p.proposer for p in proposals]
        votes = await trio.to_thread.run_sync(
            self.worker.score, base, action.deltas, proposers, whole, action.round
        )
        self.deliver(rnd.ScoresReady(action.round, votes))

    async def _do_SubmitCommit(self, action: rnd.SubmitCommit) -> None:
        # Durable before the digest goes out: without votes and salt we could not reveal.
        self.ctx.store.append_history(
            self.task_id, {"round": action.round, "votes": list(action.votes), "salt": action.salt.hex()}, log="ballots"
        )
        await self._transact(action)

    async def _do_Aggregate(self, action: rnd.Aggregate) -> None:
        for delta in action.deltas:  # kept: model_verify replays the lineage from them
            self.ctx.store.put_delta(delta)
        base = self._model(action.base_model_hash)
        state = await trio.to_thread.run_sync(self.worker.aggregate, base, list(action.deltas))
        digest = self.ctx.store.put_model(state)
        self.deliver(rnd.ModelReady(action.round, digest))

    async def _do_FetchModel(self, action: rnd.FetchModel) -> None:
        if not self.ctx.store.has_model(action.model_hash):
            request = encode_fetch(FetchRequest("model", action.model_hash))
            for peer_id in self._participant_peers().values():
                data = await self._send_quietly(peer_id, FETCH_KIND, request)
                if not data:
                    continue
                try:
                    self.ctx.store.put_model_bytes(data, action.model_hash)
                    break
                except Exception as exc:
                    log.warning("peer sent a wrong model", peer=peer_id, error=str(exc))
            else:
                log.warning("no peer had the model", model=action.model_hash.hex(), round=action.round)
                return
        self.deliver(rnd.ModelReady(action.round, action.model_hash))

    async def _do_RoundComplete(self, action: rnd.RoundComplete) -> None:
        state = self._model(action.model_hash)
        metrics = await trio.to_thread.run_sync(self.worker.evaluate_test, state)
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
            "seconds": round(time.time() - record.started_at, 2),
            "gas_used": record.gas_used,
        })
        log.info("round complete", task=self.task_id, round=action.round, accepted=len(accepted),
                 proposals=len(proposers), accuracy=round(metrics["accuracy"], 4))

    async def _do_TaskComplete(self, action: rnd.TaskComplete) -> None:
        self.final_model_hash = action.model_hash

    # -- helpers ---------------------------------------------------------------------------

    def _model(self, digest: bytes) -> Tensors:
        return self.ctx.store.load_model(digest)

    async def _transact(self, action: Submission) -> None:
        kind, fn, args = transaction(action)
        try:
            receipt = await self.ctx.registry.transact(fn, self.task_id, action.round, *args)
        except ContractRevert as exc:
            self.deliver(rnd.TxFailed(action.round, kind, exc.reason, reverted=True))
        except ChainError as exc:
            self.deliver(rnd.TxFailed(action.round, kind, f"{type(exc).__name__}: {exc}", reverted=False))
        else:
            # .get: a receipt that comes after the round's history line was written must
            # not bring its record back (it would never be dropped again)
            record = self._rounds.get(action.round)
            if record is not None:
                record.gas_used += receipt.gas_used

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
        }


def _hex(value: bytes) -> str:
    return "0x" + value.hex()
