"""RoundMachine: one node's part in one round, as a pure state machine.

``handle(event)`` first records what the event says (a fact: the head moved, a proposal
landed, scores came back), then derives what to do now from all facts so far. Deriving
instead of reacting makes duplicates and reordering harmless: an event that adds nothing
new changes no fact, and every action is emitted at most once (a transaction again only
after a transient failure). The chain's windows are block heights; a transaction is
emitted only while a transaction landing in the next block is still inside its window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flockd import sortition
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
    MAX_TX_ATTEMPTS,
    ChainPhase,
    ConflictingEvent,
    InvalidConfig,
    InvalidScores,
    Phase,
    Role,
    Step,
    TaskConfig,
    TxKind,
    VoteMode,
    WrongRound,
    check_round,
    delta_hash,
    vote_digest,
)
from flockd.round.deltas import DeltaBook, Proposal
from flockd.round.events import (
    AggregateFailed,
    BallotRestored,
    BlockSealed,
    DeclinedOnChain,
    DeltaFetchFailed,
    DeltaReceived,
    ElectionDone,
    Event,
    FallbackOnChain,
    ModelFetchFailed,
    ModelReady,
    ModelRecordedOnChain,
    PhaseClosedOnChain,
    ProposalOnChain,
    RoundFinalisedOnChain,
    RoundOpened,
    ScoresReady,
    TrainingDone,
    TrainingFailed,
    TxFailed,
    VoteCommittedOnChain,
    VoteRevealedOnChain,
)

SaltSource = Callable[[], bytes]  # 32 unpredictable bytes per call (os.urandom in the daemon)

# Why a voter stays out of a round (Step.ABSTAINED; never slashed, never paid).
NO_PROPOSALS = "no proposals"
NO_BASE_MODEL = "base model not held in time"
TOO_LATE = "votes not ready before the commit window closed"
COMMIT_FAILED = "commit transaction failed"
MISSING_DELTA = "a delta is missing (whole-round mode scores all of them or none)"
NOTHING_RECEIVED = "no delta received"
PROPOSALS_CHANGED = "a proposal landed after scoring"
BALLOT_LOST = "the on-chain commitment is not one this node can open"


@dataclass(frozen=True)
class _Ballot:
    votes: tuple[int, ...]
    salt: bytes
    digest: bytes


@dataclass
class _Tx:
    attempts: int = 0
    in_flight: bool = False
    dead: bool = False  # reverted, or out of attempts

    def may_send(self) -> bool:
        return not (self.in_flight or self.dead) and self.attempts < MAX_TX_ATTEMPTS

    def sent(self) -> None:
        self.attempts += 1
        self.in_flight = True

    def failed(self, reverted: bool) -> None:
        self.in_flight = False
        self.dead = self.dead or reverted or self.attempts >= MAX_TX_ATTEMPTS


class RoundMachine:
    def __init__(self, config: TaskConfig, round_number: int, salt_source: SaltSource) -> None:
        check_round(round_number, InvalidConfig)
        if round_number >= config.rounds:
            raise InvalidConfig(f"round {round_number} beyond the task's {config.rounds}")
        self.config = config
        self.round = round_number
        self._salt_source = salt_source
        self._head: int | None = None
        self._open: int | None = None
        self._closed_early: dict[ChainPhase, int] = {}  # PhaseClosed logs: phase -> last block
        self._fallback: FallbackOnChain | None = None  # the propose window reopened for one decliner
        self._declined = False
        self._seed: bytes | None = None
        self._base: bytes | None = None  # model_{r-1}
        self._election: sortition.Election | None = None
        self._own_delta: bytes | None = None
        self._book = DeltaBook(round_number, 4 * config.max_proposals)
        self._asked: set[str] = set()  # one-shot actions already emitted
        self._tx = {kind: _Tx() for kind in TxKind}
        self._scored: tuple[bytes, ...] | None = None  # delta hashes, in the order scored
        self._gaps: tuple[bool, ...] = ()
        self._ballot: _Ballot | None = None
        self._abstained: str | None = None
        self._committed: dict[bytes, bytes] = {}
        self._revealed: dict[bytes, tuple[int, ...]] = {}
        self._finalised: RoundFinalisedOnChain | None = None
        self._ticked_since_final = False
        self._model: bytes | None = None  # model_r, as this node holds it
        self._recorded: bytes | None = None
        self._aggregate_failed = False
        self._training_failed = False
        self._fetching_model: set[bytes] = set()
        self._complete = False

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
            machine._apply(event, out)
        machine._advance(out)
        return machine, out

    def handle(self, event: Event) -> list[Action]:
        out: list[Action] = []
        self._apply(event, out)
        self._advance(out)
        return out

    def record(self, event: Event) -> list[Action]:
        """Take in what ``event`` says without deciding anything yet (a TaskMachine feeds
        several events, then calls ``decide``); returns what must answer the event itself
        (a rejected delta, a fetch)."""
        out: list[Action] = []
        self._apply(event, out)
        return out

    def decide(self) -> list[Action]:
        """What to do now, from every fact recorded so far."""
        out: list[Action] = []
        self._advance(out)
        return out

    # ------------------------------------------------------------------ facts

    def _apply(self, event: Event, out: list[Action]) -> None:
        if isinstance(event, BlockSealed):
            self._clock(event.number)
            self._ticked_since_final = self._finalised is not None
            return
        base_event = isinstance(event, ModelReady) and event.round == self.round - 1
        if event.round != self.round and not base_event:
            raise WrongRound(f"{type(event).__name__} for round {event.round} in round {self.round}")
        match event:
            case RoundOpened():
                if self._open is not None and self._open != event.open_block:
                    raise ConflictingEvent(f"round {self.round} opened twice")
                self._open = event.open_block
                self._seed = event.seed or sortition.round_seed(event.block_hash, self.config.task_id, self.round)
                self._clock(event.open_block)
            case ElectionDone():
                self._election = self._election or event.election
            case ModelReady() if base_event:
                self._base = event.model_hash
            case ModelReady():
                self._model = event.model_hash
            case TrainingDone():
                if self._own_delta is None:
                    self._own_delta = event.delta
                    self._book.add_own(event.delta)
            case ProposalOnChain():
                proposal = Proposal(event.index, event.proposer, event.delta_hash)
                out.extend(self._book.add_proposal(proposal))
                if event.proposer == self.config.me:
                    self._tx[TxKind.PROPOSE].in_flight = False
            case DeclinedOnChain():
                if event.participant == self.config.me:
                    self._declined = True
                    self._tx[TxKind.DECLINE].in_flight = False
            case PhaseClosedOnChain():
                self._closed_early.setdefault(event.phase, event.last_block)
            case FallbackOnChain():
                if self._fallback is None:
                    # Fresh windows from here: the round is not over after all.
                    self._fallback = event
                    self._closed_early.clear()
                    self._tx[TxKind.FINALISE] = _Tx()  # a finalise may have opened it
                    if self._abstained == NO_PROPOSALS:
                        self._abstained = None
            case DeltaReceived():
                out.extend(
                    self._book.offer(event.proposer, event.delta, event.sender, self._closed(), event.digest)
                )
            case ScoresReady():
                self._on_scores(event.votes)
            case BallotRestored():
                if self._ballot is None:
                    self._set_ballot(event.votes, event.salt)
            case VoteCommittedOnChain():
                self._committed.setdefault(event.voter, event.digest)
                if event.voter == self.config.me:
                    self._tx[TxKind.COMMIT].in_flight = False
            case VoteRevealedOnChain():
                self._revealed.setdefault(event.voter, event.votes)
                if event.voter == self.config.me:
                    self._tx[TxKind.REVEAL].in_flight = False
            case RoundFinalisedOnChain():
                if self._finalised is not None and self._finalised != event:
                    raise ConflictingEvent(f"round {self.round} finalised twice")
                self._finalised = event
            case ModelRecordedOnChain():
                if self._recorded is not None and self._recorded != event.model_hash:
                    raise ConflictingEvent(f"round {self.round} recorded two models")
                self._recorded = event.model_hash
            case AggregateFailed():
                self._aggregate_failed = True
            case TrainingFailed():
                self._training_failed = True
            case DeltaFetchFailed():
                self._book.fetch_failed(event.delta_hash)
            case ModelFetchFailed():
                self._fetching_model.discard(event.model_hash)
            case TxFailed() if event.kind is TxKind.FINALISE and self._finalise_predates_fallback():
                self._tx[TxKind.FINALISE] = _Tx()  # it met the reopened window: try again at its end
            case TxFailed():
                self._tx[event.kind].failed(event.reverted)

    def _finalise_predates_fallback(self) -> bool:
        """A finalise failing before the reopened round's reveal end was sent for the round
        as it stood before FallbackOpened (the machine sends none earlier)."""
        ends = self.deadlines
        return self._fallback is not None and ends is not None and self._head is not None and self._head < ends[2]

    def _clock(self, number: int) -> None:
        if self._head is None or number > self._head:
            self._head = number

    def _on_scores(self, votes: tuple[int, ...]) -> None:
        if self._scored is None or self._ballot is not None or self._abstained:
            return  # not asked, or already answered: a late duplicate
        if self.config.vote_mode is VoteMode.WHOLE_ROUND:
            if len(votes) != 1:
                raise InvalidScores("whole-round mode takes exactly one score")
            # The contract takes a sign only: a measured gain of any size is one vote.
            votes = (1 if votes[0] >= 0 else -1,)
        else:
            if len(votes) != len(self._scored) or any(v not in (1, -1) for v in votes):
                raise InvalidScores(f"expected {len(self._scored)} votes of +1 or -1")
            # A delta never received is voted 0, "not received", whatever the scorer put in
            # its place: never a reject, and never slashed. A proposer votes +1 on its own
            # proposal (it knows what it trained; the registry does not check, and a
            # self-vote is one vote of its own stake like any other).
            own = self._book.of(self.config.me)
            mine = None if own is None else own.delta_hash
            votes = tuple(
                0 if gap else 1 if digest == mine else v
                for v, gap, digest in zip(votes, self._gaps, self._scored, strict=True)
            )
        self._set_ballot(votes, self._salt_source())

    def _set_ballot(self, votes: tuple[int, ...], salt: bytes) -> None:
        if not isinstance(salt, bytes) or len(salt) != 32:
            raise InvalidConfig("the salt source must return 32 bytes")
        self._ballot = _Ballot(votes, salt, vote_digest(votes, salt, self.config.me))

    # ------------------------------------------------------------------ decisions

    def _advance(self, out: list[Action]) -> None:
        if self._open is None or self._head is None:
            return
        if self.config.is_participant:
            self._advance_proposer(out)
            self._advance_voter(out)
            self._advance_finalise(out)
        self._advance_model(out)

    def _once(self, key: str) -> bool:
        if key in self._asked:
            return False
        self._asked.add(key)
        return True

    def _send(self, kind: TxKind, action: Action, out: list[Action]) -> None:
        tx = self._tx[kind]
        if tx.may_send():
            tx.sent()
            out.append(action)

    def _advance_proposer(self, out: list[Action]) -> None:
        head, (propose_end, commit_end, _) = self._now()
        seed = self._seed
        assert seed is not None  # set with the open block
        own = self._book.of(self.config.me)
        if own is not None:  # proposed (perhaps before a restart): make sure voters have it
            data = self._book.data(own.delta_hash)
            if data is not None and head < commit_end and self._once("push"):
                out.append(PushDelta(self.round, own.delta_hash, data))
            return
        election = self._election
        if election is None:
            if head < propose_end and self._once("elect"):
                out.append(RunElection(self.round, seed))
            return
        if self.role is not Role.PROPOSER:
            # Saying so lets the propose phase close as soon as every proposal is in.
            if not self._declined and not self._closed() and self._lands_by(propose_end):
                self._send(TxKind.DECLINE, SubmitDecline(self.round, election.proof), out)
            return
        if self._own_delta is None:
            if self._base is not None and self._once("train"):
                out.append(StartTraining(self.round, self._base, seed))
            return
        digest = delta_hash(self._own_delta)
        self._send(TxKind.PROPOSE, SubmitPropose(self.round, digest, election.proof), out)
        # Voters hold a delta until its proposal lands; pushing with the transaction rather
        # than after its log saves them the confirmation wait.
        if self._once("push"):
            out.append(PushDelta(self.round, digest, self._own_delta))

    def _advance_voter(self, out: list[Action]) -> None:
        # Every participant votes: a voter, and a proposer once its proposal is on chain.
        if not self._votes or self._abstained or not self._closed():
            return
        head, (propose_end, commit_end, reveal_end) = self._now()
        proposals = self._book.ordered()
        if not proposals:
            self._abstained = NO_PROPOSALS
            return
        if head >= propose_end and head < commit_end:
            out.extend(self._book.fetch_missing(proposals))
        in_time = self._lands_by(commit_end)  # a commit sent now still lands in the window
        if self._scored is None and self._ballot is None and in_time:
            self._maybe_score(proposals, out)
        ballot = self._ballot
        if ballot is None:
            if not in_time and not self._abstained:
                self._abstained = TOO_LATE if self._base is not None else NO_BASE_MODEL
            return
        mine = self._committed.get(self.config.me)
        commit = self._tx[TxKind.COMMIT]
        if mine is None:
            # Logs come before the clock: at head >= commit_end a commit not seen never landed.
            if head >= commit_end or commit.dead or (not in_time and not commit.in_flight):
                self._abstained = COMMIT_FAILED if commit.dead else TOO_LATE
            elif self._scored is not None and len(self._scored) != len(proposals):
                self._abstained = PROPOSALS_CHANGED
            elif head >= propose_end and in_time:
                action = SubmitCommit(self.round, ballot.digest, ballot.votes, ballot.salt)
                self._send(TxKind.COMMIT, action, out)
            return
        if mine != ballot.digest:
            self._abstained = BALLOT_LOST
        elif self.config.me not in self._revealed and head >= commit_end and self._lands_by(reveal_end):
            self._send(TxKind.REVEAL, SubmitReveal(self.round, ballot.votes, ballot.salt), out)

    def _maybe_score(self, proposals: list[Proposal], out: list[Action]) -> None:
        head, (propose_end, _, _) = self._now()
        deltas = tuple(self._book.data(p.delta_hash) for p in proposals)
        gaps = tuple(d is None for d in deltas)
        if any(gaps) and head < propose_end + self.config.grace_blocks:
            return  # still waiting for stragglers
        if self._base is None:
            return
        self._scored, self._gaps = tuple(p.delta_hash for p in proposals), gaps
        whole = self.config.vote_mode is VoteMode.WHOLE_ROUND
        if whole and any(gaps):
            self._abstained = MISSING_DELTA
        elif all(gaps):
            self._abstained = NOTHING_RECEIVED  # an all-0 ballot would judge nothing
        else:
            out.append(ScoreProposals(self.round, self._base, deltas, self.config.vote_mode))

    def _advance_finalise(self, out: list[Action]) -> None:
        head, (_, _, reveal_end) = self._now()
        rank = self.config.finalise_rank(self.round)
        # Everyone may finalise; taking turns saves all but one transaction.
        turn = None if rank is None else reveal_end + FINALISE_STAGGER * rank
        if self._finalised is None and turn is not None and head >= turn:
            self._send(TxKind.FINALISE, SubmitFinalise(self.round), out)

    def _advance_model(self, out: list[Action]) -> None:
        final = self._finalised
        if final is None:
            return
        accepted = [self._book.get(i) for i in range(final.n_proposals) if final.accepted_mask >> i & 1]
        if accepted and self._model is None and all(p is not None for p in accepted):
            known = [p for p in accepted if p is not None]
            out.extend(self._book.fetch_missing(known))
            held = [self._book.data(h) for h in sorted(p.delta_hash for p in known)]
            ready = [d for d in held if d is not None]
            if self._base is not None and len(ready) == len(held) and self._once("aggregate"):
                out.append(Aggregate(self.round, self._base, tuple(ready)))
        model, recorded = self.model_hash, self._recorded
        if recorded is None:
            if model is not None and self._ticked_since_final and self.config.is_participant:
                self._send(TxKind.RECORD_MODEL, SubmitRecordModel(self.round, model), out)
            return
        if model == recorded:
            if self._once("complete"):
                self._complete = True
                out.append(RoundComplete(self.round, recorded))
            return
        if "aggregate" in self._asked and self._model is None and not self._aggregate_failed:
            return  # our own aggregate is still being computed
        if recorded not in self._fetching_model:
            self._fetching_model.add(recorded)
            out.append(FetchModel(self.round, recorded))

    # ------------------------------------------------------------------ derived views

    def _now(self) -> tuple[int, tuple[int, int, int]]:
        assert self._head is not None and self.deadlines is not None
        return self._head, self.deadlines

    def _lands_by(self, deadline: int) -> bool:
        """A transaction sent now can still land in a block <= ``deadline``."""
        assert self._head is not None
        return self._head + self.config.lag_blocks < deadline

    def _closed(self) -> bool:
        """No further proposal can land: the window is over, or the cap is reached."""
        if self.deadlines is None or self._head is None:
            return False
        full = len(self._book.ordered()) >= self.config.max_proposals
        return full or self._head >= self.deadlines[0]

    @property
    def deadlines(self) -> tuple[int, int, int] | None:
        """Last block of the propose, commit and reveal windows, as the contract has them:
        each window follows the previous one's end, and a PhaseClosed log ends it early."""
        if self._open is None:
            return None
        early = self._closed_early
        full = self._open + self.config.propose_blocks if self._fallback is None else self._fallback.last_block
        propose_end = early.get(ChainPhase.PROPOSE, full)
        commit_end = early.get(ChainPhase.COMMIT, propose_end + self.config.commit_blocks)
        reveal_end = early.get(ChainPhase.REVEAL, commit_end + self.config.reveal_blocks)
        return propose_end, commit_end, reveal_end

    @property
    def _votes(self) -> bool:
        """This node takes the voter path: not elected (or gave up), or proposed."""
        return self.role is Role.VOTER or self._book.of(self.config.me) is not None

    @property
    def gave_up(self) -> bool:
        """Elected, but the proposal did not land before the propose window closed."""
        elected = self._election is not None and (self._election.weight > 0 or self.is_fallback_proposer)
        if not elected or self._book.of(self.config.me) is not None or self._head is None:
            return False
        ended = self.deadlines is not None and not self._lands_by(self.deadlines[0])
        return ended or self._tx[TxKind.PROPOSE].dead or self._training_failed

    @property
    def is_fallback_proposer(self) -> bool:
        """The registry reopened the propose window for this node alone (its draw was the
        best of the round's declines)."""
        return self._fallback is not None and self._fallback.proposer == self.config.me

    @property
    def role(self) -> Role:
        if self._book.of(self.config.me) is not None:
            return Role.PROPOSER
        elected = self._election is not None and (self._election.weight > 0 or self.is_fallback_proposer)
        if elected and not self.gave_up:
            return Role.PROPOSER
        if self._election is not None or (
            self.deadlines is not None and self._head is not None and self._head >= self.deadlines[0]
        ):
            return Role.VOTER
        return Role.UNDECIDED

    @property
    def phase(self) -> Phase:
        if self._complete:
            return Phase.DONE
        if self._finalised is not None:
            return Phase.APPLYING
        if self.deadlines is None or self._head is None:
            return Phase.WAITING_FOR_OPEN
        propose_end, commit_end, reveal_end = self.deadlines
        for end, phase in (
            (propose_end, Phase.PROPOSING),
            (commit_end, Phase.COMMITTING),
            (reveal_end, Phase.REVEALING),
        ):
            if self._head < end:
                return phase
        return Phase.FINALISING

    @property
    def step(self) -> Step:
        me = self.config.me
        if not self.config.is_participant:
            return Step.OBSERVING
        role = self.role
        proposed = self._book.of(me) is not None
        if role is Role.PROPOSER and not proposed:
            if self._tx[TxKind.PROPOSE].in_flight:
                return Step.PROPOSING
            return Step.TRAINING if "train" in self._asked else Step.WAITING
        if role is Role.UNDECIDED:
            return Step.ELECTING if "elect" in self._asked else Step.WAITING
        for done, step in (
            (self._abstained is not None, Step.ABSTAINED),
            (me in self._revealed, Step.REVEALED),
            (self._tx[TxKind.REVEAL].in_flight, Step.REVEALING),
            (me in self._committed, Step.COMMITTED),
            (self._tx[TxKind.COMMIT].in_flight, Step.COMMITTING),
            (self._ballot is not None, Step.VOTES_READY),
            (self._scored is not None, Step.SCORING),
        ):
            if done:
                return step
        return Step.PROPOSED if proposed else Step.COLLECTING

    @property
    def head(self) -> int | None:
        return self._head

    @property
    def open_block(self) -> int | None:
        return self._open

    @property
    def seed(self) -> bytes | None:
        return self._seed

    @property
    def base_model_hash(self) -> bytes | None:
        return self._base

    @property
    def proposals(self) -> list[Proposal]:
        return self._book.ordered()

    def has_delta(self, delta_hash: bytes) -> bool:
        return self._book.has(delta_hash)

    @property
    def votes_committed(self) -> frozenset[bytes]:
        return frozenset(self._committed)

    @property
    def votes_revealed(self) -> dict[bytes, tuple[int, ...]]:
        return dict(self._revealed)

    @property
    def my_votes(self) -> tuple[int, ...] | None:
        return None if self._ballot is None else self._ballot.votes

    @property
    def abstain_reason(self) -> str | None:
        return self._abstained

    @property
    def accepted(self) -> tuple[int, ...] | None:
        """Indexes of the accepted proposals, once finalised."""
        if self._finalised is None:
            return None
        final = self._finalised
        return tuple(i for i in range(final.n_proposals) if final.accepted_mask >> i & 1)

    @property
    def model_hash(self) -> bytes | None:
        """model_r as this node holds it (model_{r-1} when nothing was accepted)."""
        if self._model is not None:
            return self._model
        if self._finalised is not None and self._finalised.accepted_mask == 0:
            return self._base
        return None

    @property
    def recorded_model_hash(self) -> bytes | None:
        return self._recorded
