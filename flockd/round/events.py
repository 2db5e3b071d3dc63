"""Events: what the adapters tell the round machine.

Chain events mirror the TaskRegistry logs of the node's task; the adapter feeds the
events of block N before ``BlockSealed(N)``, so a machine that sees the clock pass a
deadline has already seen everything that landed before it. Every other event is the
answer to an action (ElectionDone to RunElection, TrainingDone to StartTraining, ...) or
a peer's push (DeltaReceived). Field checks here reject malformed values with
InvalidEvent; whether an event fits the round's state is the machine's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from flockd.round.base import (
    SCORE_BOUND,
    Address,
    ChainPhase,
    InvalidEvent,
    TxKind,
    check_address,
    check_hash,
    check_round,
)
from flockd.sortition import Election


def _check_votes(votes: object) -> None:
    if not isinstance(votes, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and -SCORE_BOUND <= v <= SCORE_BOUND
        for v in votes
    ):
        raise InvalidEvent(f"votes must be a tuple of ints in [-{SCORE_BOUND}, {SCORE_BOUND}]")


@dataclass(frozen=True)
class BlockSealed:
    """The chain's head reached block ``number``: the machine's only clock."""

    number: int

    def __post_init__(self) -> None:
        if isinstance(self.number, bool) or not isinstance(self.number, int) or self.number < 0:
            raise InvalidEvent("block number must be a non-negative integer")


@dataclass(frozen=True)
class RoundOpened:
    """RoundOpened(task, round, open_block, seed) log; ``block_hash`` is the hash of that
    block. ``seed``: the log's seed (rounds >= 1, a chain from seed_0); None for round 0,
    whose seed is computed from ``block_hash``."""

    round: int
    open_block: int
    block_hash: bytes
    seed: bytes | None = None

    def __post_init__(self) -> None:
        check_round(self.round)
        check_round(self.open_block)
        check_hash("block_hash", self.block_hash)
        if self.seed is not None:
            check_hash("seed", self.seed)


@dataclass(frozen=True)
class ElectionDone:
    round: int
    election: Election

    def __post_init__(self) -> None:
        check_round(self.round)
        if not isinstance(self.election, Election):
            raise InvalidEvent("election must be a sortition.Election")


@dataclass(frozen=True)
class ModelReady:
    """The node now holds model_``round`` (aggregated here, or fetched and hash-checked).
    Round -1 is the task's initial model."""

    round: int
    model_hash: bytes

    def __post_init__(self) -> None:
        check_round(self.round, lowest=-1)
        check_hash("model_hash", self.model_hash)


@dataclass(frozen=True)
class TrainingDone:
    """This node's encoded delta for the round (the machine hashes it itself)."""

    round: int
    delta: bytes

    def __post_init__(self) -> None:
        check_round(self.round)
        if not isinstance(self.delta, bytes) or not self.delta:
            raise InvalidEvent("delta must be non-empty bytes")


@dataclass(frozen=True)
class ProposalOnChain:
    """Proposed(task, round, proposer, index, delta_hash) log."""

    round: int
    index: int
    proposer: Address
    delta_hash: bytes

    def __post_init__(self) -> None:
        check_round(self.round)
        check_round(self.index)
        check_address("proposer", self.proposer)
        check_hash("delta_hash", self.delta_hash)


@dataclass(frozen=True)
class DeclinedOnChain:
    """Declined(task, round, participant) log: it will not propose this round."""

    round: int
    participant: Address

    def __post_init__(self) -> None:
        check_round(self.round)
        check_address("participant", self.participant)


@dataclass(frozen=True)
class FallbackOnChain:
    """FallbackOpened(task, round, proposer, last_block) log: the propose window ended with
    no proposal, so ``proposer`` (the decliner with the highest verified draw) alone may
    propose until ``last_block``; commit and reveal follow at full length."""

    round: int
    proposer: Address
    last_block: int

    def __post_init__(self) -> None:
        check_round(self.round)
        check_address("proposer", self.proposer)
        check_round(self.last_block)


@dataclass(frozen=True)
class PhaseClosedOnChain:
    """PhaseClosed(task, round, phase, last_block) log: every expected message of the phase
    is in, so it ended early; ``last_block`` is its last block (the one that closed it)."""

    round: int
    phase: ChainPhase
    last_block: int

    def __post_init__(self) -> None:
        check_round(self.round)
        if not isinstance(self.phase, ChainPhase):
            raise InvalidEvent("phase must be a ChainPhase")
        check_round(self.last_block)


@dataclass(frozen=True)
class DeltaReceived:
    """A delta from peer ``sender`` that claims to be ``proposer``'s proposal. Its bytes
    are untrusted: the machine accepts them only if they hash to the on-chain commitment."""

    round: int
    proposer: Address
    delta: bytes
    sender: Address
    digest: bytes | None = None  # delta_hash(delta), when the adapter computed it off the loop

    def __post_init__(self) -> None:
        check_round(self.round)
        check_address("proposer", self.proposer)
        check_address("sender", self.sender)
        if not isinstance(self.delta, bytes):
            raise InvalidEvent("delta must be bytes")
        if self.digest is not None and not (isinstance(self.digest, bytes) and len(self.digest) == 32):
            raise InvalidEvent("digest must be 32 bytes")


