"""TaskMachine: a task's rounds one after another, routed to one RoundMachine each.

Rounds overlap by design: round r+1 opens in the block that finalises r, while this node
may still be aggregating model_r. The base model of round r+1 is model_r as soon as the
node holds it (ModelReady(r)); if the chain later records another hash, the node fetches
that one and round r+1 carries on from it. A node that missed rounds (late join, restart)
fetches the newest recorded model it needs instead of replaying what it never saw.

A finalised round whose model is not recorded yet is the exception: the chain waits for
a stake majority to attest model_r, and a node that missed the round (down, cut off,
rebuilt from a later round) may be part of that majority. So its machine is kept, and a
rebuild replays it, until the model is recorded: the node fetches the accepted deltas,
aggregates them on model_{r-1} and attests model_r, round after round in order. It never
attests a model it has not computed: while a delta cannot be had, it asks again, and once
another majority records the model it fetches that. Such rounds are followed up to
MAX_UNRECORDED_ROUNDS back from the current one; older ones are left to the others.
"""

from __future__ import annotations

from collections.abc import Iterable

from flockd.round.actions import Action, DeltaRejected, FetchModel, RoundComplete, TaskComplete
from flockd.round.base import Phase, RejectReason, TaskConfig
from flockd.round.events import (
    BlockSealed,
    DeclinedOnChain,
    DeltaReceived,
    Event,
    ModelFetchFailed,
    ModelReady,
    ModelRecordedOnChain,
    RoundOpened,
    VoteCommittedOnChain,
    VoteRevealedOnChain,
)
from flockd.round.machine import RoundMachine, SaltSource

# Finalised rounds without a recorded model that a node still computes and attests,
# counted back from the current round: each holds its round's accepted deltas in memory.
MAX_UNRECORDED_ROUNDS = 8


