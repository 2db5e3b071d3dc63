"""What every part of the round machine shares: the task's fixed settings, the names of
phases, roles and steps, the errors, and the two hashes the protocol commits to."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from eth_abi import encode as abi_encode
from eth_utils import keccak

Address = bytes  # a 20-byte canonical Ethereum address: one spelling, so == is identity

SCORE_BOUND = 10**18  # |score| a whole-round scorer may report; the ballot carries its sign
MAX_PROPOSALS = 16  # the contract's per-round cap (and the width of accepted_mask we read)
FINALISE_STAGGER = 2  # blocks between one participant's turn to finalise and the next one's
MAX_TX_ATTEMPTS = 3  # sends of one transaction after transient (non-revert) failures


class RoundError(Exception):
    """The round machine was handed something it cannot accept."""


class InvalidConfig(RoundError): ...


class InvalidEvent(RoundError):
    """An event whose fields are malformed (wrong length, negative number, bad vote)."""


class WrongRound(RoundError):
    """An event for another round was handed to a RoundMachine."""


class ConflictingEvent(RoundError):
    """Two chain events that cannot both be true (a proposal index with two contents)."""


class InvalidScores(RoundError):
    """ScoresReady whose votes do not fit the vote mode or the proposals scored."""


class IllegalMove(Exception):
    """A track of the machine was moved along no transition of its table (round/tracks.py):
    a bug in the machine, never the fault of an event. Not a RoundError, so no adapter
    takes it for a refused event: it stops the task visibly."""


class VoteMode(enum.IntEnum):
    PER_PROPOSAL = 0  # one +1/0/-1 per proposal, in on-chain order (0: not received)
    WHOLE_ROUND = 1  # one +1/-1 for the aggregate of all (the sign of the scorer's gain)


class Phase(enum.Enum):
    """Where the round is, by the chain's clock and the node's progress after it."""

    WAITING_FOR_OPEN = "waiting_for_open"
    PROPOSING = "proposing"
    COMMITTING = "committing"
    REVEALING = "revealing"
    FINALISING = "finalising"  # reveal window over, finalise not yet seen
    APPLYING = "applying"  # finalised; the node computes, attests or fetches model_r
    DONE = "done"  # the node holds model_r and it is the one recorded on chain


class Role(enum.Enum):
    UNDECIDED = "undecided"
    PROPOSER = "proposer"
    VOTER = "voter"  # not elected, or elected but gave up (a proposer votes as well)


class Step(enum.Enum):
    """The node's own sub-step within its role."""

    WAITING = "waiting"  # for the round to open, or for the base model
    ELECTING = "electing"
    TRAINING = "training"
    PROPOSING = "proposing"  # propose tx sent
    PROPOSED = "proposed"  # its proposal is on chain; it votes next, on every proposal
    COLLECTING = "collecting"  # waiting for proposals and their deltas
    SCORING = "scoring"
    VOTES_READY = "votes_ready"  # waiting for the commit window
    COMMITTING = "committing"
    COMMITTED = "committed"
    REVEALING = "revealing"
    REVEALED = "revealed"
    ABSTAINED = "abstained"
    OBSERVING = "observing"  # not a participant of the task


class TxKind(enum.Enum):
    PROPOSE = "propose"
    DECLINE = "decline"
    COMMIT = "commit"
    REVEAL = "reveal"
    FINALISE = "finalise"
    RECORD_MODEL = "record_model"


class ChainPhase(enum.IntEnum):
    """The registry's phase numbers (PHASE_* in TaskRegistry.vy) that can close early."""

    PROPOSE = 2
    COMMIT = 3
    REVEAL = 4


class RejectReason(enum.Enum):
    HASH_MISMATCH = "hash_mismatch"  # bytes do not hash to the proposer's on-chain delta_hash
    NOT_PROPOSED = "not_proposed"  # proposals are closed and that address did not propose
    WRONG_ROUND = "wrong_round"  # a round this node no longer (or not yet) follows
    BUFFER_FULL = "buffer_full"  # too many deltas waiting for a proposal to appear


