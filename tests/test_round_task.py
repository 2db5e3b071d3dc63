"""TaskMachine: routing by round, overlapping rounds, model hand-over, missed models."""

from __future__ import annotations

import itertools
import json
from typing import Any

from eth_utils import keccak

from flockd import sortition
from flockd.round import (
    Aggregate,
    BlockSealed,
    DeltaFetchFailed,
    DeltaReceived,
    DeltaRejected,
    ElectionDone,
    Event,
    FetchDelta,
    FetchModel,
    ModelFetchFailed,
    ModelReady,
    ModelRecordedOnChain,
    Phase,
    ProposalOnChain,
    RejectReason,
    Role,
    RoundComplete,
    RoundFinalisedOnChain,
    RoundOpened,
    RunElection,
    StartTraining,
    SubmitDecline,
    TaskComplete,
    TaskConfig,
    TaskMachine,
    TrainingFailed,
    VoteMode,
)
from flockd.rpc.round_view import task_view

ME, P1, V2 = (bytes([i]) * 20 for i in (1, 2, 3))
INIT = keccak(b"init")
D1 = b"delta of p1"
H1 = keccak(D1)


def task(rounds: int = 2) -> TaskMachine:
    config = TaskConfig(
        task_id=3,
        me=ME,
        participants=(ME, P1, V2),
        rounds=rounds,
        propose_blocks=2,
        commit_blocks=2,
        reveal_blocks=2,
        max_proposals=2,
        vote_mode=VoteMode.PER_PROPOSAL,
        model_init_hash=INIT,
    )
    counter = itertools.count()
    return TaskMachine(config, lambda: keccak(b"%d" % next(counter)))


def feed(machine: TaskMachine, *events: Event) -> list[Any]:
    out: list[Any] = []
    for event in events:
        out += machine.handle(event)
    return out


def opened(r: int, block: int) -> RoundOpened:
    return RoundOpened(r, block, keccak(b"block %d" % block))


def elected(r: int, weight: int) -> ElectionDone:
    return ElectionDone(r, sortition.Election(b"\x05" * 80, b"\x06" * 64, weight))


def round_seed(machine: TaskMachine, r: int) -> bytes:
    live = machine.machine(r)
    assert live is not None and live.seed is not None
    return live.seed


def test_missing_initial_model_is_fetched() -> None:
    machine = task()
    out = feed(machine, BlockSealed(1), opened(0, 1))
    assert FetchModel(-1, INIT) in out
    assert feed(machine, ModelReady(-1, INIT), elected(0, 1)) == [
        StartTraining(0, INIT, sortition.round_seed(keccak(b"block 1"), 3, 0))
    ]


def test_rounds_overlap_and_hand_the_model_over() -> None:
    machine = task()
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1), elected(0, 0))
    feed(machine, ProposalOnChain(0, 0, P1, H1), DeltaReceived(0, P1, D1, P1))
    feed(machine, *(BlockSealed(n) for n in range(2, 8)))
    # Finalise of round 0 and the opening of round 1 share block 8.
    out = feed(machine, RoundFinalisedOnChain(0, 1, 1), opened(1, 8), BlockSealed(8))
    assert Aggregate(0, INIT, (D1,)) in out
    assert any(isinstance(a, RunElection) and a.round == 1 for a in out)
    assert machine.current_round == 1
    # Round 1's proposer waits for model_0 before training.
    assert feed(machine, elected(1, 1)) == []
    model_0 = keccak(b"model 0")
    assert StartTraining(1, model_0, round_seed(machine, 1)) in feed(machine, ModelReady(0, model_0))
    assert machine.machine(0) is not None  # still applying
    assert feed(machine, BlockSealed(9), ModelRecordedOnChain(0, model_0)) == [RoundComplete(0, model_0)]
    feed(machine, BlockSealed(10))
    assert machine.machine(0) is None  # done and superseded: forgotten
    assert machine.model_hash == model_0


