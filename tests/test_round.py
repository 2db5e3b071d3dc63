"""RoundMachine: each phase, both roles, timeouts, duplicates, reordering, bad deltas,
early close, restart, whole-round mode. Pure: no chain, no network, no training."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from eth_utils import keccak

from flockd import sortition
from flockd.round import (
    AbstainReason,
    Aggregate,
    AggregateFailed,
    BallotRestored,
    BlockSealed,
    ChainPhase,
    ConflictingEvent,
    DeclinedOnChain,
    DeltaFetchFailed,
    DeltaReceived,
    DeltaRejected,
    ElectionDone,
    Event,
    FallbackOnChain,
    FetchDelta,
    FetchModel,
    InvalidConfig,
    InvalidEvent,
    InvalidScores,
    ModelReady,
    ModelRecordedOnChain,
    Phase,
    PhaseClosedOnChain,
    ProposalOnChain,
    PushDelta,
    RejectReason,
    Role,
    RoundComplete,
    RoundFinalisedOnChain,
    RoundMachine,
    RoundOpened,
    RunElection,
    ScoreProposals,
    ScoresReady,
    StartTraining,
    Step,
    SubmitCommit,
    SubmitDecline,
    SubmitFinalise,
    SubmitPropose,
    SubmitRecordModel,
    SubmitReveal,
    TaskConfig,
    TrainingDone,
    TxFailed,
    TxKind,
    VoteCommittedOnChain,
    VoteMode,
    VoteRevealedOnChain,
    VotersSettledOnChain,
    VoterStep,
    WrongRound,
    proposals_digest,
    vote_digest,
)
from flockd.rpc.round_view import round_view

ME, P1, P2, V2 = (bytes([i]) * 20 for i in (1, 2, 3, 4))
BASE = keccak(b"model before round 0")
OPEN_HASH = keccak(b"block 10")
OPEN = 10  # propose window 11..14, commit 15..18, reveal 19..22
PROPOSE_END, COMMIT_END, REVEAL_END = 14, 18, 22
D1, D2 = b"delta from p1", b"delta from p2"
H1, H2 = keccak(D1), keccak(D2)
PROOF = b"\x07" * 80


def config(**over: Any) -> TaskConfig:
    fields: dict[str, Any] = dict(
        task_id=7,
        me=ME,
        participants=(ME, P1, P2, V2),  # sorted: ME has finalise rank 0 in round 0
        rounds=3,
        propose_blocks=4,
        commit_blocks=4,
        reveal_blocks=4,
        max_proposals=4,
        vote_mode=VoteMode.PER_PROPOSAL,
        model_init_hash=BASE,
    )
    fields.update(over)
    return TaskConfig(**fields)


def salts() -> Callable[[], bytes]:
    counter = itertools.count()
    return lambda: keccak(b"salt %d" % next(counter))


def election(weight: int) -> ElectionDone:
    return ElectionDone(0, sortition.Election(PROOF, b"\x08" * 64, weight))


class Node:
    """One RoundMachine for round 0 and everything it emitted."""

    def __init__(self, **over: Any) -> None:
        self.machine = RoundMachine(config(**over), 0, salts())
        self.actions: list[Any] = []

    def feed(self, *events: Event) -> list[Any]:
        out: list[Any] = []
        for event in events:
            out += self.machine.handle(event)
        self.actions += out
        return out

    def to(self, block: int) -> list[Any]:
        """Seal blocks up to ``block`` one by one."""
        start = (self.machine.head or 0) + 1
        return self.feed(*(BlockSealed(n) for n in range(start, block + 1)))

    def open(self, base: bool = True) -> list[Any]:
        events: list[Event] = [BlockSealed(OPEN - 1), RoundOpened(0, OPEN, OPEN_HASH)]
        if base:
            events.append(ModelReady(-1, BASE))
        return self.feed(*events, BlockSealed(OPEN))


def of(kind: type, actions: list[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def two_proposals() -> list[Event]:
    return [ProposalOnChain(0, 0, P1, H1), ProposalOnChain(0, 1, P2, H2)]


def voter_with_deltas(**over: Any) -> Node:
    node = Node(**over)
    node.open()
    node.feed(election(0), *two_proposals(), DeltaReceived(0, P1, D1, P1), DeltaReceived(0, P2, D2, P2))
    return node


# --- opening and election --------------------------------------------------------------------


def test_waits_for_the_round_to_open() -> None:
    node = Node()
    assert node.feed(BlockSealed(3), ModelReady(-1, BASE)) == []
    assert node.machine.phase is Phase.WAITING_FOR_OPEN
    assert node.machine.role is Role.UNDECIDED and node.machine.step is Step.WAITING


def test_open_asks_for_an_election_on_the_round_seed() -> None:
    node = Node()
    out = node.open()
    seed = sortition.round_seed(OPEN_HASH, 7, 0)
    assert out == [RunElection(0, seed)]
    assert node.machine.seed == seed and node.machine.phase is Phase.PROPOSING
    assert node.machine.step is Step.ELECTING
    assert node.machine.deadlines == (PROPOSE_END, COMMIT_END, REVEAL_END)


def test_a_later_round_elects_on_the_seed_its_log_carries() -> None:
    """Rounds >= 1 take the registry's chained seed from RoundOpened, not a block hash
    (which the sealer of the open block, or whoever timed finalise, could have chosen)."""
    chained = sortition.round_seed(sortition.round_seed(OPEN_HASH, 7, 0), 7, 1)
    machine = RoundMachine(config(), 1, salts())
    machine.handle(BlockSealed(OPEN - 1))
    out = machine.handle(RoundOpened(1, OPEN, keccak(b"a ground block"), chained))
    assert out == [RunElection(1, chained)] and machine.seed == chained


@pytest.mark.parametrize(
    ("head", "phase"),
    [
        (OPEN, Phase.PROPOSING),
        (PROPOSE_END - 1, Phase.PROPOSING),
        (PROPOSE_END, Phase.COMMITTING),  # a tx sent now lands in the commit window
        (COMMIT_END - 1, Phase.COMMITTING),
        (COMMIT_END, Phase.REVEALING),
        (REVEAL_END - 1, Phase.REVEALING),
        (REVEAL_END, Phase.FINALISING),
        (REVEAL_END + 50, Phase.FINALISING),
    ],
)
def test_phases_close_by_block_height(head: int, phase: Phase) -> None:
    node = Node()
    node.open()
    node.to(head)
    assert node.machine.phase is phase


# --- the proposer ----------------------------------------------------------------------------


def test_proposer_trains_proposes_pushes_and_applies() -> None:
    node = Node()
    node.open(base=False)
    assert node.feed(election(1)) == []  # no base model yet: cannot train
    assert node.machine.role is Role.PROPOSER and node.machine.step is Step.WAITING
    seed = sortition.round_seed(OPEN_HASH, 7, 0)
    assert node.feed(ModelReady(-1, BASE)) == [StartTraining(0, BASE, seed)]
    assert node.machine.step is Step.TRAINING
    own = b"my delta"
    # the delta goes out with the transaction: voters hold it until the proposal lands
    out = node.feed(TrainingDone(0, own))
    assert out == [SubmitPropose(0, keccak(own), PROOF), PushDelta(0, keccak(own), own)]
    assert node.machine.step is Step.PROPOSING
    assert node.feed(ProposalOnChain(0, 0, ME, keccak(own))) == []  # pushed once
    assert node.machine.step is Step.PROPOSED
    # A proposer votes too, on every proposal of the round, its own included.
    node.feed(ProposalOnChain(0, 1, P1, H1), DeltaReceived(0, P1, D1, P1))
    assert node.to(PROPOSE_END) == [ScoreProposals(0, BASE, (own, D1), VoteMode.PER_PROPOSAL)]
    # its own entry is +1 whatever its scorer says
    (commit,) = node.feed(ScoresReady(0, (-1, -1)))
    assert isinstance(commit, SubmitCommit) and commit.votes == (1, -1)
    node.feed(VoteCommittedOnChain(0, ME, commit.digest))
    assert node.machine.step is Step.COMMITTED
    assert node.to(COMMIT_END) == [SubmitReveal(0, (1, -1), commit.salt)]
    node.feed(VoteRevealedOnChain(0, ME, (1, -1)))
    assert node.machine.step is Step.REVEALED and node.machine.role is Role.PROPOSER
    assert node.to(REVEAL_END - 1) == []
    assert node.to(REVEAL_END) == [SubmitFinalise(0)]
    assert node.feed(RoundFinalisedOnChain(0, 1, 2)) == [Aggregate(0, BASE, (own,))]
    assert node.machine.phase is Phase.APPLYING
    model = keccak(b"model 0")
    assert node.feed(ModelReady(0, model)) == []  # attest on the next block, after the
    assert node.to(REVEAL_END + 1) == [SubmitRecordModel(0, model)]  # finalise block's logs
    assert node.feed(ModelRecordedOnChain(0, model)) == [RoundComplete(0, model)]
    assert node.machine.phase is Phase.DONE and node.machine.model_hash == model


def test_a_proposer_votes_in_whole_round_mode_by_its_score_of_the_aggregate() -> None:
    node = Node(vote_mode=VoteMode.WHOLE_ROUND)
    node.open()
    node.feed(election(1), TrainingDone(0, b"mine"), ProposalOnChain(0, 0, ME, keccak(b"mine")))
    node.feed(ProposalOnChain(0, 1, P1, H1), DeltaReceived(0, P1, D1, P1))
    (score,) = of(ScoreProposals, node.to(PROPOSE_END))
    assert score == ScoreProposals(0, BASE, (b"mine", D1), VoteMode.WHOLE_ROUND)
    (commit,) = node.feed(ScoresReady(0, (-3,)))
    assert commit.votes == (-1,)  # one vote on the round: no own entry to set


def test_a_proposer_that_cannot_score_in_time_abstains_and_still_finalises() -> None:
    node = Node()
    node.open()
    node.feed(election(1), TrainingDone(0, b"mine"), ProposalOnChain(0, 0, ME, keccak(b"mine")))
    node.to(COMMIT_END)  # the scorer never answered
    assert node.machine.step is Step.ABSTAINED and node.machine.role is Role.PROPOSER
    assert of(SubmitCommit, node.actions) == []
    assert node.to(REVEAL_END) == [SubmitFinalise(0)]


def test_proposer_that_trains_too_long_gives_up_and_votes() -> None:
    node = Node()
    node.open()
    node.feed(election(1), *two_proposals(), DeltaReceived(0, P1, D1, P1))
    node.to(PROPOSE_END)
    assert node.feed(TrainingDone(0, b"late")) == []
    assert node.machine.gave_up and node.machine.role is Role.VOTER
    node.feed(DeltaReceived(0, P2, D2, P2))
    out = node.to(PROPOSE_END + 1)
    assert of(ScoreProposals, node.actions) == [ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)]
    assert of(SubmitPropose, node.actions) == [] and out == []


def test_proposer_whose_propose_reverts_gives_up_and_votes() -> None:
    node = Node(max_proposals=2)
    node.open()
    node.feed(election(1), TrainingDone(0, b"mine"))
    node.feed(*two_proposals())  # the cap is reached by others first
    assert node.feed(TxFailed(0, TxKind.PROPOSE, "proposal cap reached")) == []
    assert node.machine.role is Role.VOTER and node.machine.gave_up
    out = node.feed(DeltaReceived(0, P1, D1, P1), DeltaReceived(0, P2, D2, P2))
    assert out == [ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)]  # the set is closed


def test_transient_tx_failure_is_retried_a_bounded_number_of_times() -> None:
    node = Node()
    node.open()
    node.feed(election(1), TrainingDone(0, b"mine"))
    sent = 1
    for _ in range(5):
        sent += len(of(SubmitPropose, node.feed(TxFailed(0, TxKind.PROPOSE, "timeout", reverted=False))))
    assert sent == 3  # MAX_TX_ATTEMPTS
    node.to(PROPOSE_END)
    assert node.machine.gave_up


# --- the voter -------------------------------------------------------------------------------


def test_voter_scores_commits_and_reveals_in_order() -> None:
    node = voter_with_deltas()
    assert node.machine.role is Role.VOTER and node.machine.step is Step.COLLECTING
    assert of(ScoreProposals, node.to(PROPOSE_END - 1)) == []  # more proposals may come
    out = node.to(PROPOSE_END)
    assert out == [ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)]
    assert node.machine.step is Step.SCORING
    (commit,) = node.feed(ScoresReady(0, (1, -1)))
    assert isinstance(commit, SubmitCommit) and commit.votes == (1, -1)
    assert commit.digest == vote_digest((1, -1), commit.salt, ME)
    assert node.machine.step is Step.COMMITTING
    assert node.feed(VoteCommittedOnChain(0, ME, commit.digest), VoteCommittedOnChain(0, V2, keccak(b"x"))) == []
    assert node.machine.step is Step.COMMITTED
    assert node.machine.votes_committed == {ME, V2}
    assert node.to(COMMIT_END - 1) == []
    assert node.to(COMMIT_END) == [SubmitReveal(0, (1, -1), commit.salt)]
    node.feed(VoteRevealedOnChain(0, ME, (1, -1)))
    assert node.machine.step is Step.REVEALED
    assert node.to(REVEAL_END) == [SubmitFinalise(0)]
    # Proposal 0 accepted: model_0 = base + delta 1.
    assert node.feed(RoundFinalisedOnChain(0, 0b01, 2)) == [Aggregate(0, BASE, (D1,))]
    assert node.machine.accepted == (0,)


def test_aggregate_takes_accepted_deltas_in_canonical_order() -> None:
    node = voter_with_deltas()
    node.to(REVEAL_END)
    (aggregate,) = node.feed(RoundFinalisedOnChain(0, 0b11, 2))
    assert aggregate == Aggregate(0, BASE, tuple(d for _, d in sorted([(H1, D1), (H2, D2)])))


def test_silent_proposer_times_out_and_is_voted_not_received() -> None:
    node = Node()
    node.open()
    node.feed(election(0), *two_proposals(), DeltaReceived(0, P1, D1, P1))
    out = node.to(PROPOSE_END)
    assert out == [FetchDelta(0, P2, H2, ())]  # chase it, but do not score yet
    grace = config().grace_blocks
    assert of(ScoreProposals, node.to(PROPOSE_END + grace - 1)) == []
    (score,) = node.to(PROPOSE_END + grace)
    assert score == ScoreProposals(0, BASE, (D1, None), VoteMode.PER_PROPOSAL)
    (commit,) = node.feed(ScoresReady(0, (1, 1)))
    assert commit.votes == (1, 0)  # never received: its own vote, not a reject
    # The straggler arriving now changes nothing about the vote.
    assert node.feed(DeltaReceived(0, P2, D2, P2)) == []
    assert node.machine.has_delta(H2)


def test_silent_voter_and_late_scores_time_out() -> None:
    node = voter_with_deltas()
    node.to(PROPOSE_END)
    node.to(COMMIT_END)  # the scorer never answered in time
    assert node.machine.step is Step.ABSTAINED
    assert node.feed(ScoresReady(0, (1, 1))) == []
    # Other voters committed and never revealed: finalise still comes at the deadline.
    node.feed(VoteCommittedOnChain(0, V2, keccak(b"v2")))
    assert node.to(REVEAL_END) == [SubmitFinalise(0)]


def test_voter_without_proposals_abstains_and_keeps_the_model() -> None:
    node = Node()
    node.open()
    node.feed(election(0))
    node.to(PROPOSE_END)
    assert node.machine.abstain_reason is AbstainReason.NO_PROPOSALS
    node.to(REVEAL_END)
    out = node.feed(RoundFinalisedOnChain(0, 0, 0), ModelRecordedOnChain(0, BASE))
    assert out == [RoundComplete(0, BASE)]  # the contract recorded model_{-1} again
    assert of(SubmitRecordModel, node.actions) == []


def test_all_deltas_missing_abstains_without_scoring() -> None:
    node = Node()
    node.open()
    node.feed(election(0), *two_proposals())
    node.to(PROPOSE_END + config().grace_blocks)
    assert of(SubmitCommit, node.actions) == [] and of(ScoreProposals, node.actions) == []
    assert node.machine.abstain_reason is AbstainReason.NOTHING_RECEIVED


def test_finalise_takes_turns_by_rank() -> None:
    node = Node(me=V2)  # sorted participants: ME, P1, P2, V2 -> rank 3 in round 0
    node.open()
    node.feed(ElectionDone(0, sortition.Election(PROOF, b"\x08" * 64, 0)))
    assert of(SubmitFinalise, node.to(REVEAL_END + 5)) == []
    assert node.to(REVEAL_END + 6) == [SubmitFinalise(0)]
    assert node.feed(TxFailed(0, TxKind.FINALISE, "wrong phase")) == []
    assert node.to(REVEAL_END + 9) == []


def test_a_finalise_that_settled_a_batch_goes_on_and_other_turns_wait() -> None:
    """A task of more than SETTLE_BATCH participants is finalised over several calls: the
    node whose call settled a batch sends the next at once; the others keep their turns."""
    first = Node()  # rank 0 in round 0
    first.open()
    first.feed(ElectionDone(0, sortition.Election(PROOF, b"\x08" * 64, 0)))
    assert of(SubmitFinalise, first.to(REVEAL_END)) == [SubmitFinalise(0)]
    assert first.feed(VotersSettledOnChain(0, 256)) == [SubmitFinalise(0)]
    assert first.feed(VotersSettledOnChain(0, 512)) == [SubmitFinalise(0)]
    assert first.feed(RoundFinalisedOnChain(0, 0, 0)) == []
    later = Node(me=V2)  # rank 3: its turn is 6 blocks after the reveal window
    later.open()
    later.feed(ElectionDone(0, sortition.Election(PROOF, b"\x08" * 64, 0)))
    later.to(REVEAL_END + 1)
    assert of(SubmitFinalise, later.feed(VotersSettledOnChain(0, 256))) == []
    assert of(SubmitFinalise, later.to(REVEAL_END + 6)) == [SubmitFinalise(0)]


def test_observer_follows_without_acting() -> None:
    node = Node(participants=(P1, P2, V2))
    assert node.open() == []
    node.feed(*two_proposals(), DeltaReceived(0, P1, D1, P1), DeltaReceived(0, P2, D2, P2))
    node.to(REVEAL_END + 10)
    assert node.machine.step is Step.OBSERVING
    assert node.feed(RoundFinalisedOnChain(0, 0b10, 2)) == [Aggregate(0, BASE, (D2,))]
    node.feed(ModelReady(0, keccak(b"m")))
    assert node.to(REVEAL_END + 12) == []  # observers do not attest


# --- early close -----------------------------------------------------------------------------


def test_full_proposal_set_is_scored_before_the_window_closes() -> None:
    node = voter_with_deltas(max_proposals=2)
    # The cap is reached and every delta is in: no more proposals can come.
    assert of(ScoreProposals, node.actions) == [ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)]
    assert node.machine.phase is Phase.PROPOSING
    assert node.feed(ScoresReady(0, (1, 1))) == []  # the contract's commit window is not open
    assert node.machine.step is Step.VOTES_READY
    (commit,) = node.to(PROPOSE_END)  # first block whose successor is in the window
    assert isinstance(commit, SubmitCommit)


# --- bad, duplicate and out-of-order input ---------------------------------------------------


def test_delta_that_does_not_match_its_hash_is_rejected_and_refetched() -> None:
    node = Node()
    node.open()
    node.feed(election(0), *two_proposals(), DeltaReceived(0, P1, D1, P1))
    node.to(PROPOSE_END)
    assert of(FetchDelta, node.actions) == [FetchDelta(0, P2, H2, ())]
    forged = DeltaReceived(0, P2, b"forged", V2)
    assert node.feed(forged) == [
        DeltaRejected(0, P2, V2, RejectReason.HASH_MISMATCH),
        FetchDelta(0, P2, H2, (V2,)),  # ask again, not from the liar
    ]
    assert not node.machine.has_delta(H2)
    assert node.feed(DeltaReceived(0, P2, D2, P1)) == [
        ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)
    ]


def test_forged_delta_buffered_before_its_proposal_is_rejected_when_it_lands() -> None:
    node = Node()
    node.open()
    node.feed(election(0))
    assert node.feed(DeltaReceived(0, P1, b"forged", V2), DeltaReceived(0, P2, D2, P2)) == []
    out = node.feed(*two_proposals())
    assert out == [DeltaRejected(0, P1, V2, RejectReason.HASH_MISMATCH)]
    assert node.machine.has_delta(H2) and not node.machine.has_delta(H1)


def test_delta_of_a_non_proposer_is_rejected_once_proposals_close() -> None:
    node = Node()
    node.open()
    node.feed(election(0), *two_proposals())
    node.to(PROPOSE_END)
    assert node.feed(DeltaReceived(0, V2, b"whatever", V2)) == [
        DeltaRejected(0, V2, V2, RejectReason.NOT_PROPOSED)
    ]


def test_unverified_delta_buffer_is_bounded() -> None:
    node = Node(max_proposals=1)  # buffer of 4
    node.open()
    node.feed(election(0))
    out = node.feed(*(DeltaReceived(0, V2, b"junk %d" % i, V2) for i in range(5)))
    # one pending delta per sender: V2's first waits, the other four are refused
    assert out == [DeltaRejected(0, V2, V2, RejectReason.BUFFER_FULL)] * 4


def test_relayed_delta_under_the_wrong_proposer_still_counts_by_hash() -> None:
    node = Node()
    node.open()
    node.feed(election(0), *two_proposals())
    assert node.feed(DeltaReceived(0, V2, D1, V2)) == []
    assert node.machine.has_delta(H1)


def voter_script() -> list[Event]:
    return [
        BlockSealed(OPEN - 1),
        RoundOpened(0, OPEN, OPEN_HASH),
        ModelReady(-1, BASE),
        BlockSealed(OPEN),
        election(0),
        ProposalOnChain(0, 0, P1, H1),
        DeltaReceived(0, P1, D1, P1),
        BlockSealed(11),
        ProposalOnChain(0, 1, P2, H2),
        BlockSealed(12),
        DeltaReceived(0, P2, D2, P2),
        *(BlockSealed(n) for n in range(13, PROPOSE_END + 1)),
        ScoresReady(0, (1, -1)),
    ]


def test_duplicated_events_change_nothing() -> None:
    once, twice = Node(), Node()
    for event in voter_script():
        once.feed(event)
        twice.feed(event, event)
    assert once.actions == twice.actions
    assert round_view(once.machine) == round_view(twice.machine)


def test_out_of_order_events_are_buffered_or_harmless() -> None:
    node = Node()
    # A delta and the scorer's stray answer before the round is even open.
    assert node.feed(DeltaReceived(0, P1, D1, P1), ScoresReady(0, (1,))) == []
    node.open(base=False)
    node.feed(election(0), ProposalOnChain(0, 0, P1, H1))
    assert node.machine.has_delta(H1)
    node.to(PROPOSE_END)  # no base model yet: nothing to score against
    assert of(ScoreProposals, node.actions) == []
    assert node.feed(ModelReady(-1, BASE)) == [ScoreProposals(0, BASE, (D1,), VoteMode.PER_PROPOSAL)]


def test_base_model_that_never_arrives_means_abstaining() -> None:
    node = Node()
    node.open(base=False)
    node.feed(election(0), ProposalOnChain(0, 0, P1, H1), DeltaReceived(0, P1, D1, P1))
    node.to(COMMIT_END)
    assert node.machine.abstain_reason is AbstainReason.NO_BASE_MODEL


def test_contradicting_chain_events_raise() -> None:
    node = voter_with_deltas()
    with pytest.raises(ConflictingEvent):
        node.feed(ProposalOnChain(0, 0, P2, H2))
    with pytest.raises(ConflictingEvent):
        node.feed(RoundOpened(0, OPEN + 1, OPEN_HASH))
    node.feed(RoundFinalisedOnChain(0, 1, 2))
    with pytest.raises(ConflictingEvent):
        node.feed(RoundFinalisedOnChain(0, 2, 2))


def test_events_of_another_round_raise() -> None:
    node = Node()
    with pytest.raises(WrongRound):
        node.feed(ProposalOnChain(1, 0, P1, H1))
    with pytest.raises(WrongRound):
        node.feed(ModelReady(3, BASE))  # rounds 0 (result) and -1 (base) only


@pytest.mark.parametrize(
    "make",
    [
        lambda: BlockSealed(-1),
        lambda: RoundOpened(0, 1, b"short"),
        lambda: ProposalOnChain(0, 0, b"\x01" * 19, H1),
        lambda: DeltaReceived(0, P1, "text", P1),  # type: ignore[arg-type]
        lambda: ScoresReady(0, (True,)),
        lambda: ScoresReady(0, (10**18 + 1,)),
        lambda: RoundFinalisedOnChain(0, 0b100, 2),
        lambda: RoundFinalisedOnChain(0, 0, 17),
        lambda: ModelReady(-2, BASE),
        lambda: TxFailed(0, "propose", "x"),  # type: ignore[arg-type]
        lambda: BallotRestored(0, (1,), b"salt"),
    ],
)
def test_malformed_events_are_rejected(make: Callable[[], Event]) -> None:
    with pytest.raises(InvalidEvent):
        make()


def test_bad_config_is_rejected() -> None:
    for over in (
        {"me": b"short"},
        {"participants": (ME, ME)},
        {"max_proposals": 17},
        {"commit_blocks": 0},
        {"delta_grace_blocks": 4},
        {"model_init_hash": b""},
    ):
        with pytest.raises(InvalidConfig):
            config(**over)
    with pytest.raises(InvalidConfig):
        RoundMachine(config(), 3, salts())


def test_scores_that_do_not_fit_raise() -> None:
    node = voter_with_deltas()
    node.to(PROPOSE_END)
    with pytest.raises(InvalidScores):
        node.feed(ScoresReady(0, (1,)))
    with pytest.raises(InvalidScores):
        node.feed(ScoresReady(0, (1, 0)))


# --- whole-round mode ------------------------------------------------------------------------


def test_whole_round_mode_commits_one_score() -> None:
    node = voter_with_deltas(vote_mode=VoteMode.WHOLE_ROUND)
    (score,) = node.to(PROPOSE_END)
    assert score == ScoreProposals(0, BASE, (D1, D2), VoteMode.WHOLE_ROUND)
    with pytest.raises(InvalidScores):
        node.feed(ScoresReady(0, (1, 1)))
    (commit,) = node.feed(ScoresReady(0, (-(3 * 10**16),)))
    assert commit.votes == (-1,)  # the sign of the measured gain: a magnitude is no vote
    node.feed(VoteCommittedOnChain(0, ME, commit.digest))
    assert node.to(COMMIT_END) == [SubmitReveal(0, commit.votes, commit.salt)]


def test_whole_round_mode_votes_a_small_gain_as_plus_one() -> None:
    node = voter_with_deltas(vote_mode=VoteMode.WHOLE_ROUND)
    node.to(PROPOSE_END)
    (commit,) = node.feed(ScoresReady(0, (3 * 10**15,)))
    assert commit.votes == (1,)
    assert commit.digest == vote_digest((1,), commit.salt, ME)
    node.feed(VoteCommittedOnChain(0, ME, commit.digest))
    assert node.to(COMMIT_END) == [SubmitReveal(0, commit.votes, commit.salt)]


def test_whole_round_mode_abstains_when_a_delta_is_missing() -> None:
    node = Node(vote_mode=VoteMode.WHOLE_ROUND)
    node.open()
    node.feed(election(0), *two_proposals(), DeltaReceived(0, P1, D1, P1))
    node.to(COMMIT_END)
    assert node.machine.step is Step.ABSTAINED and of(SubmitCommit, node.actions) == []


# --- models after finalise -------------------------------------------------------------------


def test_model_recorded_by_the_majority_wins_over_a_local_one() -> None:
    node = voter_with_deltas()
    node.to(REVEAL_END)
    node.feed(RoundFinalisedOnChain(0, 0b01, 2))
    mine, theirs = keccak(b"mine"), keccak(b"theirs")
    assert node.feed(ModelRecordedOnChain(0, theirs)) == []  # our aggregate is still running
    assert node.feed(ModelReady(0, mine)) == [FetchModel(0, theirs)]
    assert node.feed(ModelReady(0, theirs)) == [RoundComplete(0, theirs)]


def test_failed_aggregate_falls_back_to_the_recorded_model() -> None:
    node = voter_with_deltas()
    node.to(REVEAL_END)
    node.feed(RoundFinalisedOnChain(0, 0b11, 2))
    theirs = keccak(b"theirs")
    assert node.feed(ModelRecordedOnChain(0, theirs)) == []  # waiting for our aggregate
    assert node.feed(AggregateFailed(0, "delta 1 does not fit the model")) == [FetchModel(0, theirs)]
    assert node.feed(ModelReady(0, theirs)) == [RoundComplete(0, theirs)]


def test_missing_accepted_delta_is_fetched_before_aggregating() -> None:
    node = Node()
    node.open()
    node.feed(election(1), TrainingDone(0, b"mine"), ProposalOnChain(0, 0, ME, keccak(b"mine")))
    node.feed(ProposalOnChain(0, 1, P1, H1))
    node.to(REVEAL_END + 10)
    # chased once already, to vote on it; that fetch failed
    assert of(FetchDelta, node.actions) == [FetchDelta(0, P1, H1, ())]
    node.feed(DeltaFetchFailed(0, H1))
    assert node.feed(RoundFinalisedOnChain(0, 0b10, 2)) == [FetchDelta(0, P1, H1, ())]
    assert node.feed(DeltaReceived(0, P1, D1, V2)) == [Aggregate(0, BASE, (D1,))]


# --- restart ---------------------------------------------------------------------------------


def chain_log_until_commit(digest: bytes) -> list[Event]:
    return [
        RoundOpened(0, OPEN, OPEN_HASH),
        *two_proposals(),
        VoteCommittedOnChain(0, ME, digest),
        VoteCommittedOnChain(0, V2, keccak(b"v2")),
    ]


def test_restart_in_the_reveal_window_reveals_the_saved_ballot() -> None:
    salt = keccak(b"saved salt")
    digest = vote_digest((1, 1), salt, ME)
    events: list[Event] = [
        BlockSealed(COMMIT_END + 1),
        *chain_log_until_commit(digest),
        ModelReady(-1, BASE),
        BallotRestored(0, (1, 1), salt),
        DeltaReceived(0, P1, D1, ME),
    ]
    machine, actions = RoundMachine.replay(config(), 0, events, salts())
    assert actions == [SubmitReveal(0, (1, 1), salt)]  # no election, no training, no scoring
    assert machine.phase is Phase.REVEALING and machine.role is Role.VOTER
    assert machine.votes_committed == {ME, V2}


def test_a_commit_names_the_proposals_its_ballot_judged() -> None:
    node = voter_with_deltas()
    node.to(PROPOSE_END)
    node.feed(ScoresReady(0, (1, -1)))
    (commit,) = of(SubmitCommit, node.actions)
    assert commit.proposals_digest == proposals_digest([H1, H2])  # slot order, as the registry chains them
    assert commit.proposals_digest != proposals_digest([H2, H1])


def restarted_before_commit(saved: BallotRestored, proposals: list[Event]) -> tuple[RoundMachine, list[Any]]:
    events: list[Event] = [
        BlockSealed(PROPOSE_END + 1),
        RoundOpened(0, OPEN, OPEN_HASH),
        *proposals,
        ModelReady(-1, BASE),
        saved,
        DeltaReceived(0, P1, D1, ME),
        DeltaReceived(0, P2, D2, ME),
    ]
    return RoundMachine.replay(config(), 0, events, salts())


def test_a_saved_ballot_is_committed_when_it_judged_the_proposals_on_chain() -> None:
    salt = keccak(b"saved salt")
    saved = BallotRestored(0, (1, -1), salt, proposals_digest([H1, H2]))
    _, actions = restarted_before_commit(saved, two_proposals())
    assert of(SubmitCommit, actions) == [SubmitCommit(0, vote_digest((1, -1), salt, ME), (1, -1), salt, saved.proposals)]


@pytest.mark.parametrize("judged", [proposals_digest([H1, H2]), None], ids=["reordered", "not-saved"])
def test_a_saved_ballot_of_other_proposals_is_never_committed(judged: bytes | None) -> None:
    """After a reorganisation the canonical chain may hold the same proposals in another
    order: the ballot saved before it judged other slots. So does one saved without
    what it judged. The node abstains: the registry would refuse the commit anyway."""
    saved = BallotRestored(0, (1, -1), keccak(b"saved salt"), judged)
    reordered = [ProposalOnChain(0, 0, P2, H2), ProposalOnChain(0, 1, P1, H1)]
    machine, actions = restarted_before_commit(saved, reordered)
    assert of(SubmitCommit, actions) == [] and machine.step is Step.ABSTAINED


def test_a_saved_ballot_whose_commitment_landed_is_revealed_whatever_it_judged() -> None:
    # unopened, the commitment would be slashed: the reveal opens it even without what it judged
    salt = keccak(b"saved salt")
    events: list[Event] = [
        BlockSealed(COMMIT_END + 1),
        *chain_log_until_commit(vote_digest((1, 1), salt, ME)),
        ModelReady(-1, BASE),
        BallotRestored(0, (1, 1), salt, None),
    ]
    _, actions = RoundMachine.replay(config(), 0, events, salts())
    assert actions == [SubmitReveal(0, (1, 1), salt)]


def test_restart_without_the_ballot_cannot_reveal() -> None:
    events: list[Event] = [
        BlockSealed(COMMIT_END + 1),
        *chain_log_until_commit(keccak(b"lost")),
        ModelReady(-1, BASE),
    ]
    machine, actions = RoundMachine.replay(config(), 0, events, salts())
    assert of(SubmitReveal, actions) == [] and machine.step is Step.ABSTAINED


def test_restarted_proposer_pushes_its_stored_delta_again() -> None:
    own = b"mine"
    events: list[Event] = [
        BlockSealed(PROPOSE_END + 1),
        RoundOpened(0, OPEN, OPEN_HASH),
        ProposalOnChain(0, 0, ME, keccak(own)),
        ModelReady(-1, BASE),
        DeltaReceived(0, ME, own, ME),
    ]
    machine, actions = RoundMachine.replay(config(), 0, events, salts())
    # and, the proposals being closed, scores them (its own is the only one) to vote
    assert actions == [PushDelta(0, keccak(own), own), ScoreProposals(0, BASE, (own,), VoteMode.PER_PROPOSAL)]
    assert machine.role is Role.PROPOSER and machine.step is Step.SCORING


def test_replay_rebuilds_the_same_picture_as_living_through_it() -> None:
    live = Node()
    script = voter_script()
    live.feed(*script)
    (commit,) = of(SubmitCommit, live.actions)
    live.feed(VoteCommittedOnChain(0, ME, commit.digest))
    chain_only = [
        e
        for e in script
        if isinstance(e, (RoundOpened, ProposalOnChain, ModelReady, DeltaReceived))
    ]
    events: list[Event] = [
        BlockSealed(PROPOSE_END),
        *chain_only,
        VoteCommittedOnChain(0, ME, commit.digest),
        BallotRestored(0, commit.votes, commit.salt),
    ]
    rebuilt, actions = RoundMachine.replay(config(), 0, events, salts())
    assert actions == []  # committed already; the reveal window is not open yet
    for field in ("phase", "role", "proposals", "votes_committed", "my_votes", "model_hash"):
        assert getattr(rebuilt, field) == getattr(live.machine, field), field


def test_status_is_json_ready() -> None:
    import json

    node = voter_with_deltas()
    node.to(PROPOSE_END)
    status = round_view(node.machine)
    assert json.loads(json.dumps(status)) == status
    assert status["phase"] == "committing" and status["step"] == "scoring"
    assert [p["received"] for p in status["proposals"]] == [True, True]


# --- the hashes agree with the contract and the codec ---------------------------------------


def test_delta_hash_is_the_codecs() -> None:
    from flockd.fl.codec import delta_hash as codec_hash
    from flockd.round import delta_hash

    assert delta_hash(D1) == codec_hash(D1)


# --- early phase close (PhaseClosed logs) ----------------------------------------------------


def test_a_voter_declines_once_so_the_propose_window_can_close() -> None:
    node = Node()
    node.open()
    out = node.feed(election(0))
    assert out == [SubmitDecline(0, PROOF)]  # the proof enters the fallback draw
    assert node.feed(BlockSealed(OPEN + 1)) == []  # in flight: not sent twice
    assert node.feed(DeclinedOnChain(0, ME)) == []
    assert of(SubmitDecline, node.to(PROPOSE_END)) == []


def test_the_fallback_proposer_trains_and_proposes_in_the_reopened_window() -> None:
    """Nobody was elected; this node's decline had the best draw, so the registry reopens the
    propose window for it alone (FallbackOpened): it becomes the round's proposer."""
    node = Node()
    node.open()
    node.feed(election(0), DeclinedOnChain(0, ME))
    assert node.machine.role is Role.VOTER
    out = node.feed(FallbackOnChain(0, ME, OPEN + 3 + 4))  # propose_blocks = 4, from block OPEN + 3
    assert node.machine.role is Role.PROPOSER and node.machine.is_fallback_proposer
    assert node.machine.deadlines == (OPEN + 7, OPEN + 7 + 4, OPEN + 7 + 4 + 4)
    (train,) = of(StartTraining, out)
    (propose,) = of(SubmitPropose, node.feed(TrainingDone(0, D1)))
    assert propose == SubmitPropose(0, H1, PROOF)