@dataclass(frozen=True)
class TaskConfig:
    """One task's fixed settings (get_params + get_participants) and this node's address.

    Participants cannot join or leave while a task runs, so the set is fixed here.
    ``delta_grace_blocks``: how far into the commit window a voter waits for missing
    deltas before it votes them down (default: half the commit window).
    ``lag_blocks``: how far this node's clock runs behind the chain's head. An adapter that
    acts on logs only ``confirmations`` blocks deep feeds BlockSealed(N) once it has fed
    the logs of block N, so its clock lags by that much, and a transaction it sends when
    its clock says N lands in block N + lag + 1 or later."""

    task_id: int
    me: Address
    participants: tuple[Address, ...]
    rounds: int
    propose_blocks: int
    commit_blocks: int
    reveal_blocks: int
    max_proposals: int
    vote_mode: VoteMode
    model_init_hash: bytes
    delta_grace_blocks: int | None = None
    lag_blocks: int = 0

    def __post_init__(self) -> None:
        for name in ("task_id", "rounds", "propose_blocks", "commit_blocks", "reveal_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "task_id" else 1):
                raise InvalidConfig(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= self.max_proposals <= MAX_PROPOSALS:
            raise InvalidConfig(f"max_proposals must be in [1, {MAX_PROPOSALS}]")
        check_address("me", self.me, InvalidConfig)
        for who in self.participants:
            check_address("participant", who, InvalidConfig)
        if len(set(self.participants)) != len(self.participants):
            raise InvalidConfig("participants must be distinct")
        check_hash("model_init_hash", self.model_init_hash, InvalidConfig)
        if not isinstance(self.vote_mode, VoteMode):
            object.__setattr__(self, "vote_mode", VoteMode(self.vote_mode))
        if isinstance(self.lag_blocks, bool) or not isinstance(self.lag_blocks, int) or self.lag_blocks < 0:
            raise InvalidConfig("lag_blocks must be a non-negative integer")
        grace = self.delta_grace_blocks
        if grace is not None and not 0 <= grace < self.commit_blocks:
            raise InvalidConfig("delta_grace_blocks must be in [0, commit_blocks)")

    @property
    def grace_blocks(self) -> int:
        if self.delta_grace_blocks is not None:
            return self.delta_grace_blocks
        return self.commit_blocks // 2

    # Cached: a machine asks on every event it decides on, and a scan or sort of 256
    # participants each time was a fifth of a 256-node simulation. The fields are frozen.
    @cached_property
    def is_participant(self) -> bool:
        return self.me in self.participants

    @cached_property
    def _sorted_position(self) -> int | None:
        return sorted(self.participants).index(self.me) if self.is_participant else None

    def finalise_rank(self, round_number: int) -> int | None:
        """This node's turn to finalise round r: rank 0 goes at the reveal deadline, rank k
        FINALISE_STAGGER*k blocks later. Rotating by round spreads the gas."""
        position = self._sorted_position
        if position is None:
            return None
        return (position - round_number) % len(self.participants)


def check_address(name: str, value: object, error: type[RoundError] = InvalidEvent) -> None:
    if not isinstance(value, bytes) or len(value) != 20:
        raise error(f"{name} must be a 20-byte address")


def check_hash(name: str, value: object, error: type[RoundError] = InvalidEvent) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise error(f"{name} must be 32 bytes")


def check_round(value: object, error: type[RoundError] = InvalidEvent, lowest: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise error(f"round must be an integer >= {lowest}, got {value!r}")


def delta_hash(data: bytes) -> bytes:
    """keccak256 of a delta's bytes: the same as flockd.fl.codec.delta_hash, without
    importing the codec (which pulls in torch)."""
    return keccak(data)


def proposals_digest(delta_hashes: Iterable[bytes]) -> bytes:
    """The registry's keccak chain over a round's delta hashes in slot order (starting from
    32 zero bytes): the proposals a ballot judged, which commit_vote must match."""
    digest = bytes(32)
    for h in delta_hashes:
        digest = keccak(digest + h)
    return digest


def vote_digest(votes: tuple[int, ...], salt: bytes, voter: Address) -> bytes:
    """keccak256(abi.encode(int256[] votes, bytes32 salt, address voter)), the contract's
    commit_vote digest."""
    return keccak(abi_encode(["int256[]", "bytes32", "address"], [list(votes), salt, voter]))
