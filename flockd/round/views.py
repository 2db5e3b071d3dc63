"""What a RoundMachine shows the outside: phase, role and step, read from its facts and
its tracks (never stored twice), and read-only views of the facts. Formatting for the
RPC is rpc/round_view.py's business."""

from __future__ import annotations

from flockd.round.base import Phase, Role, Step, TaskConfig, TxKind
from flockd.round.deltas import Proposal
from flockd.round.facts import RoundFacts
from flockd.round.tracks import (
    AbstainReason,
    Ballot,
    ModelStep,
    ProposerStep,
    TxState,
    TxTrack,
    VoterState,
    VoterStep,
)


class RoundViews:
    """RoundMachine's read side (its base class): it reads facts and tracks, moves nothing."""

    config: TaskConfig
    round: int
    facts: RoundFacts
    _proposer_step: ProposerStep
    _voter_state: VoterState
    _model_step: ModelStep
    _fetching_model: bytes | None
    _tx: dict[TxKind, TxTrack]
    _ballot: Ballot | None

    @property
    def role(self) -> Role:
        facts = self.facts
        if facts.proposed() is not None:
            return Role.PROPOSER
        if self._elected and not self.gave_up:
            return Role.PROPOSER
        ends = facts.deadlines
        if facts.election is not None or (ends is not None and facts.head is not None and facts.head >= ends[0]):
            return Role.VOTER
        return Role.UNDECIDED

    @property
    def phase(self) -> Phase:
        if self._model_step is ModelStep.DONE:
            return Phase.DONE
        facts = self.facts
        if facts.finalised is not None:
            return Phase.APPLYING
        if facts.deadlines is None or facts.head is None:
            return Phase.WAITING_FOR_OPEN
        propose_end, commit_end, reveal_end = facts.deadlines
        for end, phase in (
            (propose_end, Phase.PROPOSING),
            (commit_end, Phase.COMMITTING),
            (reveal_end, Phase.REVEALING),
        ):
            if facts.head < end:
                return phase
        return Phase.FINALISING

    @property
    def step(self) -> Step:
        if not self.config.is_participant:
            return Step.OBSERVING
        role, proposed = self.role, self.facts.proposed() is not None
        proposer = self._proposer_step
        if role is Role.PROPOSER and not proposed:
            if self._tx[TxKind.PROPOSE].in_flight:
                return Step.PROPOSING
            trained = proposer in (ProposerStep.TRAINING, ProposerStep.PUSHED)
            return Step.TRAINING if trained else Step.WAITING
        if role is Role.UNDECIDED:
            return Step.WAITING if proposer is ProposerStep.IDLE else Step.ELECTING
        me, facts, voter = self.config.me, self.facts, self._voter_state
        for done, step in (
            (isinstance(voter, AbstainReason), Step.ABSTAINED),
            (me in facts.revealed, Step.REVEALED),
            (self._tx[TxKind.REVEAL].in_flight, Step.REVEALING),
            (me in facts.committed, Step.COMMITTED),
            (self._tx[TxKind.COMMIT].in_flight, Step.COMMITTING),
            (voter is VoterStep.VOTES_READY, Step.VOTES_READY),
            (voter is VoterStep.SCORING, Step.SCORING),
        ):
            if done:
                return step
        return Step.PROPOSED if proposed else Step.COLLECTING

    @property
    def _elected(self) -> bool:
        election = self.facts.election
        return election is not None and (election.elected or self.is_fallback_proposer)

    @property
    def _votes(self) -> bool:
        """This node takes the voter path: not elected (or gave up), or proposed."""
        return self.role is Role.VOTER or self.facts.proposed() is not None

    @property
    def gave_up(self) -> bool:
        """Elected, but the proposal did not land before the propose window closed."""
        facts = self.facts
        if not self._elected or facts.proposed() is not None or facts.head is None:
            return False
        ended = facts.deadlines is not None and not facts.lands_by(facts.deadlines[0])
        return ended or self._tx[TxKind.PROPOSE].dead or self._proposer_step is ProposerStep.TRAINING_FAILED

    @property
    def is_fallback_proposer(self) -> bool:
        """The registry reopened the propose window for this node alone (its draw was the
        best of the round's declines)."""
        fallback = self.facts.fallback
        return fallback is not None and fallback.proposer == self.config.me

    # ------------------------------------------------------------------ the tracks

    @property
    def proposer_step(self) -> ProposerStep:
        return self._proposer_step

    @property
    def voter_state(self) -> VoterState:
        """The voter track: a VoterStep, or the AbstainReason that ended it."""
        return self._voter_state

    @property
    def model_step(self) -> ModelStep:
        return self._model_step

    @property
    def fetching_model(self) -> bytes | None:
        """The recorded model_r hash a FetchModel is out for (none answered yet)."""
        return self._fetching_model

    def tx_state(self, kind: TxKind) -> TxState:
        return self._tx[kind].state

    @property
    def abstain_reason(self) -> AbstainReason | None:
        voter = self._voter_state
        return voter if isinstance(voter, AbstainReason) else None

    @property
    def my_votes(self) -> tuple[int, ...] | None:
        return None if self._ballot is None else self._ballot.votes

    # ------------------------------------------------------------------ the facts

    @property
    def deadlines(self) -> tuple[int, int, int] | None:
        return self.facts.deadlines

    @property
    def head(self) -> int | None:
        return self.facts.head

    @property
    def open_block(self) -> int | None:
        return self.facts.open_block

    @property
    def seed(self) -> bytes | None:
        return self.facts.seed

    @property
    def base_model_hash(self) -> bytes | None:
        return self.facts.base

    @property
    def proposals(self) -> list[Proposal]:
        return self.facts.book.ordered()

    def has_delta(self, delta_hash: bytes) -> bool:
        return self.facts.book.has(delta_hash)

    @property
    def votes_committed(self) -> frozenset[bytes]:
        return frozenset(self.facts.committed)

    @property
    def votes_revealed(self) -> dict[bytes, tuple[int, ...]]:
        return dict(self.facts.revealed)

    @property
    def accepted(self) -> tuple[int, ...] | None:
        """Indexes of the accepted proposals, once finalised."""
        return self.facts.accepted

    @property
    def model_hash(self) -> bytes | None:
        """model_r as this node holds it (model_{r-1} when nothing was accepted)."""
        facts = self.facts
        if facts.model is not None:
            return facts.model
        if facts.finalised is not None and facts.finalised.accepted_mask == 0:
            return facts.base
        return None

    @property
    def recorded_model_hash(self) -> bytes | None:
        return self.facts.recorded
