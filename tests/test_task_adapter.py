"""The adapter core shared by the daemon and the simulation (tasks/adapter.py), against a
host that records what it is asked to do: no trio, no sockets, no chain."""

from __future__ import annotations

import itertools
from typing import Any, get_args

from eth_utils import keccak
from hypothesis import given
from hypothesis import strategies as st

from flockd import round as rnd
from flockd import sortition
from flockd.tasks.adapter import ActionHost, Call, TaskAdapter
from flockd.tasks.bridge import Submission, round_events, transaction

ME, P1, P2 = (bytes([i]) * 20 for i in (1, 2, 3))
INIT = keccak(b"init")
D1, D2 = b"delta of p1", b"delta of p2"
WINDOW = 2


class RecordingHost(ActionHost):
    def __init__(self) -> None:
        self.asked: list[tuple[str, Any, Any]] = []  # (method, action, what the adapter added)

    def _note(self, method: str, action: Any, extra: Any = None) -> None:
        self.asked.append((method, action, extra))

    def elect(self, action: rnd.RunElection) -> None:
        self._note("elect", action)

    def train(self, action: rnd.StartTraining) -> None:
        self._note("train", action)

    def push_delta(self, action: rnd.PushDelta) -> None:
        self._note("push_delta", action)

    def fetch_delta(self, action: rnd.FetchDelta) -> None:
        self._note("fetch_delta", action)

    def score(self, action: rnd.ScoreProposals, proposers: tuple[bytes, ...]) -> None:
        self._note("score", action, proposers)

    def aggregate(self, action: rnd.Aggregate) -> None:
        self._note("aggregate", action)

    def fetch_model(self, action: rnd.FetchModel) -> None:
        self._note("fetch_model", action)

    def commit(self, action: rnd.SubmitCommit, call: Call) -> None:
        self._note("commit", action, call)

    def transact(self, action: Submission, call: Call) -> None:
        self._note("transact", action, call)

    def delta_rejected(self, action: rnd.DeltaRejected) -> None:
        self._note("delta_rejected", action)

    def round_complete(self, action: rnd.RoundComplete) -> None:
        self._note("round_complete", action)

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.asked]


def config(rounds: int = 2) -> rnd.TaskConfig:
    return rnd.TaskConfig(
        task_id=3, me=ME, participants=(ME, P1, P2), rounds=rounds, propose_blocks=WINDOW,
        commit_blocks=WINDOW, reveal_blocks=WINDOW, max_proposals=2, vote_mode=rnd.VoteMode.PER_PROPOSAL,
        model_init_hash=INIT,
    )


def adapter(rounds: int = 2) -> tuple[TaskAdapter, RecordingHost]:
    host, counter = RecordingHost(), itertools.count()
    return TaskAdapter(config(rounds), lambda: keccak(b"%d" % next(counter)), host), host


def feed(adapter: TaskAdapter, *events: rnd.Event) -> None:
    for event in events:
        assert adapter.handle(event) is None, event


def opened(r: int, block: int) -> rnd.RoundOpened:
    return rnd.RoundOpened(r, block, keccak(b"block %d" % block))


def not_elected(r: int) -> rnd.ElectionDone:
    return rnd.ElectionDone(r, sortition.Election(b"\x05" * 80, b"\x06" * 64, 0))


SAMPLES: dict[str, rnd.Action] = {
    "elect": rnd.RunElection(0, b"s" * 32),
    "train": rnd.StartTraining(0, INIT, b"s" * 32),
    "push_delta": rnd.PushDelta(0, keccak(D1), D1),
    "fetch_delta": rnd.FetchDelta(0, P1, keccak(D1)),
    "score": rnd.ScoreProposals(0, INIT, (D1,), rnd.VoteMode.PER_PROPOSAL),
    "aggregate": rnd.Aggregate(0, INIT, (D1,)),
    "fetch_model": rnd.FetchModel(0, INIT),
    "commit": rnd.SubmitCommit(0, b"d" * 32, (1,), b"t" * 32, b"p" * 32),
    "propose": rnd.SubmitPropose(0, keccak(D1), b"p" * 80),
    "decline": rnd.SubmitDecline(0, b"p" * 80),
    "reveal": rnd.SubmitReveal(0, (1,), b"t" * 32),
    "finalise": rnd.SubmitFinalise(0),
    "record_model": rnd.SubmitRecordModel(0, INIT),
    "delta_rejected": rnd.DeltaRejected(0, P1, P2, rnd.RejectReason.WRONG_ROUND),
    "round_complete": rnd.RoundComplete(0, INIT),
    "task_complete": rnd.TaskComplete(INIT),
}


def test_every_action_the_machine_can_ask_for_has_a_route() -> None:
    assert {type(a) for a in SAMPLES.values()} == set(get_args(rnd.Action))
    node, host = adapter()
    node.dispatch(SAMPLES.values())
    routed = {type(action): method for method, action, _ in host.asked}
    transactions = ("propose", "decline", "reveal", "finalise", "record_model")
    for name, action in SAMPLES.items():
        if name == "task_complete":
            assert node.final_model_hash == INIT  # kept by the adapter, nothing to carry out
        elif name in transactions:
            assert routed[type(action)] == "transact"
        else:
            assert routed[type(action)] == name