def test_a_timed_out_empty_round_revives_for_voters_when_the_fallback_opens() -> None:
    node = Node()
    node.open()
    node.feed(election(0), DeclinedOnChain(0, ME))
    node.to(PROPOSE_END)
    assert node.machine.voter_state is AbstainReason.NO_PROPOSALS
    status = round_view(node.machine)
    assert status["step"] == "abstained" and status["abstained"] == "no proposals"
    (finalise,) = of(SubmitFinalise, node.to(REVEAL_END))
    # that finalise opened the fallback window instead of ending the round
    node.feed(FallbackOnChain(0, P1, REVEAL_END + 1 + 4))
    assert node.machine.voter_state is VoterStep.COLLECTING and node.machine.role is Role.VOTER
    assert round_view(node.machine)["abstained"] is None
    assert node.machine.phase is Phase.PROPOSING
    node.feed(ProposalOnChain(0, 0, P1, H1), DeltaReceived(0, P1, D1, P1))
    out = node.feed(PhaseClosedOnChain(0, ChainPhase.PROPOSE, REVEAL_END + 3), BlockSealed(REVEAL_END + 3))
    assert of(ScoreProposals, out) == [ScoreProposals(0, BASE, (D1,), VoteMode.PER_PROPOSAL)]
    # a finalise that was still in flight meets the reopened window and reverts: not final
    node.feed(TxFailed(0, TxKind.FINALISE, "wrong phase"))
    # and it finalises the revived round at its turn, once more
    end = node.machine.deadlines[2]
    assert of(SubmitFinalise, node.to(end)) == [SubmitFinalise(0)]


