"""The round machine's own state: what this node has asked for, track by track.

What the chain and the adapters said lives in ``RoundFacts`` (facts.py); what the node
itself has done so far lives here, as one explicit value per track. The tables below are
every move a track can make, and ``moved`` refuses any other. The tracks move forward
only (one exception: a voter that abstained for want of proposals collects again when
the registry reopens the round), where ``RoundMachine`` emits the action that moves them
(its ``_advance_<track>`` methods) or takes the answer to one (``_answer``). Commit and
reveal have no voter values of their own: their progress is the commit and reveal
transactions' ``TxTrack`` and the chain's logs, which ``RoundMachine.step`` reads.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from flockd.round.base import MAX_TX_ATTEMPTS, IllegalMove


class ProposerStep(enum.Enum):
    """The proposer track: the last of its one-shot requests this node made."""

    IDLE = "idle"  # nothing asked yet
    ELECTING = "electing"  # RunElection sent
    TRAINING = "training"  # StartTraining sent
    TRAINING_FAILED = "training_failed"  # TrainingFailed answered: give up, decline, vote
    PUSHED = "pushed"  # its delta went to the voters (with its propose, or after a restart)


class VoterStep(enum.Enum):
    """The voter track up to the ballot (an AbstainReason in its place ends the track, but
    for a commitment of its own found on chain)."""

    COLLECTING = "collecting"  # proposals and their deltas
    SCORING = "scoring"  # ScoreProposals sent
    VOTES_READY = "votes_ready"  # a ballot (scored, or restored after a restart)


class AbstainReason(enum.Enum):
    """Why a voter stays out of a round (Step.ABSTAINED; never slashed, never paid)."""

    NO_PROPOSALS = "no proposals"
    NO_BASE_MODEL = "base model not held in time"
    TOO_LATE = "votes not ready before the commit window closed"
    COMMIT_FAILED = "commit transaction failed"
    MISSING_DELTA = "a delta is missing (whole-round mode scores all of them or none)"
    NOTHING_RECEIVED = "no delta received"
    PROPOSALS_CHANGED = "a proposal landed after scoring"
    BALLOT_LOST = "the on-chain commitment is not one this node can open"


VoterState = VoterStep | AbstainReason


class ModelStep(enum.Enum):
    """The model track: computing model_r here, until the node holds the recorded one.
    A FetchModel of the recorded hash runs beside it (``RoundMachine.fetching_model``)."""

    WAITING = "waiting"  # not finalised, or an accepted delta or the base model missing
    AGGREGATING = "aggregating"  # Aggregate sent (ModelReady or AggregateFailed answers)
    AGGREGATE_FAILED = "aggregate_failed"  # it cannot: take the recorded model instead
    DONE = "done"  # holds the recorded model_r: RoundComplete sent


State = TypeVar("State", ProposerStep, VoterState, ModelStep)

_P, _V, _A, _M = ProposerStep, VoterStep, AbstainReason, ModelStep

PROPOSER_MOVES: Mapping[ProposerStep, frozenset[ProposerStep]] = {
    _P.IDLE: frozenset({_P.ELECTING, _P.TRAINING, _P.PUSHED}),  # PUSHED: its proposal landed
    _P.ELECTING: frozenset({_P.TRAINING, _P.PUSHED}),
    _P.TRAINING: frozenset({_P.TRAINING_FAILED, _P.PUSHED}),
    _P.TRAINING_FAILED: frozenset({_P.PUSHED}),  # its proposal landed all the same
    _P.PUSHED: frozenset(),
}
VOTER_MOVES: Mapping[VoterState, frozenset[VoterState]] = {
    _V.COLLECTING: frozenset(
        {_V.SCORING, _V.VOTES_READY, _A.NO_PROPOSALS, _A.MISSING_DELTA, _A.NOTHING_RECEIVED, _A.NO_BASE_MODEL, _A.TOO_LATE}
    ),
    _V.SCORING: frozenset({_V.VOTES_READY, _A.TOO_LATE}),  # it scores with proposals and a base model
    _V.VOTES_READY: frozenset({_A.NO_PROPOSALS, _A.TOO_LATE, _A.COMMIT_FAILED, _A.PROPOSALS_CHANGED, _A.BALLOT_LOST}),
    _A.NO_PROPOSALS: frozenset({_V.COLLECTING, _V.VOTES_READY}),  # FallbackOpened: proposals may come
    # An abstention ends the track, unless the chain shows a commitment of this node's that
    # its ballot opens (a commit sent before a rebuild, or the first of two sends when the
    # second reverted "already committed"): unopened, it would be slashed.
    **{reason: frozenset({_V.VOTES_READY}) for reason in AbstainReason if reason is not _A.NO_PROPOSALS},
}
MODEL_MOVES: Mapping[ModelStep, frozenset[ModelStep]] = {
    _M.WAITING: frozenset({_M.AGGREGATING, _M.DONE}),  # DONE: nothing accepted, or fetched
    _M.AGGREGATING: frozenset({_M.AGGREGATE_FAILED, _M.DONE}),
    _M.AGGREGATE_FAILED: frozenset({_M.DONE}),  # the recorded model fetched
    _M.DONE: frozenset(),
}


def moved(moves: Mapping[State, frozenset[State]], old: State, new: State) -> State:
    """``new``, if the table has the move from ``old``."""
    if new not in moves[old]:
        raise IllegalMove(f"no move from {old} to {new}")
    return new


class TxState(enum.Enum):
    READY = "ready"  # may be sent (again, after a transient failure)
    IN_FLIGHT = "in_flight"
    LANDED = "landed"  # its log arrived
    DEAD = "dead"  # reverted, or out of attempts


@dataclass
class TxTrack:
    """One transaction of this node in this round."""

    state: TxState = TxState.READY
    attempts: int = 0

    @property
    def in_flight(self) -> bool:
        return self.state is TxState.IN_FLIGHT

    @property
    def dead(self) -> bool:
        return self.state is TxState.DEAD

    def may_send(self) -> bool:
        return self.state is TxState.READY

    def sent(self) -> None:
        self.attempts += 1
        self.state = TxState.IN_FLIGHT

    def landed(self) -> None:
        if self.state is not TxState.DEAD:
            self.state = TxState.LANDED

    def failed(self, reverted: bool) -> None:
        if self.state in (TxState.LANDED, TxState.DEAD):
            return  # its log is in (the chain's word wins), or nothing more to try
        final = reverted or self.attempts >= MAX_TX_ATTEMPTS
        self.state = TxState.DEAD if final else TxState.READY


@dataclass(frozen=True)
class Ballot:
    votes: tuple[int, ...]
    salt: bytes
    digest: bytes
    proposals: bytes | None  # proposals_digest of what it judged; None: saved without it