class TaskMachine:
    def __init__(self, config: TaskConfig, salt_source: SaltSource) -> None:
        self.config = config
        self._salt_source = salt_source
        self._machines: dict[int, RoundMachine] = {}
        self._head: int | None = None
        self._current: int | None = None  # newest round opened
        self._held: dict[int, bytes] = {}  # model_r this node holds; r = -1 the initial one
        self._recorded: dict[int, bytes] = {-1: config.model_init_hash}
        self._completed: dict[int, bytes] = {}
        self._fetching: set[tuple[int, bytes]] = set()
        self._finished = False

    @classmethod
    def replay(
        cls, config: TaskConfig, events: Iterable[Event], salt_source: SaltSource
    ) -> tuple[TaskMachine, list[Action]]:
        """Rebuild after a restart: BlockSealed(head), ModelReady of every model held on
        disk, the newest ModelRecordedOnChain, then the current round's logs and saved
        ballot and deltas (see RoundMachine.replay). Actions come from the final picture."""
        machine = cls(config, salt_source)
        out: list[Action] = []
        for event in events:
            out += machine.record(event)
        out += machine.decide()
        return machine, out

    def handle(self, event: Event) -> list[Action]:
        """Record ``event``, then decide: what to do now. Another participant's decline,
        commit or reveal is recorded (the round's view lists them) but read by no decision,
        so there is nothing new to decide: every participant's log reaches every node, and
        deciding after each was most of a 256-node simulation's machine time."""
        out = self.record(event)
        if not self._read_by_no_decision(event):
            out += self.decide()
        return out

    def _read_by_no_decision(self, event: Event) -> bool:
        match event:
            case DeclinedOnChain(participant=who) | VoteCommittedOnChain(voter=who) | VoteRevealedOnChain(voter=who):
                return who != self.config.me
        return False

    def record(self, event: Event) -> list[Action]:
        """Take in what ``event`` says without deciding yet (replay feeds many events,
        then decides once); returns what answers the event itself (a rejected delta)."""
        out: list[Action] = []
        self._apply(event, out)
        return out

    def decide(self) -> list[Action]:
        """What to do now, from everything recorded so far."""
        out: list[Action] = []
        self._advance(out)
        return out

    def _apply(self, event: Event, out: list[Action]) -> None:
        if isinstance(event, BlockSealed):
            self._head = max(self._head or 0, event.number)
            for live in self._machines.values():
                out += live.record(event)
            return
        if isinstance(event, ModelReady):
            self._held[event.round] = event.model_hash
            for r in (event.round, event.round + 1):
                if r in self._machines:
                    out += self._machines[r].record(event)
            return
        if isinstance(event, ModelRecordedOnChain):
            self._recorded[event.round] = event.model_hash
        if isinstance(event, ModelFetchFailed):
            self._fetching.discard((event.round, event.model_hash))  # asked again when still wanted
        if isinstance(event, RoundOpened):
            self._current = max(self._current if self._current is not None else -1, event.round)
        machine = self._machine_for(event)
        if machine is not None:
            out += machine.record(event)
        elif isinstance(event, DeltaReceived):
            out.append(DeltaRejected(event.round, event.proposer, event.sender, RejectReason.WRONG_ROUND))

    def _machine_for(self, event: Event) -> RoundMachine | None:
        """The round's machine; created when the round opens, or early for a delta of the
        next round (a push can outrun this node's view of the chain)."""
        assert not isinstance(event, BlockSealed)
        r = event.round
        if r in self._machines:
            return self._machines[r]
        upcoming = (self._current if self._current is not None else -1) + 1
        early = isinstance(event, DeltaReceived) and r == upcoming
        wanted = isinstance(event, RoundOpened) or early
        if not wanted or r >= self.config.rounds or r in self._completed:
            return None  # a round this node no longer follows, or too far ahead
        machine = RoundMachine(self.config, r, self._salt_source)
        self._machines[r] = machine
        # What the task already knows, in the order the round would have seen it.
        known: list[Event] = []
        if self._head is not None:
            known.append(BlockSealed(self._head))
        known += [ModelReady(m, self._held[m]) for m in (r - 1, r) if m in self._held]
        if r in self._recorded:
            known.append(ModelRecordedOnChain(r, self._recorded[r]))
        for fact in known:
            machine.record(fact)  # nothing to answer: these only set facts
        return machine

    def _advance(self, out: list[Action]) -> None:
        # A replay feeds rounds whose models turn out recorded: dropped before they act.
        self._forget_old_rounds()
        # In round order, so that model_r reaches round r+1 before r+1 decides.
        for r in sorted(self._machines):
            machine = self._machines[r]
            decided = machine.decide()
            out += decided
            for action in decided:
                if isinstance(action, RoundComplete):
                    self._completed[action.round] = action.model_hash
            model = machine.model_hash  # also model_{r-1} itself when nothing was accepted
            if model is not None and self._held.get(r) != model:
                self._held[r] = model
                if r + 1 in self._machines:
                    out += self._machines[r + 1].record(ModelReady(r, model))
        self._complete_fetched_rounds(out)
        self._fetch_missed_models(out)
        final = self._completed.get(self.config.rounds - 1)
        # The task is over once every finalised round it knows of is complete (has its
        # history line), the rounds whose models it fetched as well as the last one.
        pending = [r for r in self._recorded if r >= 0 and r not in self._completed]
        if final is not None and not pending and not self._finished:
            self._finished = True
            out.append(TaskComplete(final))
        self._forget_old_rounds()

    def _complete_fetched_rounds(self, out: list[Action]) -> None:
        """A finalised round without a machine (replayed from a later round, forgotten, or
        never seen) is complete once the node holds the model the chain recorded for it."""
        for r in sorted(self._recorded):
            recorded = self._recorded[r]
            if r < 0 or r in self._completed or r in self._machines or self._held.get(r) != recorded:
                continue
            self._completed[r] = recorded
            out.append(RoundComplete(r, recorded))

    def _fetch_missed_models(self, out: list[Action]) -> None:
        """Models the node needs but has no round machine to compute: the base of the
        current round, the final model once the task is over, and the model of every
        finalised round not complete here (its history line is written from it)."""
        wanted = {self.config.rounds - 1} | {r for r in self._recorded if r >= 0 and r not in self._completed}
        if self._current is not None:
            wanted.add(self._current - 1)
        for r in sorted(wanted):
            recorded = self._recorded.get(r)
            if r in self._machines or recorded is None or self._held.get(r) == recorded:
                continue
            if (r, recorded) not in self._fetching:
                self._fetching.add((r, recorded))
                out.append(FetchModel(r, recorded))

    def _forget_old_rounds(self) -> None:
        # Keep the current round, the one before it (still applying), and older ones whose
        # model is not recorded yet (this node's attestation may be the one missing).
        if self._current is None:
            return
        for r in list(self._machines):
            done = self._machines[r].phase is Phase.DONE
            settled = r in self._recorded or r < self._current - MAX_UNRECORDED_ROUNDS
            if (r < self._current - 1 and settled) or (r < self._current and done):
                del self._machines[r]

    # ------------------------------------------------------------------ inspection

    @property
    def current_round(self) -> int | None:
        return self._current

    @property
    def finished(self) -> bool:
        return self._finished

    def machine(self, r: int) -> RoundMachine | None:
        return self._machines.get(r)

    @property
    def live_rounds(self) -> list[RoundMachine]:
        """The round machines still followed, oldest first."""
        return [self._machines[r] for r in sorted(self._machines)]

    def proposers(self, r: int) -> tuple[bytes, ...]:
        """Round ``r``'s proposers in on-chain order (none once the round is forgotten)."""
        live = self._machines.get(r)
        return () if live is None else tuple(p.proposer for p in live.proposals)

    @property
    def model_hash(self) -> bytes | None:
        """The newest model this node holds (model_{-1} = the initial one)."""
        return self._held[max(self._held)] if self._held else None

    @property
    def completed(self) -> dict[int, bytes]:
        return dict(self._completed)