def test_a_proposer_does_not_decline() -> None:
    node = Node()
    node.open()
    out = node.feed(election(1))
    assert of(SubmitDecline, out) == [] and of(StartTraining, out)


def test_a_reverted_decline_is_not_retried() -> None:
    node = Node()
    node.open()
    node.feed(election(0))
    assert node.feed(TxFailed(0, TxKind.DECLINE, "wrong phase"), BlockSealed(OPEN + 1)) == []


def test_voter_scores_and_commits_as_soon_as_the_propose_window_closes_early() -> None:
    node = voter_with_deltas()
    assert of(ScoreProposals, node.to(OPEN + 2)) == []  # more proposals may come
    out = node.feed(PhaseClosedOnChain(0, ChainPhase.PROPOSE, OPEN + 2))
    assert out == [ScoreProposals(0, BASE, (D1, D2), VoteMode.PER_PROPOSAL)]
    assert node.machine.deadlines == (OPEN + 2, OPEN + 6, OPEN + 10)
    assert of(SubmitCommit, node.feed(ScoresReady(0, (1, -1)))) != []
    assert node.machine.phase is Phase.COMMITTING


def test_voter_reveals_and_finalises_as_soon_as_windows_close_early() -> None:
    node = voter_with_deltas()
    node.feed(BlockSealed(OPEN + 1), PhaseClosedOnChain(0, ChainPhase.PROPOSE, OPEN + 1))
    commit = of(SubmitCommit, node.feed(ScoresReady(0, (1, 1))))[0]
    node.feed(BlockSealed(OPEN + 2), VoteCommittedOnChain(0, ME, commit.digest))
    assert of(SubmitReveal, node.to(OPEN + 2)) == []  # the commit window is still open
    out = node.feed(PhaseClosedOnChain(0, ChainPhase.COMMIT, OPEN + 2))
    assert of(SubmitReveal, out) == [SubmitReveal(0, (1, 1), commit.salt)]
    node.feed(BlockSealed(OPEN + 3), VoteRevealedOnChain(0, ME, (1, 1)))
    out = node.feed(PhaseClosedOnChain(0, ChainPhase.REVEAL, OPEN + 3))
    assert of(SubmitFinalise, out) == [SubmitFinalise(0)]  # ME has finalise rank 0
    assert node.machine.deadlines == (OPEN + 1, OPEN + 2, OPEN + 3)