def test_round_without_accepted_proposals_passes_the_base_on() -> None:
    machine = task()
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1), elected(0, 0))
    feed(machine, *(BlockSealed(n) for n in range(2, 8)))
    out = feed(machine, RoundFinalisedOnChain(0, 0, 0), ModelRecordedOnChain(0, INIT), opened(1, 8))
    assert RoundComplete(0, INIT) in out
    assert feed(machine, elected(1, 1)) == [StartTraining(1, INIT, round_seed(machine, 1))]


def test_last_round_completes_the_task_once() -> None:
    machine = task(rounds=1)
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1), elected(0, 0))
    feed(machine, *(BlockSealed(n) for n in range(2, 8)))
    out = feed(machine, RoundFinalisedOnChain(0, 0, 0), ModelRecordedOnChain(0, INIT), BlockSealed(8))
    assert out == [RoundComplete(0, INIT), TaskComplete(INIT)]
    assert machine.finished and feed(machine, BlockSealed(9)) == []


def test_deltas_of_rounds_not_followed_are_rejected_and_the_next_one_is_buffered() -> None:
    machine = task(rounds=3)
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1), elected(0, 0))
    assert feed(machine, DeltaReceived(2, P1, D1, P1)) == [
        DeltaRejected(2, P1, P1, RejectReason.WRONG_ROUND)
    ]
    # Round 1 is next: its delta may outrun this node's view of the chain.
    assert feed(machine, DeltaReceived(1, P1, D1, P1)) == []
    assert machine.machine(1) is not None and machine.machine(1).phase is Phase.WAITING_FOR_OPEN  # type: ignore[union-attr]
    feed(machine, opened(1, 8), ProposalOnChain(1, 0, P1, H1))
    assert machine.machine(1).has_delta(H1)  # type: ignore[union-attr]


def test_replay_after_missing_rounds_fetches_the_newest_recorded_model() -> None:
    model_0 = keccak(b"model 0")
    events: list[Event] = [
        BlockSealed(9),
        ModelReady(-1, INIT),
        ModelRecordedOnChain(0, model_0),
        opened(1, 8),
    ]
    machine, actions = TaskMachine.replay(task().config, events, lambda: b"\x00" * 32)
    assert FetchModel(0, model_0) in actions
    assert any(isinstance(a, RunElection) for a in actions)
    feed(machine, elected(1, 1))
    assert isinstance(feed(machine, ModelReady(0, model_0))[0], StartTraining)


def test_task_status_is_json_ready() -> None:
    machine = task()
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1))
    status = task_view(machine)
    assert json.loads(json.dumps(status)) == status
    assert status["current_round"] == 0 and status["live_rounds"][0]["step"] == "electing"


# -- failures of the node's own work, as events ----------------------------------------------


def test_a_failed_training_gives_up_proposing_and_declines() -> None:
    machine = task()
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1))
    out = feed(machine, elected(0, 1))
    assert any(isinstance(a, StartTraining) for a in out)
    assert feed(machine, TrainingFailed(0, "loss went to NaN")) == [SubmitDecline(0, b"\x05" * 80)]
    live = machine.machine(0)
    assert live is not None and live.role is Role.VOTER


def test_a_failed_delta_fetch_is_asked_again_while_it_matters() -> None:
    machine = task()
    feed(machine, ModelReady(-1, INIT), BlockSealed(1), opened(0, 1), elected(0, 0))
    feed(machine, ProposalOnChain(0, 0, P1, H1))
    assert FetchDelta(0, P1, H1) in feed(machine, BlockSealed(3))  # the proposal set is closed
    assert feed(machine, DeltaFetchFailed(0, H1)) == [FetchDelta(0, P1, H1)]  # asked again
    feed(machine, BlockSealed(5))  # the commit window is over: the delta no longer matters
    assert feed(machine, DeltaFetchFailed(0, H1)) == []
    # ...until the proposal is accepted: the node needs it for model_0
    assert FetchDelta(0, P1, H1) in feed(machine, RoundFinalisedOnChain(0, 1, 1))


def test_a_failed_model_fetch_is_asked_again() -> None:
    machine = task()
    out = feed(machine, BlockSealed(1), opened(0, 1))
    assert FetchModel(-1, INIT) in out
    assert feed(machine, BlockSealed(2)) == []
    assert feed(machine, ModelFetchFailed(-1, INIT)) == [FetchModel(-1, INIT)]
