"""The task runner's view of the chain: what the round machine is fed, and what it is
rebuilt from.

Each poll, the logs of the blocks up to the confirmed head (``confirmations`` blocks
deep), translated to round events (`bridge.round_events`), then BlockSealed(confirmed).
Every log is checked to be in the canonical block of its height, and the hash of the
newest block fed is kept: when that block is no longer canonical (a reorg), or the
machine meets a ConflictingEvent, the feed reads what a new machine is replayed from
(`Rebuild`): the logs from the open block of the round MAX_UNRECORDED_ROUNDS before the
current one (not block 0: the machine follows the current round, the one before it, and
older ones only while their model is not recorded), plus what the node saved (models,
ballots, deltas). A node with no peers feeds no new blocks (it may be sealing alone, on a
fork that will be reorganised away).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from flockd import round as rnd
from flockd.logs import get_logger
from flockd.round.task import MAX_UNRECORDED_ROUNDS
from flockd.stats import Counters
from flockd.store import StoreError
from flockd.tasks.abc import TaskChain, TaskLog
from flockd.tasks.bridge import round_events
from flockd.tasks.context import NodeContext, hex0x
from flockd.tasks.history import RoundRecords, round_history

log = get_logger("flockd.tasks")


@dataclass(frozen=True)
class Rebuild:
    """Inbox item: replace the machine by one replayed from these events."""

    events: tuple[rnd.Event, ...]
    reason: str


class ChainMoved(Exception):
    """A log read is no longer canonical: the chain reorganised while the feed read it."""


class ChainFeed:
    def __init__(
        self, ctx: NodeContext, task_id: int, init_hash: bytes, participants: list[bytes], chain: TaskChain,
        records: RoundRecords, counters: Counters, deliver: Callable[[rnd.Event], None],
        rebuild: Callable[[Rebuild], None],
    ) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.init_hash = init_hash
        self.participants = participants
        self.chain = chain
        self.records = records
        self.counters = counters
        self._deliver = deliver
        self._rebuild = rebuild
        self._fed: tuple[int, bytes] | None = None  # newest block fed to the machine: number, hash
        self._next_block = 0
        self.rebuild_wanted: str | None = "start"
        self.isolated = False  # no peers: the task's clock waits

    def want_rebuild(self, reason: str) -> None:
        self.rebuild_wanted = self.rebuild_wanted or reason

    def moved(self, exc: ChainMoved) -> None:
        """A read met a reorg: rebuild (counted once per rebuild)."""
        if self.rebuild_wanted is None:
            self.counters.incr("reorgs")
            self.rebuild_wanted = str(exc)

    def _connected(self) -> bool:
        others = len([p for p in self.participants if p != self.ctx.address])
        needed = min(self.ctx.min_peers, others)
        return needed == 0 or len(self.ctx.network.peers()) >= needed

    async def poll(self) -> None:
        """Feed the blocks confirmed since the last poll, or read for a rebuild."""
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
        if self.rebuild_wanted is None and self._fed is not None:
            number, digest = self._fed
            if await self.chain.block_hash(number) != digest:
                self.counters.incr("reorgs")
                self.rebuild_wanted = f"block {number} is no longer canonical"
        if self.rebuild_wanted is not None:
            await self._read_for_rebuild(confirmed)
            return
        if confirmed < self._next_block:
            return
        # The machine's clock is the confirmed head, fed after that block's logs
        # (TaskConfig.lag_blocks tells it how far behind the chain that is).
        for event in await self._read(self._next_block, confirmed):
            self._deliver(event)
        self._deliver(rnd.BlockSealed(confirmed))
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

    def _translate(self, entry: TaskLog, canonical: dict[int, bytes]) -> list[rnd.Event]:
        self.records.note(entry, canonical)
        # A round opens in the block of its log, so its hash was just checked.
        opened = canonical[entry.args["open_block"]] if entry.name == "RoundOpened" else None
        return round_events(entry.name, entry.args, opened)

    async def _read_for_rebuild(self, confirmed: int) -> None:
        """Read what the machine must be rebuilt from, and hand it on: the logs from the
        open block of the oldest round it may still follow (as of the confirmed head), then
        what this node saved."""
        reason = self.rebuild_wanted
        start = await self.chain.round_start(self.task_id, None, confirmed)
        first = confirmed + 1  # nothing to replay while no round is open
        if start.open_block is not None:
            first = start.open_block
            oldest = max(0, start.current_round - MAX_UNRECORDED_ROUNDS)
            if oldest < start.current_round:
                before = await self.chain.round_start(self.task_id, oldest, confirmed)
                first = before.open_block or first
        self.records.clear()
        unwritten = await self._read_unwritten_rounds(start.current_round, min(first, confirmed + 1), confirmed)
        if first <= confirmed:
            logged = [*unwritten, *await self._read(first, confirmed)]
        else:
            logged = unwritten
            tip = await self.chain.block_hash(confirmed)
            if tip is None:
                raise ChainMoved(f"block {confirmed} is gone")
            self._fed = (confirmed, tip)
        saved_models, saved_votes = await trio.to_thread.run_sync(self._saved, logged, start.current_round)
        events = (rnd.BlockSealed(confirmed), *saved_models, *logged, *saved_votes)
        self._next_block = confirmed + 1
        self.rebuild_wanted = None
        self._rebuild(Rebuild(events, reason or "start"))

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
        return found is not None and hex0x(found) == digest

    def _saved(self, logged: list[rnd.Event], current: int) -> tuple[list[rnd.Event], list[rnd.Event]]:
        """What this node kept on disk, as replay events: the models it holds (initial and
        per finished round), then its ballots and the stored deltas of the replayed
        proposals (of the rounds the machine follows: not of older recorded ones)."""
        store = self.ctx.store
        models: list[rnd.Event] = [rnd.ModelReady(-1, self.init_hash)]
        for line in round_history(store.history(self.task_id)):
            digest = bytes.fromhex(str(line.get("model_hash", ""))[2:])
            if len(digest) == 32 and store.has_model(digest):
                models.append(rnd.ModelReady(int(line["round"]), digest))
        ballots: dict[int, rnd.BallotRestored] = {}
        for line in store.history(self.task_id, log="ballots"):
            try:
                judged = line.get("proposals")  # absent in ballots saved before it was kept
                ballots[int(line["round"])] = rnd.BallotRestored(
                    int(line["round"]), tuple(int(v) for v in line["votes"]), bytes.fromhex(line["salt"]),
                    None if judged is None else bytes.fromhex(judged),
                )
            except (KeyError, TypeError, ValueError, rnd.InvalidEvent) as exc:
                log.warning("unreadable saved ballot skipped", task=self.task_id, error=str(exc))
        recorded = {e.round for e in logged if isinstance(e, rnd.ModelRecordedOnChain) and e.round < current - 1}
        deltas: list[rnd.Event] = []
        for event in logged:
            if isinstance(event, rnd.ProposalOnChain) and event.round not in recorded:
                try:
                    data = store.get_delta(event.delta_hash)
                except StoreError as exc:
                    log.warning("stored delta unreadable", task=self.task_id, error=str(exc))
                    continue
                if data is not None:
                    deltas.append(rnd.DeltaReceived(event.round, event.proposer, data, self.ctx.address))
        return models, [*ballots.values(), *deltas]
