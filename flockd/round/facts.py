"""RoundFacts: everything the chain and the adapters told one round, recorded in one place.

``record(event)`` is the only writer. A fact is set once (a second, different value of a
chain fact raises ConflictingEvent) or only grows (the head, the proposals, the votes), so
duplicates and reordering change nothing. The clock views (``deadlines``, ``lands_by``,
``closed``) read the facts only. What this node decided to do about them is the machine's
own state (tracks.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flockd import sortition
from flockd.round.actions import DeltaRejected
from flockd.round.base import ChainPhase, ConflictingEvent, TaskConfig, WrongRound
from flockd.round.deltas import DeltaBook, Proposal
from flockd.round.events import (
    BlockSealed,
    DeclinedOnChain,
    DeltaFetchFailed,
    DeltaReceived,
    ElectionDone,
    Event,
    FallbackOnChain,
    ModelReady,
    ModelRecordedOnChain,
    PhaseClosedOnChain,
    ProposalOnChain,
    RoundFinalisedOnChain,
    RoundOpened,
    TrainingDone,
    VoteCommittedOnChain,
    VoteRevealedOnChain,
)


@dataclass
class RoundFacts:
    config: TaskConfig
    round: int
    book: DeltaBook  # the proposals on chain and the verified deltas behind them
    head: int | None = None
    open_block: int | None = None
    seed: bytes | None = None
    closed_early: dict[ChainPhase, int] = field(default_factory=dict)  # PhaseClosed: last block
    fallback: FallbackOnChain | None = None  # the propose window reopened for one decliner
    base: bytes | None = None  # model_{r-1}
    election: sortition.Election | None = None
    own_delta: bytes | None = None  # what this node trained
    declined: bool = False  # this node's Declined log
    committed: dict[bytes, bytes] = field(default_factory=dict)  # voter -> digest
    revealed: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    finalised: RoundFinalisedOnChain | None = None
    ticked_since_final: bool = False  # a block sealed after the RoundFinalised log
    model: bytes | None = None  # model_r, as this node holds it
    recorded: bytes | None = None  # model_r, as the chain records it
    # `deadlines`, kept until an event that moves a window (the machine reads it a dozen
    # times for every event it decides on)
    _deadlines: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, config: TaskConfig, round_number: int) -> RoundFacts:
        return cls(config, round_number, DeltaBook(round_number, 4 * config.max_proposals))

    def record(self, event: Event) -> list[DeltaRejected]:
        """Take in what ``event`` says; returns the refusals of a peer's delta it answers.
        The answers to the machine's own requests (ScoresReady, TxFailed, ...) are no
        facts of the round: the machine's tracks take them."""
        if isinstance(event, BlockSealed):
            self.clock(event.number)
            self.ticked_since_final = self.finalised is not None
            return []
        base_event = isinstance(event, ModelReady) and event.round == self.round - 1
        if event.round != self.round and not base_event:
            raise WrongRound(f"{type(event).__name__} for round {event.round} in round {self.round}")
        if isinstance(event, RoundOpened | PhaseClosedOnChain | FallbackOnChain):
            self._deadlines = None
        me = self.config.me
        match event:
            case RoundOpened():
                if self.open_block is not None and self.open_block != event.open_block:
                    raise ConflictingEvent(f"round {self.round} opened twice")
                self.open_block = event.open_block
                self.seed = event.seed or sortition.round_seed(event.block_hash, self.config.task_id, self.round)
                self.clock(event.open_block)
            case ElectionDone():
                self.election = self.election or event.election
            case ModelReady() if base_event:
                self.base = event.model_hash
            case ModelReady():
                self.model = event.model_hash
            case TrainingDone():
                if self.own_delta is None:
                    self.own_delta = event.delta
                    self.book.add_own(event.delta)
            case ProposalOnChain():
                return self.book.add_proposal(Proposal(event.index, event.proposer, event.delta_hash))
            case DeclinedOnChain():
                self.declined = self.declined or event.participant == me
            case PhaseClosedOnChain():
                self.closed_early.setdefault(event.phase, event.last_block)
            case FallbackOnChain():
                if self.fallback is None:
                    # Fresh windows from here: the round is not over after all.
                    self.fallback = event
                    self.closed_early.clear()
            case DeltaReceived():
                return self.book.offer(event.proposer, event.delta, event.sender, self.closed(), event.digest)
            case VoteCommittedOnChain():
                self.committed.setdefault(event.voter, event.digest)
            case VoteRevealedOnChain():
                self.revealed.setdefault(event.voter, event.votes)
            case RoundFinalisedOnChain():
                if self.finalised is not None and self.finalised != event:
                    raise ConflictingEvent(f"round {self.round} finalised twice")
                self.finalised = event
            case ModelRecordedOnChain():
                if self.recorded is not None and self.recorded != event.model_hash:
                    raise ConflictingEvent(f"round {self.round} recorded two models")
                self.recorded = event.model_hash
            case DeltaFetchFailed():
                self.book.fetch_failed(event.delta_hash)
        return []

    def clock(self, number: int) -> None:
        if self.head is None or number > self.head:
            self.head = number

    @property
    def deadlines(self) -> tuple[int, int, int] | None:
        """Last block of the propose, commit and reveal windows, as the contract has them:
        each window follows the previous one's end, and a PhaseClosed log ends it early."""
        if self.open_block is None:
            return None
        if self._deadlines is None:
            early, config = self.closed_early, self.config
            full = self.open_block + config.propose_blocks if self.fallback is None else self.fallback.last_block
            propose_end = early.get(ChainPhase.PROPOSE, full)
            commit_end = early.get(ChainPhase.COMMIT, propose_end + config.commit_blocks)
            reveal_end = early.get(ChainPhase.REVEAL, commit_end + config.reveal_blocks)
            self._deadlines = propose_end, commit_end, reveal_end
        return self._deadlines

    def now(self) -> tuple[int, tuple[int, int, int]]:
        assert self.head is not None and self.deadlines is not None
        return self.head, self.deadlines

    def lands_by(self, deadline: int) -> bool:
        """A transaction sent now can still land in a block <= ``deadline``."""
        assert self.head is not None
        return self.head + self.config.lag_blocks < deadline

    def closed(self) -> bool:
        """No further proposal can land: the window is over, or the cap is reached."""
        if self.deadlines is None or self.head is None:
            return False
        full = len(self.book.ordered()) >= self.config.max_proposals
        return full or self.head >= self.deadlines[0]

    def proposed(self) -> Proposal | None:
        """This node's proposal, once on chain."""
        return self.book.of(self.config.me)

    @property
    def accepted(self) -> tuple[int, ...] | None:
        """Indexes of the accepted proposals, once finalised."""
        final = self.finalised
        if final is None:
            return None
        return tuple(i for i in range(final.n_proposals) if final.accepted_mask >> i & 1)