def test_transactions_reach_the_host_translated_by_the_bridge() -> None:
    node, host = adapter()
    node.dispatch([SAMPLES["reveal"], SAMPLES["commit"]])
    assert host.asked == [
        ("transact", SAMPLES["reveal"], transaction(SAMPLES["reveal"])),  # type: ignore[arg-type]
        ("commit", SAMPLES["commit"], (rnd.TxKind.COMMIT, "commit_vote", (b"d" * 32, b"p" * 32))),
    ]


def test_a_voter_scores_with_the_proposers_in_on_chain_order() -> None:
    node, host = adapter()
    feed(node, rnd.ModelReady(-1, INIT), rnd.BlockSealed(1), opened(0, 1), not_elected(0))
    feed(node, rnd.ProposalOnChain(0, 0, P2, keccak(D2)), rnd.ProposalOnChain(0, 1, P1, keccak(D1)))
    feed(node, rnd.DeltaReceived(0, P1, D1, P1), rnd.DeltaReceived(0, P2, D2, P2))
    feed(node, *(rnd.BlockSealed(n) for n in range(2, 2 + WINDOW)))
    scored = [(action, proposers) for method, action, proposers in host.asked if method == "score"]
    assert len(scored) == 1
    action, proposers = scored[0]
    assert action.deltas == (D2, D1) and proposers == (P2, P1)


def test_an_event_the_machine_refuses_is_returned_and_carries_nothing_out() -> None:
    node, host = adapter()
    feed(node, rnd.ModelReady(-1, INIT), rnd.BlockSealed(1), opened(0, 1))
    asked = list(host.asked)
    refused = node.handle(rnd.RoundOpened(0, 2, keccak(b"another block")))
    assert isinstance(refused, rnd.ConflictingEvent)
    assert host.asked == asked


def test_the_last_round_complete_gives_the_final_model() -> None:
    node, host = adapter(rounds=1)
    feed(node, rnd.ModelReady(-1, INIT), rnd.BlockSealed(1), opened(0, 1), not_elected(0))
    feed(node, *(rnd.BlockSealed(n) for n in range(2, 8)))
    assert node.final_model_hash is None and not node.finished
    feed(node, rnd.RoundFinalisedOnChain(0, 0, 0), rnd.ModelRecordedOnChain(0, INIT), rnd.BlockSealed(8))
    assert ("round_complete", rnd.RoundComplete(0, INIT), None) in host.asked
    assert node.finished and node.final_model_hash == INIT


def test_a_replaced_machine_goes_on_and_its_replay_actions_are_carried_out() -> None:
    node, host = adapter()
    events: list[rnd.Event] = [rnd.BlockSealed(5), rnd.ModelReady(-1, INIT), opened(0, 5)]
    machine, actions = rnd.TaskMachine.replay(config(), events, lambda: b"\x00" * 32)
    node.replace(machine, actions)
    assert node.machine is machine and node.machine.current_round == 0
    assert host.methods() == ["elect"]


def test_a_node_behind_keeps_unrecorded_rounds_and_attests_them_in_order() -> None:
    """Rounds 0 to 2 were finalised, each accepting P1's delta, while no delta reached this
    node and no model was recorded; round 3 is open. When the deltas come (its fetches
    answered), the node computes model_0, model_1 and model_2 each on the one before and
    attests each: a round stays followed until its model is recorded."""
    node, host = adapter(rounds=5)
    deltas = [b"delta of round %d" % r for r in range(3)]
    feed(node, rnd.ModelReady(-1, INIT), rnd.BlockSealed(1), opened(0, 1), not_elected(0))
    block = 1
    for r, delta in enumerate(deltas):
        feed(node, rnd.ProposalOnChain(r, 0, P1, keccak(delta)))
        block += 3 * WINDOW + 1
        feed(node, rnd.BlockSealed(block), rnd.RoundFinalisedOnChain(r, 1, 1), opened(r + 1, block))
    assert {a.round for m, a, _ in host.asked if m == "fetch_delta"} == {0, 1, 2}
    models = [keccak(b"model %d" % r) for r in range(3)]
    for r, delta in enumerate(deltas):
        feed(node, rnd.DeltaReceived(r, P1, delta, P2))
    for r, model in enumerate(models):
        aggregates = [a for m, a, _ in host.asked if m == "aggregate"]
        assert [(a.round, a.base_model_hash) for a in aggregates] == [(i, ([INIT, *models])[i]) for i in range(r + 1)]
        block += 1
        feed(node, rnd.ModelReady(r, model), rnd.BlockSealed(block))
    attested = [a for m, a, _ in host.asked if m == "transact" and isinstance(a, rnd.SubmitRecordModel)]
    assert [(a.round, a.model_hash) for a in attested] == list(enumerate(models))


@given(r=st.integers(-2, 2**256), settled=st.integers(-2, 2**256))
def test_a_voters_settled_log_is_one_event_or_refused(r: int, settled: int) -> None:
    """VotersSettled: a call of a batched finalise. Any decoded uint256 gives the machine's
    event or InvalidEvent, never another exception."""
    try:
        events = round_events("VotersSettled", {"task_id": 1, "round": r, "settled": settled, "n_participants": 300})
    except rnd.InvalidEvent:
        return
    assert events == [rnd.VotersSettledOnChain(r, settled)]