def test_phase_closed_is_checked() -> None:
    with pytest.raises(InvalidEvent):
        PhaseClosedOnChain(0, 3, 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):
        DeclinedOnChain(0, b"short")


# --- a clock that lags the chain (acting `confirmations` deep) ------------------------------


def test_with_a_lagging_clock_a_voter_commits_only_while_the_commit_can_land() -> None:
    node = voter_with_deltas(lag_blocks=2)
    out = node.to(PROPOSE_END)
    assert of(ScoreProposals, out)
    out = node.feed(ScoresReady(0, (1, 1)))
    assert of(SubmitCommit, out)  # head 14 + lag 2 < 18: lands by the commit deadline
    late = voter_with_deltas(lag_blocks=2)
    late.to(COMMIT_END - 2)  # 16 + 2 = 18: a commit sent now lands after the window
    assert of(SubmitCommit, late.feed(ScoresReady(0, (1, 1)))) == []
    assert late.machine.abstain_reason is AbstainReason.TOO_LATE


def test_a_commit_in_flight_is_not_given_up_before_the_deadline() -> None:
    node = voter_with_deltas(lag_blocks=2)
    node.to(PROPOSE_END)
    commit = of(SubmitCommit, node.feed(ScoresReady(0, (1, -1))))[0]
    node.to(COMMIT_END - 1)  # too late to send one, but ours is already on its way
    assert node.machine.abstain_reason is None
    out = node.feed(VoteCommittedOnChain(0, ME, commit.digest), BlockSealed(COMMIT_END))
    assert node.machine.abstain_reason is None and ME in node.machine.votes_committed
    assert of(SubmitReveal, out) == [SubmitReveal(0, (1, -1), commit.salt)]  # 18 + 2 < 22


