"""Actions: what the round machine asks its adapters to do.

Each is emitted once (a transaction again only after a transient TxFailed). Transactions
are sent at once: the machine emits them only while the contract's window admits a
transaction landing in the next block.
"""

from __future__ import annotations

from dataclasses import dataclass

from flockd.round.base import Address, RejectReason, VoteMode


@dataclass(frozen=True)
class RunElection:
    """Compute sortition.elect(vrf_sk, seed, stakes of this round) -> ElectionDone."""

    round: int
    seed: bytes


@dataclass(frozen=True)
class StartTraining:
    """Train from model ``base_model_hash`` on the local train split, off the event loop
    -> TrainingDone(round, encoded delta)."""

    round: int
    base_model_hash: bytes
    seed: bytes


@dataclass(frozen=True)
class SubmitPropose:
    """Send propose(task, round, delta_hash, proof)."""

    round: int
    delta_hash: bytes
    proof: bytes


@dataclass(frozen=True)
class SubmitDecline:
    """Send decline(task, round, proof): not elected, so the propose phase need not wait for
    us. The proof enters the registry's fallback draw (no empty rounds)."""

    round: int
    proof: bytes


@dataclass(frozen=True)
class PushDelta:
    """Send this node's on-chain delta to every other participant (/flock/delta/1)."""

    round: int
    delta_hash: bytes
    delta: bytes


@dataclass(frozen=True)
class FetchDelta:
    """Ask peers other than ``avoid`` (the proposer first) for the delta with this hash
    -> DeltaReceived(round, proposer, bytes, sender)."""

    round: int
    proposer: Address
    delta_hash: bytes
    avoid: tuple[Address, ...] = ()


@dataclass(frozen=True)
class DeltaRejected:
    """A peer's delta was refused (log it; a peer that keeps doing this may be dropped)."""

    round: int
    proposer: Address
    sender: Address
    reason: RejectReason


@dataclass(frozen=True)
class ScoreProposals:
    """Score the round's deltas, in on-chain order (None: never received), against model
    ``base_model_hash`` on the local validation split -> ScoresReady. Per-proposal mode:
    one +1/-1 per delta; whole-round mode (never sent with a gap): one score for their
    aggregate."""

    round: int
    base_model_hash: bytes
    deltas: tuple[bytes | None, ...]
    mode: VoteMode


@dataclass(frozen=True)
class SubmitCommit:
    """Persist (round, votes, salt, proposals_digest) durably first (a restart needs them
    to reveal), then send commit_vote(task, round, digest, proposals_digest)."""

    round: int
    digest: bytes
    votes: tuple[int, ...]
    salt: bytes
    proposals_digest: bytes


@dataclass(frozen=True)
class SubmitReveal:
    round: int
    votes: tuple[int, ...]
    salt: bytes


@dataclass(frozen=True)
class SubmitFinalise:
    round: int


@dataclass(frozen=True)
class Aggregate:
    """model_round = base + aggregate(deltas) with the task's rule; the deltas are the
    accepted ones in canonical order (ascending delta hash). Store the model and its
    deltas -> ModelReady(round, model_hash)."""

    round: int
    base_model_hash: bytes
    deltas: tuple[bytes, ...]


@dataclass(frozen=True)
class FetchModel:
    """Fetch model_round from peers, check it hashes to ``model_hash``, store it
    -> ModelReady(round, model_hash). Round -1 is the initial model."""

    round: int
    model_hash: bytes


@dataclass(frozen=True)
class SubmitRecordModel:
    round: int
    model_hash: bytes


@dataclass(frozen=True)
class RoundComplete:
    """The node holds model_round and the chain recorded the same hash."""

    round: int
    model_hash: bytes


@dataclass(frozen=True)
class TaskComplete:
    """The task's last round is complete: ``model_hash`` is the final model."""

    model_hash: bytes


Action = (
    RunElection
    | StartTraining
    | SubmitPropose
    | SubmitDecline
    | PushDelta
    | FetchDelta
    | DeltaRejected
    | ScoreProposals
    | SubmitCommit
    | SubmitReveal
    | SubmitFinalise
    | Aggregate
    | FetchModel
    | SubmitRecordModel
    | RoundComplete
    | TaskComplete
)
