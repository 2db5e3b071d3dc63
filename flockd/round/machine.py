"""RoundMachine: one node's part in one round, as a pure state machine.

``handle(event)`` first records what the event says (``RoundFacts.record``, facts.py) and
what it answers of the node's own requests (``_answer``), then derives what to do now from
all facts so far, one track at a time (``_advance_proposer``, ``_advance_voter``,
``_advance_finalise``, ``_advance_model``): each sets its track's next value (tracks.py)
where it emits the action that moves it. Deriving instead of reacting makes duplicates and
reordering harmless: an event that adds nothing new changes no fact, and every action is
emitted at most once (a transaction again only after a transient failure). The chain's
windows are block heights; a transaction is emitted only while a transaction landing in
the next block is still inside its window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flockd.round.actions import (
    Action,
    Aggregate,
    FetchModel,
    PushDelta,
    RoundComplete,
    RunElection,
    ScoreProposals,
    StartTraining,
    SubmitCommit,
    SubmitDecline,
    SubmitFinalise,
    SubmitPropose,
    SubmitRecordModel,
    SubmitReveal,
)
from flockd.round.base import (
    FINALISE_STAGGER,
    InvalidConfig,
    InvalidScores,
    Role,
    TaskConfig,
    TxKind,
    VoteMode,
    check_round,
    delta_hash,
    proposals_digest,
    vote_digest,
)
from flockd.round.deltas import Proposal
from flockd.round.events import (
    AggregateFailed,
    BallotRestored,
    DeclinedOnChain,
    Event,
    FallbackOnChain,
    ModelFetchFailed,
    ProposalOnChain,
    ScoresReady,
    TrainingFailed,
    TxFailed,
    VoteCommittedOnChain,
    VoteRevealedOnChain,
    VotersSettledOnChain,
)
from flockd.round.facts import RoundFacts
from flockd.round.tracks import (
    MODEL_MOVES,
    PROPOSER_MOVES,
    VOTER_MOVES,
    AbstainReason,
    Ballot,
    ModelStep,
    ProposerStep,
    TxTrack,
    VoterState,
    VoterStep,
    moved,
)
from flockd.round.views import RoundViews

SaltSource = Callable[[], bytes]  # 32 unpredictable bytes per call (os.urandom in the daemon)


class RoundMachine(RoundViews):
    """One node's part in one round: ``handle`` (or ``record`` then ``decide``), ``replay``.
    ``facts`` is what it was told (read it, never write it); its own state is one value
    per track (``proposer_step``, ``voter_state``, ``model_step``, ``tx_state(kind)``)."""

    def __init__(self, config: TaskConfig, round_number: int, salt_source: SaltSource) -> None:
        check_round(round_number, InvalidConfig)
        if round_number >= config.rounds:
            raise InvalidConfig(f"round {round_number} beyond the task's {config.rounds}")
        self.config = config
        self.round = round_number
        self._salt_source = salt_source
        self.facts = RoundFacts.new(config, round_number)
        self._proposer_step = ProposerStep.IDLE
        self._voter_state: VoterState = VoterStep.COLLECTING
        self._model_step = ModelStep.WAITING
        self._fetching_model: bytes | None = None  # the recorded hash a FetchModel is out for
        self._tx = {kind: TxTrack() for kind in TxKind}
        self._ballot: Ballot | None = None
        self._scored: tuple[bytes, ...] | None = None  # delta hashes, in the order scored
        self._gaps: tuple[bool, ...] = ()  # which of them were never received

    @classmethod
    def replay(
        cls, config: TaskConfig, round_number: int, events: Iterable[Event], salt_source: SaltSource
    ) -> tuple[RoundMachine, list[Action]]:
        """Rebuild a round after a restart: feed BlockSealed(head) first, then the round's
        chain logs in order, then what the node saved (BallotRestored, its deltas as
        DeltaReceived, ModelReady). Actions are derived once, from the final picture."""
        machine = cls(config, round_number, salt_source)
        out: list[Action] = []
        for event in events:
            out += machine.record(event)
        out += machine.decide()
        return machine, out

    def handle(self, event: Event) -> list[Action]:
        return [*self.record(event), *self.decide()]

    def record(self, event: Event) -> list[Action]:
        """Take in what ``event`` says without deciding anything yet (a TaskMachine feeds
        several events, then calls ``decide``); returns what must answer the event itself
        (a rejected delta)."""
        fresh_fallback = isinstance(event, FallbackOnChain) and self.facts.fallback is None
        out: list[Action] = list(self.facts.record(event))
        self._answer(event, fresh_fallback)
        return out

    def decide(self) -> list[Action]:
        """What to do now, from every fact recorded so far."""
        out: list[Action] = []
        if self.facts.open_block is None or self.facts.head is None:
            return out
        if self.config.is_participant:
            self._advance_proposer(out)
            self._advance_voter(out)
            self._advance_finalise(out)
        self._advance_model(out)
        return out

    # ------------------------------------------------------------------ answers

    def _answer(self, event: Event, fresh_fallback: bool) -> None:
        """What ``event`` answers of this node's own requests: its transactions' logs and
        failures, its scores, its failed work, a reopened round."""
        me = self.config.me
        match event:
            case ProposalOnChain() if event.proposer == me:
                self._tx[TxKind.PROPOSE].landed()
            case DeclinedOnChain() if event.participant == me:
                self._tx[TxKind.DECLINE].landed()
            case VoteCommittedOnChain() if event.voter == me:
                self._tx[TxKind.COMMIT].landed()
            case VoteRevealedOnChain() if event.voter == me:
                self._tx[TxKind.REVEAL].landed()
            case FallbackOnChain() if fresh_fallback:
                self._tx[TxKind.FINALISE] = TxTrack()  # a finalise may have opened it
                if self._voter_state is AbstainReason.NO_PROPOSALS:
                    self._voter_to(VoterStep.COLLECTING if self._ballot is None else VoterStep.VOTES_READY)
            case ScoresReady() if self._voter_state is VoterStep.SCORING:  # else late or unasked
                self._on_scores(event.votes)
            case BallotRestored() if self._ballot is None:
                self._set_ballot(event.votes, event.salt, event.proposals)
            case TrainingFailed() if self._proposer_step is ProposerStep.TRAINING:
                self._proposer_to(ProposerStep.TRAINING_FAILED)
            case AggregateFailed() if self._model_step is ModelStep.AGGREGATING:
                self._model_to(ModelStep.AGGREGATE_FAILED)
            case ModelFetchFailed() if event.model_hash == self._fetching_model:
                self._fetching_model = None  # asked again while still wanted
            case VotersSettledOnChain() if self._tx[TxKind.FINALISE].in_flight:
                self._tx[TxKind.FINALISE] = TxTrack()  # a call of ours settled a batch: go on
            case TxFailed() if event.kind is TxKind.FINALISE and self._finalise_predates_fallback():
                self._tx[TxKind.FINALISE] = TxTrack()  # it met the reopened window: try again at its end
            case TxFailed():
                self._tx[event.kind].failed(event.reverted)

    def _finalise_predates_fallback(self) -> bool:
        """A finalise failing before the reopened round's reveal end was sent for the round
        as it stood before FallbackOpened (the machine sends none earlier)."""
        ends, head = self.facts.deadlines, self.facts.head
        return self.facts.fallback is not None and ends is not None and head is not None and head < ends[2]

    def _on_scores(self, votes: tuple[int, ...]) -> None:
        scored = self._scored
        assert scored is not None  # set with VoterStep.SCORING
        if self.config.vote_mode is VoteMode.WHOLE_ROUND:
            if len(votes) != 1:
                raise InvalidScores("whole-round mode takes exactly one score")
            # The contract takes a sign only: a measured gain of any size is one vote.
            votes = (1 if votes[0] >= 0 else -1,)
        else:
            if len(votes) != len(scored) or any(v not in (1, -1) for v in votes):
                raise InvalidScores(f"expected {len(scored)} votes of +1 or -1")
            # A delta never received is voted 0, "not received", whatever the scorer put in
            # its place: never a reject, and never slashed. A proposer votes +1 on its own
            # proposal (it knows what it trained; the registry does not check, and a
            # self-vote is one vote of its own stake like any other).
            own = self.facts.proposed()
            mine = None if own is None else own.delta_hash
            votes = tuple(
                0 if gap else 1 if digest == mine else v
                for v, gap, digest in zip(votes, self._gaps, scored, strict=True)
            )
        self._set_ballot(votes, self._salt_source(), proposals_digest(scored))

    def _set_ballot(self, votes: tuple[int, ...], salt: bytes, proposals: bytes | None) -> None:
        if not isinstance(salt, bytes) or len(salt) != 32:
            raise InvalidConfig("the salt source must return 32 bytes")
        self._ballot = Ballot(votes, salt, vote_digest(votes, salt, self.config.me), proposals)
        if isinstance(self._voter_state, VoterStep):  # an abstained voter keeps its reason
            self._voter_to(VoterStep.VOTES_READY)

    # ------------------------------------------------------------------ moves (tracks.py)

    def _proposer_to(self, step: ProposerStep) -> None:
        self._proposer_step = moved(PROPOSER_MOVES, self._proposer_step, step)

    def _voter_to(self, state: VoterState) -> None:
        self._voter_state = moved(VOTER_MOVES, self._voter_state, state)

    def _model_to(self, step: ModelStep) -> None:
        self._model_step = moved(MODEL_MOVES, self._model_step, step)

    # ------------------------------------------------------------------ decisions

    def _send(self, kind: TxKind, action: Action, out: list[Action]) -> None:
        tx = self._tx[kind]
        if tx.may_send():
            tx.sent()
            out.append(action)

    def _push(self, digest: bytes, data: bytes, out: list[Action]) -> None:
        if self._proposer_step is not ProposerStep.PUSHED:
            self._proposer_to(ProposerStep.PUSHED)
            out.append(PushDelta(self.round, digest, data))

    def _advance_proposer(self, out: list[Action]) -> None:
        facts = self.facts
        head, (propose_end, commit_end, _) = facts.now()
        seed = facts.seed
        assert seed is not None  # set with the open block
        own = facts.proposed()
        if own is not None:  # proposed (perhaps before a restart): make sure voters have it
            data = facts.book.data(own.delta_hash)
            if data is not None and head < commit_end:
                self._push(own.delta_hash, data, out)
            return
        election = facts.election
        if election is None:
            if head < propose_end and self._proposer_step is ProposerStep.IDLE:
                self._proposer_to(ProposerStep.ELECTING)
                out.append(RunElection(self.round, seed))
            return
        if self.role is not Role.PROPOSER:
            # Saying so lets the propose phase close as soon as every proposal is in.
            if not facts.declined and not facts.closed() and facts.lands_by(propose_end):
                self._send(TxKind.DECLINE, SubmitDecline(self.round, election.proof), out)
            return
        if facts.own_delta is None:
            if facts.base is not None and self._proposer_step in (ProposerStep.IDLE, ProposerStep.ELECTING):
                self._proposer_to(ProposerStep.TRAINING)
                out.append(StartTraining(self.round, facts.base, seed))
            return
        digest = delta_hash(facts.own_delta)
        self._send(TxKind.PROPOSE, SubmitPropose(self.round, digest, election.proof), out)
        # Voters hold a delta until its proposal lands; pushing with the transaction rather
        # than after its log saves them the confirmation wait.
        self._push(digest, facts.own_delta, out)

    def _advance_voter(self, out: list[Action]) -> None:
        # Every participant votes: a voter, and a proposer once its proposal is on chain.
        facts = self.facts
        ballot, mine = self._ballot, facts.committed.get(self.config.me)
        if isinstance(self._voter_state, AbstainReason) and ballot is not None and mine == ballot.digest:
            # Its commitment landed all the same (sent before a rebuild, or the first of
            # two sends): unopened, it would be slashed.
            self._voter_to(VoterStep.VOTES_READY)
        if not self._votes or isinstance(self._voter_state, AbstainReason) or not facts.closed():
            return
        head, (propose_end, commit_end, reveal_end) = facts.now()
        proposals = facts.book.ordered()
        if not proposals:
            self._voter_to(AbstainReason.NO_PROPOSALS)
            return
        if head >= propose_end and head < commit_end:
            out.extend(facts.book.fetch_missing(proposals))
        in_time = facts.lands_by(commit_end)  # a commit sent now still lands in the window
        if self._voter_state is VoterStep.COLLECTING and in_time:
            self._maybe_score(proposals, out)
        if self._voter_state is not VoterStep.VOTES_READY or ballot is None:
            if not in_time and isinstance(self._voter_state, VoterStep):
                self._voter_to(AbstainReason.TOO_LATE if facts.base is not None else AbstainReason.NO_BASE_MODEL)
            return
        commit = self._tx[TxKind.COMMIT]
        if mine is None:
            # Logs come before the clock: at head >= commit_end a commit not seen never landed.
            if head >= commit_end or commit.dead or (not in_time and not commit.in_flight):
                self._voter_to(AbstainReason.COMMIT_FAILED if commit.dead else AbstainReason.TOO_LATE)
            elif ballot.proposals is None or ballot.proposals != proposals_digest(p.delta_hash for p in proposals):
                # It judged other proposals (more landed, or a reorganisation reordered
                # them); the registry would refuse the commit anyway.
                self._voter_to(AbstainReason.PROPOSALS_CHANGED)
            elif head >= propose_end and in_time:
                action = SubmitCommit(self.round, ballot.digest, ballot.votes, ballot.salt, ballot.proposals)
                self._send(TxKind.COMMIT, action, out)
            return
        if mine != ballot.digest:
            self._voter_to(AbstainReason.BALLOT_LOST)
        elif self.config.me not in facts.revealed and head >= commit_end and facts.lands_by(reveal_end):
            self._send(TxKind.REVEAL, SubmitReveal(self.round, ballot.votes, ballot.salt), out)

    def _maybe_score(self, proposals: list[Proposal], out: list[Action]) -> None:
        facts = self.facts
        head, (propose_end, _, _) = facts.now()
        deltas = tuple(facts.book.data(p.delta_hash) for p in proposals)
        gaps = tuple(d is None for d in deltas)
        if any(gaps) and head < propose_end + self.config.grace_blocks:
            return  # still waiting for stragglers
        if facts.base is None:
            return
        self._scored, self._gaps = tuple(p.delta_hash for p in proposals), gaps
        whole = self.config.vote_mode is VoteMode.WHOLE_ROUND
        if whole and any(gaps):
            self._voter_to(AbstainReason.MISSING_DELTA)
        elif all(gaps):
            self._voter_to(AbstainReason.NOTHING_RECEIVED)  # an all-0 ballot would judge nothing
        else:
            self._voter_to(VoterStep.SCORING)
            out.append(ScoreProposals(self.round, facts.base, deltas, self.config.vote_mode))

    def _advance_finalise(self, out: list[Action]) -> None:
        head, (_, _, reveal_end) = self.facts.now()
        rank = self.config.finalise_rank(self.round)
        # Everyone may finalise; taking turns saves all but one transaction.
        turn = None if rank is None else reveal_end + FINALISE_STAGGER * rank
        if self.facts.finalised is None and turn is not None and head >= turn:
            self._send(TxKind.FINALISE, SubmitFinalise(self.round), out)

    def _advance_model(self, out: list[Action]) -> None:
        facts = self.facts
        final = facts.finalised
        if final is None:
            return
        accepted = [facts.book.get(i) for i in facts.accepted or ()]
        if accepted and facts.model is None and all(p is not None for p in accepted):
            known = [p for p in accepted if p is not None]
            out.extend(facts.book.fetch_missing(known))
            held = [facts.book.data(h) for h in sorted(p.delta_hash for p in known)]
            ready = [d for d in held if d is not None]
            if facts.base is not None and len(ready) == len(held) and self._model_step is ModelStep.WAITING:
                self._model_to(ModelStep.AGGREGATING)
                out.append(Aggregate(self.round, facts.base, tuple(ready)))
        model, recorded = self.model_hash, facts.recorded
        if recorded is None:
            if model is not None and facts.ticked_since_final and self.config.is_participant:
                self._send(TxKind.RECORD_MODEL, SubmitRecordModel(self.round, model), out)
            return
        if model == recorded:
            if self._model_step is not ModelStep.DONE:
                self._model_to(ModelStep.DONE)
                out.append(RoundComplete(self.round, recorded))
            return
        if self._model_step is ModelStep.AGGREGATING and facts.model is None:
            return  # our own aggregate is still being computed
        if self._fetching_model != recorded:
            self._fetching_model = recorded
            out.append(FetchModel(self.round, recorded))
