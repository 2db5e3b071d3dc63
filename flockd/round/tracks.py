"""The round machine's own state: what this node has asked for, track by track.

What the chain and the adapters said lives in ``RoundFacts`` (facts.py); what the node
itself has done so far lives here, as one explicit value per track. Each track only
moves forward, and only ``RoundMachine`` moves it (its ``_advance_<track>`` methods and
the answers to its own requests in ``_answer``):

    proposer  IDLE -> ELECTING -> TRAINING -> PUSHED           (RunElection, StartTraining,
                                  TRAINING -> TRAINING_FAILED    PushDelta; TrainingFailed)
              IDLE | ELECTING | TRAINING -> PUSHED (its proposal landed, or a delta came
                                                    back untrained: push what it holds)
    voter     COLLECTING -> SCORING -> VOTES_READY               (ScoreProposals, ScoresReady)
              COLLECTING | SCORING -> VOTES_READY                (BallotRestored)
              any -> an AbstainReason; NO_PROPOSALS -> COLLECTING (FallbackOpened)
    model     WAITING -> AGGREGATING -> AGGREGATE_FAILED         (Aggregate, AggregateFailed)
              any -> DONE                                        (RoundComplete)
    each tx   READY -> IN_FLIGHT -> LANDED | READY (transient failure) | DEAD

Commit and reveal have no voter values of their own: their progress is the commit and
reveal transactions' state and the chain's logs, which ``RoundMachine.step`` reads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from flockd.round.base import MAX_TX_ATTEMPTS


class ProposerStep(enum.Enum):
    """The proposer track: the last of its one-shot requests this node made."""

    IDLE = "idle"  # nothing asked yet
    ELECTING = "electing"  # RunElection sent
    TRAINING = "training"  # StartTraining sent
    TRAINING_FAILED = "training_failed"  # TrainingFailed answered: give up, decline, vote
    PUSHED = "pushed"  # its delta went to the voters (with its propose, or after a restart)


class VoterStep(enum.Enum):
    """The voter track up to the ballot (an AbstainReason in its place ends the track)."""

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