@dataclass(frozen=True)
class ScoresReady:
    """The scorer's answer to ScoreProposals: per-proposal mode one +1/-1 per delta it was
    given (any value at a missing delta's place is replaced by -1), whole-round mode one
    score."""

    round: int
    votes: tuple[int, ...]

    def __post_init__(self) -> None:
        check_round(self.round)
        _check_votes(self.votes)


@dataclass(frozen=True)
class BallotRestored:
    """After a restart: the votes and salt this node saved before sending its commit, and
    the proposals_digest of what they judged (None: a ballot saved without it)."""

    round: int
    votes: tuple[int, ...]
    salt: bytes
    proposals: bytes | None = None

    def __post_init__(self) -> None:
        check_round(self.round)
        _check_votes(self.votes)
        check_hash("salt", self.salt)
        if self.proposals is not None:
            check_hash("proposals", self.proposals)


@dataclass(frozen=True)
class VoteCommittedOnChain:
    round: int
    voter: Address
    digest: bytes

    def __post_init__(self) -> None:
        check_round(self.round)
        check_address("voter", self.voter)
        check_hash("digest", self.digest)


@dataclass(frozen=True)
class VoteRevealedOnChain:
    round: int
    voter: Address
    votes: tuple[int, ...]

    def __post_init__(self) -> None:
        check_round(self.round)
        check_address("voter", self.voter)
        _check_votes(self.votes)


@dataclass(frozen=True)
class VotersSettledOnChain:
    """VotersSettled(task, round, settled, n_participants) log: a finalise call settled the
    first ``settled`` voters of a task too big for one call; the next call goes on."""

    round: int
    settled: int

    def __post_init__(self) -> None:
        check_round(self.round)
        check_round(self.settled)


@dataclass(frozen=True)
class RoundFinalisedOnChain:
    """RoundFinalised(task, round, accepted_mask, n_proposals, revealed_stake) log."""

    round: int
    accepted_mask: int
    n_proposals: int

    def __post_init__(self) -> None:
        check_round(self.round)
        if not isinstance(self.n_proposals, int) or not 0 <= self.n_proposals <= 16:
            raise InvalidEvent("n_proposals must be in [0, 16]")
        mask = self.accepted_mask
        if not isinstance(mask, int) or mask < 0 or mask >> self.n_proposals:
            raise InvalidEvent("accepted_mask has bits beyond n_proposals")


@dataclass(frozen=True)
class ModelRecordedOnChain:
    round: int
    model_hash: bytes

    def __post_init__(self) -> None:
        check_round(self.round)
        check_hash("model_hash", self.model_hash)


@dataclass(frozen=True)
class AggregateFailed:
    """The adapter could not compute model_r (an accepted delta that does not fit the
    model, say): the node will take the model the chain records instead."""

    round: int
    reason: str

    def __post_init__(self) -> None:
        check_round(self.round)


@dataclass(frozen=True)
class TrainingFailed:
    """The adapter could not train this node's delta (its base model unreadable, training
    diverged, out of memory): the node gives up proposing and declines."""

    round: int
    reason: str

    def __post_init__(self) -> None:
        check_round(self.round)


@dataclass(frozen=True)
class DeltaFetchFailed:
    """No peer gave the delta ``delta_hash`` (FetchDelta): the machine asks again while
    the delta still matters (scoring, aggregating)."""

    round: int
    delta_hash: bytes

    def __post_init__(self) -> None:
        check_round(self.round)
        check_hash("delta_hash", self.delta_hash)


@dataclass(frozen=True)
class ModelFetchFailed:
    """No peer gave model_``round`` with hash ``model_hash`` (FetchModel): ask again."""

    round: int
    model_hash: bytes

    def __post_init__(self) -> None:
        check_round(self.round, lowest=-1)
        check_hash("model_hash", self.model_hash)


@dataclass(frozen=True)
class TxFailed:
    """A transaction of this node failed. ``reverted``: it ran and reverted (final);
    otherwise it was dropped or timed out, and the machine may send it again."""

    round: int
    kind: TxKind
    reason: str
    reverted: bool = True

    def __post_init__(self) -> None:
        check_round(self.round)
        if not isinstance(self.kind, TxKind):
            raise InvalidEvent("kind must be a TxKind")


RoundEvent = (
    RoundOpened
    | ElectionDone
    | ModelReady
    | TrainingDone
    | ProposalOnChain
    | DeclinedOnChain
    | PhaseClosedOnChain
    | FallbackOnChain
    | DeltaReceived
    | ScoresReady
    | BallotRestored
    | VoteCommittedOnChain
    | VoteRevealedOnChain
    | VotersSettledOnChain
    | RoundFinalisedOnChain
    | ModelRecordedOnChain
    | AggregateFailed
    | TrainingFailed
    | DeltaFetchFailed
    | ModelFetchFailed
    | TxFailed
)
Event = BlockSealed | RoundEvent