def test_a_commitment_that_lands_after_its_resend_reverted_is_revealed() -> None:
    # Seen at 32 daemons: a reorganisation rebuilt the machine, which sent its (saved)
    # commit again while the first was back in the pool; the resend reverted "already
    # committed", the voter gave up, and was slashed for the commitment it never opened.
    node = voter_with_deltas()
    node.to(PROPOSE_END)
    commit = of(SubmitCommit, node.feed(ScoresReady(0, (1, -1))))[0]
    node.feed(TxFailed(0, TxKind.COMMIT, "already committed"))
    assert node.machine.abstain_reason is AbstainReason.COMMIT_FAILED
    node.feed(VoteCommittedOnChain(0, ME, commit.digest))
    assert node.machine.abstain_reason is None and node.machine.step is Step.COMMITTED
    assert of(SubmitReveal, node.to(COMMIT_END)) == [SubmitReveal(0, (1, -1), commit.salt)]


def test_a_commitment_sent_before_a_rebuild_is_revealed_when_it_lands() -> None:
    salt = keccak(b"saved salt")
    digest = vote_digest((1, 1), salt, ME)
    events: list[Event] = [
        BlockSealed(COMMIT_END - 1),  # too late to send the commit again (a lag of 2)
        RoundOpened(0, OPEN, OPEN_HASH),
        *two_proposals(),
        ModelReady(-1, BASE),
        BallotRestored(0, (1, 1), salt),
    ]
    machine, actions = RoundMachine.replay(config(lag_blocks=2), 0, events, salts())
    assert of(SubmitCommit, actions) == [] and machine.abstain_reason is AbstainReason.TOO_LATE
    out = machine.handle(VoteCommittedOnChain(0, ME, digest)) + machine.handle(BlockSealed(COMMIT_END))
    assert of(SubmitReveal, out) == [SubmitReveal(0, (1, 1), salt)]


def test_a_commitment_this_node_cannot_open_stays_abstained() -> None:
    node = voter_with_deltas()
    node.to(PROPOSE_END)
    node.feed(ScoresReady(0, (1, -1)))
    node.feed(TxFailed(0, TxKind.COMMIT, "already committed"))
    node.feed(VoteCommittedOnChain(0, ME, keccak(b"a ballot this node no longer holds")))
    assert node.machine.abstain_reason is AbstainReason.COMMIT_FAILED
    assert of(SubmitReveal, node.to(COMMIT_END)) == []


def test_with_a_lagging_clock_no_decline_is_sent_that_would_land_too_late() -> None:
    node = Node(lag_blocks=2)
    node.open()
    node.to(PROPOSE_END - 2)
    assert of(SubmitDecline, node.feed(election(0))) == []
