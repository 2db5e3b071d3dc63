"""RoundMachine's explicit state: each track's value as a round goes, the transition
tables, and that no order of a round's events moves a track off its table."""

from __future__ import annotations

import contextlib

import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from test_round import (
    BASE,
    COMMIT_END,
    D1,
    D2,
    H1,
    H2,
    ME,
    OPEN,
    OPEN_HASH,
    P1,
    P2,
    PROPOSE_END,
    REVEAL_END,
    Node,
    config,
    election,
    salts,
    voter_with_deltas,
)

from flockd.round import (
    AbstainReason,
    AggregateFailed,
    BallotRestored,
    BlockSealed,
    DeltaReceived,
    ElectionDone,
    Event,
    FallbackOnChain,
    FetchModel,
    IllegalMove,
    ModelFetchFailed,
    ModelReady,
    ModelRecordedOnChain,
    ModelStep,
    Phase,
    ProposalOnChain,
    ProposerStep,
    Role,
    RoundComplete,
    RoundError,
    RoundFinalisedOnChain,
    RoundMachine,
    RoundOpened,
    ScoresReady,
    Step,
    SubmitDecline,
    TrainingDone,
    TrainingFailed,
    TxFailed,
    TxKind,
    TxState,
    VoteCommittedOnChain,
    VoteMode,
    VoteRevealedOnChain,
    VoterStep,
    vote_digest,
)
from flockd.round.tracks import MODEL_MOVES, PROPOSER_MOVES, VOTER_MOVES, moved
from flockd.rpc.round_view import round_view

MINE = b"mine"


def test_every_track_value_has_a_row_and_every_move_stays_in_its_track() -> None:
    voter_values = {*VoterStep, *AbstainReason}
    for table, values in (
        (PROPOSER_MOVES, set(ProposerStep)),
        (VOTER_MOVES, voter_values),
        (MODEL_MOVES, set(ModelStep)),
    ):
        assert set(table) == values
        for old, targets in table.items():
            assert targets <= values and old not in targets


def test_a_move_off_the_table_is_refused() -> None:
    assert moved(MODEL_MOVES, ModelStep.WAITING, ModelStep.AGGREGATING) is ModelStep.AGGREGATING
    with pytest.raises(IllegalMove, match="DONE"):
        moved(MODEL_MOVES, ModelStep.DONE, ModelStep.AGGREGATING)
    assert not issubclass(IllegalMove, RoundError)  # a bug, never taken for a refused event


def test_a_proposer_moves_along_its_track_and_its_transaction_lands() -> None:
    node = Node()
    assert node.machine.proposer_step is ProposerStep.IDLE
    node.open()
    assert node.machine.proposer_step is ProposerStep.ELECTING
    node.feed(election(1))
    assert node.machine.proposer_step is ProposerStep.TRAINING
    node.feed(TrainingDone(0, MINE))
    assert node.machine.proposer_step is ProposerStep.PUSHED
    assert node.machine.tx_state(TxKind.PROPOSE) is TxState.IN_FLIGHT
    node.feed(ProposalOnChain(0, 0, ME, keccak(MINE)))
    assert node.machine.tx_state(TxKind.PROPOSE) is TxState.LANDED
    assert node.machine.voter_state is VoterStep.COLLECTING and node.machine.step is Step.PROPOSED


def test_failed_training_ends_the_proposer_track_and_the_node_declines_and_votes() -> None:
    node = Node()
    node.open()
    node.feed(election(1))
    out = node.feed(TrainingFailed(0, "out of memory"))
    assert node.machine.proposer_step is ProposerStep.TRAINING_FAILED
    assert node.machine.gave_up and node.machine.role is Role.VOTER
    assert out == [SubmitDecline(0, election(1).election.proof)]
    assert node.feed(TrainingFailed(0, "again")) == []  # answered already: nothing moves


def test_a_failed_aggregate_moves_the_model_track_to_fetching_the_recorded_model() -> None:
    node = voter_with_deltas()
    node.to(REVEAL_END)
    node.feed(RoundFinalisedOnChain(0, 0b11, 2))
    assert node.machine.model_step is ModelStep.AGGREGATING
    theirs = keccak(b"theirs")
    node.feed(ModelRecordedOnChain(0, theirs))
    assert node.machine.fetching_model is None  # its own aggregate may still agree
    assert node.feed(AggregateFailed(0, "delta 1 does not fit the model")) == [FetchModel(0, theirs)]
    assert node.machine.model_step is ModelStep.AGGREGATE_FAILED and node.machine.fetching_model == theirs
    assert node.feed(ModelFetchFailed(0, theirs)) == [FetchModel(0, theirs)]  # asked again
    assert node.feed(ModelReady(0, theirs)) == [RoundComplete(0, theirs)]
    assert node.machine.model_step is ModelStep.DONE and node.machine.phase is Phase.DONE


def test_a_replayed_round_resumes_its_tracks_from_the_chain_and_the_saved_ballot() -> None:
    salt = keccak(b"saved salt")
    digest = vote_digest((1, 1), salt, ME)
    events: list[Event] = [
        BlockSealed(COMMIT_END + 1),
        RoundOpened(0, OPEN, OPEN_HASH),
        ProposalOnChain(0, 0, ME, keccak(MINE)),
        ProposalOnChain(0, 1, P1, H1),
        VoteCommittedOnChain(0, ME, digest),
        ModelReady(-1, BASE),
        BallotRestored(0, (1, 1), salt),
        DeltaReceived(0, ME, MINE, ME),
    ]
    machine, _ = RoundMachine.replay(config(), 0, events, salts())
    # no election was asked; its delta is not pushed again so late (past the commit window)
    assert machine.proposer_step is ProposerStep.IDLE and machine.role is Role.PROPOSER
    assert machine.voter_state is VoterStep.VOTES_READY
    assert machine.tx_state(TxKind.COMMIT) is TxState.LANDED  # its commit's log, replayed
    assert machine.tx_state(TxKind.REVEAL) is TxState.IN_FLIGHT and machine.step is Step.REVEALING


def test_an_unasked_answer_moves_no_track() -> None:
    node = voter_with_deltas()
    assert node.feed(AggregateFailed(0, "nothing was asked"), ScoresReady(0, (1, 1))) == []
    assert node.machine.model_step is ModelStep.WAITING
    assert node.machine.voter_state is VoterStep.COLLECTING and node.machine.my_votes is None


def test_a_late_ballot_abstains_with_its_reason() -> None:
    node = voter_with_deltas()
    node.to(COMMIT_END)  # the scorer never answered
    assert node.machine.abstain_reason is AbstainReason.TOO_LATE
    assert round_view(node.machine)["abstained"] == "votes not ready before the commit window closed"


# --- no order of a round's events moves a track off its table --------------------------------

SALT = b"\x05" * 32
MODEL = keccak(b"model 0")

ROUND_EVENTS: list[Event] = [
    RoundOpened(0, OPEN, OPEN_HASH),
    ModelReady(-1, BASE),
    election(1),
    TrainingDone(0, MINE),
    TrainingFailed(0, "diverged"),
    TxFailed(0, TxKind.PROPOSE, "timeout", reverted=False),
    ProposalOnChain(0, 0, ME, keccak(MINE)),
    ProposalOnChain(0, 1, P1, H1),
    ProposalOnChain(0, 2, P2, H2),
    DeltaReceived(0, P1, D1, P1),
    DeltaReceived(0, P2, D2, P2),
    FallbackOnChain(0, ME, PROPOSE_END + 3),
    ScoresReady(0, (1, -1, 1)),
    ScoresReady(0, (1, -1)),
    ScoresReady(0, (-5,)),
    BallotRestored(0, (1, 1, -1), SALT),
    TxFailed(0, TxKind.COMMIT, "dropped", reverted=False),
    TxFailed(0, TxKind.COMMIT, "reverted"),
    VoteCommittedOnChain(0, ME, b"\x0a" * 32),
    VoteRevealedOnChain(0, P1, (1, 1, 1)),
    TxFailed(0, TxKind.FINALISE, "reverted"),
    RoundFinalisedOnChain(0, 0b111, 3),
    AggregateFailed(0, "does not fit"),
    ModelRecordedOnChain(0, MODEL),
    ModelFetchFailed(0, MODEL),
    ModelReady(0, MODEL),
]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    order=st.permutations(range(len(ROUND_EVENTS))),
    dropped=st.sets(st.integers(0, len(ROUND_EVENTS) - 1), max_size=6),
    ticks=st.lists(st.integers(OPEN - 1, REVEAL_END + 8), min_size=len(ROUND_EVENTS), max_size=len(ROUND_EVENTS)),
    weight=st.sampled_from((0, 1)),
    mode=st.sampled_from(VoteMode),
)
def test_no_order_of_a_rounds_events_moves_a_track_off_its_table(
    order: list[int], dropped: set[int], ticks: list[int], weight: int, mode: VoteMode
) -> None:
    machine = RoundMachine(config(vote_mode=mode), 0, salts())
    events = [election(weight) if isinstance(e, ElectionDone) else e for e in ROUND_EVENTS]
    for i, tick in zip(order, sorted(ticks), strict=True):
        for event in (BlockSealed(tick), events[i]):
            if event is events[i] and i in dropped:
                continue
            # refused input (scores of the wrong length, say) moves nothing; IllegalMove is no
            # RoundError and fails the test
            with contextlib.suppress(RoundError):
                machine.handle(event)
        # every view can be read in every state
        assert machine.phase in Phase and machine.role in Role and machine.step in Step
