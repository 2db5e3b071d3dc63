"""The daemon's task runner (tasks/runner.py: the trio shell around the shared TaskAdapter,
with its executor and chain feed) against a scripted chain, without sockets.

The runner is the daemon's: its real TaskMachine, its real Store on disk, its failure
events, replay and reorg handling. Only its seams are scripted (tests/fake_task_chain.py):
the chain (blocks the test seals, transactions logged in the next block), the peers
(each serving from its own Store) and the learning (arithmetic).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import trio
from eth_utils import keccak
from fake_task_chain import INIT_HASH, ArithmeticWork, ScriptedChain, ScriptedPeers
from held_fsync import HeldFsync

from flockd import round as rnd
from flockd import sortition
from flockd.chain.client.registry import TaskParams
from flockd.fl.checkpoint import model_hash
from flockd.round import vote_digest
from flockd.store import Store
from flockd.tasks import runner as runner_module
from flockd.tasks.runner import NodeContext, TaskRunner, round_history

ME, P1, V2 = (bytes([i]) * 20 for i in (1, 2, 3))
TASK = 1
D1 = b"good delta of p1"
H1 = keccak(D1)
WINDOW = 4  # propose, commit and reveal blocks
PARAMS = TaskParams(
    recipe="arithmetic", recipe_hash=keccak(b"spec"), model_init_hash=INIT_HASH, rounds=2, min_participants=3,
    min_stake=1, stake_unit=1, expected_proposers=1, max_proposals=4, propose_blocks=WINDOW,
    commit_blocks=WINDOW, reveal_blocks=WINDOW, reward_pool=0,
)


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "POLL_SECONDS", 0.005)
    monkeypatch.setattr(runner_module, "FETCH_RETRY_SECONDS", 0.01)


class Node:
    """One runner's world: its chain, peers, store and work."""

    def __init__(self, tmp: Path, chain: ScriptedChain | None = None) -> None:
        self.tmp = tmp
        self.chain = chain or ScriptedChain(ME, TASK)
        self.peers = ScriptedPeers()
        self.store = Store(tmp / "me")
        self.work = ArithmeticWork()
        for address in (P1, V2):
            self.peers.add(address, Store(tmp / address.hex()[:6]))

    def runner(
        self, confirmations: int = 0, params: TaskParams = PARAMS,
        head_moved: Callable[[], Awaitable[None]] | None = None,
    ) -> TaskRunner:
        ctx = NodeContext(
            network=self.peers, registry=None, store=self.store, address=ME,  # type: ignore[arg-type]
            vrf_secret=keccak(b"vrf of me"), confirmations=confirmations, head_moved=head_moved,
        )
        return TaskRunner(ctx, TASK, None, params, [ME, P1, V2], self.work, chain=self.chain)  # type: ignore[arg-type]

    def peer_store(self, address: bytes) -> Store:
        return self.peers.stores[address]


async def until(check: Callable[[], bool], what: str) -> None:
    with trio.fail_after(20):  # a hang guard, not a timing assertion
        while not check():
            await trio.sleep(0.005)


def proposal(chain: ScriptedChain, r: int, index: int, proposer: bytes, digest: bytes) -> tuple[str, dict]:
    return chain.log("Proposed", r, proposer="0x" + proposer.hex(), index=index, delta_hash=digest)


async def vote_on_one_proposal(node: Node, runner: TaskRunner, *, push: bool = True) -> int:
    """Round 0 opens; P1 proposes D1; the runner (a voter) scores it and commits. Returns
    the round's open block."""
    chain = node.chain
    opened = chain.open_round(0)
    await until(lambda: "decline" in chain.sent_fns(0), "the voter to decline")
    chain.seal(proposal(chain, 0, 0, P1, H1))
    if push:
        runner.on_delta_push(rnd.DeltaReceived(0, P1, D1, P1))
    chain.seal_until(opened + WINDOW)
    await until(lambda: "commit_vote" in chain.sent_fns(0), "the commit")
    chain.seal()  # the commit lands
    return opened


async def run_while_voting(node: Node, runner: TaskRunner) -> None:
    """The runner runs while it votes on round 0 (vote_on_one_proposal), then stops."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await vote_on_one_proposal(node, runner)
        nursery.cancel_scope.cancel()


async def test_a_moved_head_wakes_the_chain_feed_before_its_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "POLL_SECONDS", 3600.0)  # one poll at the start, then none
    moved = [trio.Event()]

    async def head_moved() -> None:
        await moved[0].wait()

    node = Node(tmp_path)
    runner = node.runner(head_moved=head_moved)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await until(lambda: runner.feed.rebuild_wanted is None, "the first poll")
        node.chain.open_round(0)
        moved[0].set()  # as ChainService.wait_head_moved's waiters are woken
        moved[0] = trio.Event()
        await until(lambda: "decline" in node.chain.sent_fns(0), "the voter to decline")
        nursery.cancel_scope.cancel()


def ballots(store: Store) -> list[dict]:
    return store.history(TASK, log="ballots")


async def test_a_failed_aggregate_takes_the_recorded_model(tmp_path: Path) -> None:
    node = Node(tmp_path)
    chain, runner = node.chain, node.runner()
    node.work.fail_aggregate = True
    recorded = node.peer_store(P1).put_model({"w": np.ones(4, dtype=np.float32)})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        opened = await vote_on_one_proposal(node, runner)
        chain.seal_until(opened + 2 * WINDOW)
        await until(lambda: "reveal_vote" in chain.sent_fns(0), "the reveal")
        chain.seal_until(opened + 3 * WINDOW)
        chain.seal(chain.log("RoundFinalised", 0, accepted_mask=1, n_proposals=1))
        await until(lambda: runner.counters.get("action_failures") == 1, "the aggregate to fail")
        chain.seal(chain.log("ModelRecorded", 0, model_hash=recorded))
        await until(lambda: bool(node.store.history(TASK)), "round 0 to complete")
        nursery.cancel_scope.cancel()
    assert node.store.history(TASK)[0]["model_hash"] == "0x" + recorded.hex()
    assert node.store.has_model(recorded)
    assert "record_model" not in chain.sent_fns(0)  # it could not compute model_0: no attesting
    assert runner.error is None


async def test_a_voter_keeps_the_deltas_it_scored_to_serve_them(tmp_path: Path) -> None:
    node = Node(tmp_path)
    runner = node.runner()
    await run_while_voting(node, runner)
    assert node.work.scored == [(D1,)]
    assert node.store.get_delta(H1) == D1  # what the fetch handler serves to other voters


async def test_a_failed_training_declines_and_votes(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.chain.stake = (1, 1)  # every stake unit drawn: elected for sure
    node.work.fail_training = True
    runner = node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        node.chain.open_round(0)
        await until(lambda: "decline" in node.chain.sent_fns(0), "the failed proposer to decline")
        nursery.cancel_scope.cancel()
    assert "propose" not in node.chain.sent_fns(0)
    assert runner.counters.get("action_failures") == 1
    live = runner.machine.machine(0)
    assert live is not None and live.role.value == "voter"


async def test_a_missing_delta_is_fetched_again_from_every_peer(tmp_path: Path) -> None:
    """The proposer withholds its delta and nobody has it at first: the fetch fails, is
    an event, and is asked again; once another voter holds it, the runner gets it there."""
    node = Node(tmp_path)
    chain, runner = node.chain, node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        opened = chain.open_round(0)
        await until(lambda: "decline" in chain.sent_fns(0), "the voter to decline")
        chain.seal(proposal(chain, 0, 0, P1, H1))
        chain.seal_until(opened + WINDOW)
        await until(lambda: runner.counters.get("action_failures") >= 2, "fetches to fail, twice")
        node.peer_store(V2).put_delta(D1)  # a voter that verified it serves it
        await until(lambda: "commit_vote" in chain.sent_fns(0), "the commit")
        nursery.cancel_scope.cancel()
    assert node.work.scored == [(D1,)]
    assert ballots(node.store)[-1]["votes"] == [1]


async def test_an_unexpected_error_stops_the_runner_and_says_so(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.work.score_bug = True
    runner = node.runner()
    with pytest.raises(BaseExceptionGroup) as caught:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner.run)
                await vote_on_one_proposal(node, runner)
    assert caught.group_contains(RuntimeError, match="a bug in the scorer", depth=None)
    assert runner.error == "RuntimeError: a bug in the scorer"
    assert runner.status()["error"] == runner.error
    assert runner.done.is_set()


async def test_restarted_between_commit_and_reveal_it_reveals_its_saved_ballot(tmp_path: Path) -> None:
    node = Node(tmp_path)
    chain = node.chain
    chain.seal_until(50)  # the task's history starts late: the scan must not begin at 0
    first = node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.run)
        opened = await vote_on_one_proposal(node, first)
        nursery.cancel_scope.cancel()  # killed after its commit landed
    committed = chain.sent[chain.sent_fns().index("commit_vote")].args[0]
    chain.seal_until(opened + 2 * WINDOW)  # the reveal window is open
    chain.log_scans.clear()
    second = node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(second.run)
        await until(lambda: "reveal_vote" in chain.sent_fns(0), "the restarted node to reveal")
        nursery.cancel_scope.cancel()
    reveal = chain.sent[chain.sent_fns().index("reveal_vote")]
    votes, salt = reveal.args
    assert list(votes) == [1]
    assert vote_digest(tuple(votes), salt, ME) == committed
    assert min(first for first, _ in chain.log_scans) == opened


@pytest.mark.parametrize("lag", [0, 2])
async def test_a_reorg_across_a_round_boundary_rebuilds_from_the_canonical_chain(tmp_path: Path, lag: int) -> None:
    """``lag``: the runner acts on logs that many blocks deep (the daemon's confirmations);
    the reorg replaces blocks it had already acted on."""
    node = Node(tmp_path)
    chain, runner = node.chain, node.runner(confirmations=lag)

    def round_one_seed() -> bytes | None:
        live = runner.machine.machine(1)
        return None if live is None else live.seed

    def boundary(block: int) -> None:
        chain.seal(
            chain.log("RoundFinalised", 0, accepted_mask=0, n_proposals=0),
            chain.log("ModelRecorded", 0, model_hash=INIT_HASH),
            chain.log("RoundOpened", 1, open_block=block),
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        opened = chain.open_round(0)
        chain.seal_until(opened + lag)
        await until(lambda: "decline" in chain.sent_fns(0), "the voter to decline")
        end = opened + 3 * WINDOW
        chain.seal_until(end)
        boundary(end + 1)  # on branch 0 round 1 opens right after round 0's reveal window
        chain.seal_until(end + 1 + lag)
        seed_a = sortition.round_seed(chain.hash_of(end + 1), TASK, 1)
        await until(lambda: round_one_seed() == seed_a, "round 1 to open on branch 0")
        chain.fork(end + 1)  # branch 1: round 0 is finalised one block later
        chain.seal()
        boundary(end + 2)
        chain.seal_until(end + 2 + lag)
        seed_b = sortition.round_seed(chain.hash_of(end + 2), TASK, 1)
        await until(lambda: round_one_seed() == seed_b, "round 1 to be rebuilt on branch 1")
        live = runner.machine.machine(1)
        assert live is not None and live.deadlines is not None
        assert live.deadlines[0] == end + 2 + WINDOW
        nursery.cancel_scope.cancel()
    assert runner.counters.get("reorgs") == 1
    assert runner.error is None


async def test_a_node_without_peers_does_not_act_on_its_blocks(tmp_path: Path) -> None:
    node = Node(tmp_path)
    online = node.peers.online[:]
    node.peers.online.clear()
    chain, runner = node.chain, node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        chain.open_round(0)
        chain.seal_until(3)
        await until(lambda: runner.isolated, "the runner to notice it has no peers")
        await trio.sleep(0.05)  # several polls
        assert chain.sent == [] and runner.machine.current_round is None
        node.peers.online[:] = online
        await until(lambda: "decline" in chain.sent_fns(0), "the reconnected node to act")
        nursery.cancel_scope.cancel()


async def test_a_reverted_commit_is_an_event_and_the_voter_abstains(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.chain.reverts["commit_vote"] = "wrong phase"
    runner = node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await vote_on_one_proposal(node, runner)
        await until(lambda: runner.counters.get("action_failures") == 1, "the revert to reach the machine")
        live = runner.machine.machine(0)
        await until(lambda: live is not None and live.abstain_reason is not None, "the voter to abstain")
        nursery.cancel_scope.cancel()
    assert node.chain.sent_fns(0).count("commit_vote") == 1  # a revert is final
    assert runner.error is None


async def test_chain_reads_that_fail_are_retried(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.chain.down = True
    runner = node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        node.chain.open_round(0)
        await until(lambda: node.chain.failed_reads >= 3, "reads to fail")
        assert node.chain.sent == []
        node.chain.down = False
        await until(lambda: "decline" in node.chain.sent_fns(0), "the runner to carry on")
        nursery.cancel_scope.cancel()
    assert runner.error is None


# -- the round history: one line per finalised round, written once -------------------------

THREE_ROUNDS = dataclasses.replace(PARAMS, rounds=3)


def model_of(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(4, value, dtype=np.float32)}


def finish_round(chain: ScriptedChain, r: int, recorded: bytes | None, *, accepted: int = 0) -> None:
    """Round r's windows pass on chain, it is finalised with ``accepted`` proposals (P1's
    deltas ``round_delta(r, i)``) and its model recorded (not yet: ``recorded`` None);
    round r+1 opens in the finalising block."""
    opened = next(args["open_block"] for _, logs in chain.blocks for name, args in logs
                  if name == "RoundOpened" and args["round"] == r)
    chain.seal_until(opened + 3 * WINDOW)
    also = [proposal(chain, r, i, P1, keccak(round_delta(r, i))) for i in range(accepted)]
    if also:
        chain.seal(*also)
    number = chain.height + 1
    finalised = chain.log("RoundFinalised", r, accepted_mask=(1 << accepted) - 1, n_proposals=accepted)
    model = [] if recorded is None else [chain.log("ModelRecorded", r, model_hash=recorded)]
    chain.seal(finalised, *model, chain.log("RoundOpened", r + 1, open_block=number))


def round_delta(r: int, index: int) -> bytes:
    return b"delta %d %d" % (r, index)


def rounds_written(store: Store) -> list[int]:
    return [int(line["round"]) for line in round_history(store.history(TASK))]


async def run_until(runner: TaskRunner, check: Callable[[], bool], what: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await until(check, what)
        nursery.cancel_scope.cancel()


async def test_rounds_whose_models_a_late_node_fetched_are_in_its_history_once(tmp_path: Path) -> None:
    """The node starts (or restarts) two rounds late: it replays only from round 1's open
    block and fetches models_0 and _1 instead of computing them. Both rounds are finalised:
    both get their line, once, also after another restart; the task finishes on model_2."""
    node = Node(tmp_path)
    chain = node.chain
    models = [node.peer_store(P1).put_model(model_of(v)) for v in (1.0, 2.0)]
    chain.open_round(0)
    finish_round(chain, 0, models[0], accepted=1)
    finish_round(chain, 1, models[1], accepted=1)
    first = node.runner(params=THREE_ROUNDS)
    await run_until(first, lambda: len(node.store.history(TASK)) >= 2, "rounds 0 and 1 to be written")
    await trio.sleep(0.05)  # several polls: nothing more is written
    assert len(node.store.history(TASK)) == 2  # one line each
    lines = round_history(node.store.history(TASK))
    assert [line["round"] for line in lines] == [0, 1]
    assert [line["model_hash"] for line in lines] == ["0x" + m.hex() for m in models]
    assert [(line["proposals"], line["accepted"]) for line in lines] == [(1, 1), (1, 1)]
    second = node.runner(params=THREE_ROUNDS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(second.run)
        finish_round(chain, 2, models[1])
        await until(lambda: second.done.is_set(), "the task to finish")
    assert len(node.store.history(TASK)) == 3
    assert rounds_written(node.store) == [0, 1, 2]
    assert second.final_model_hash == models[1]
    assert second.error is None


class SlowEvaluation(ArithmeticWork):
    """evaluate_test waits (in its worker thread) until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.evaluating = 0

    def evaluate_test(self, state: dict[str, np.ndarray]) -> dict[str, float]:
        self.evaluating += 1
        self.release.wait(20)
        return super().evaluate_test(state)


async def test_a_reorg_while_a_round_line_is_written_does_not_write_it_twice(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.work = SlowEvaluation()
    chain, runner = node.chain, node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        chain.open_round(0)
        finish_round(chain, 0, INIT_HASH)
        await until(lambda: node.work.evaluating == 1, "round 0's line to be under way")
        top = chain.height
        logs = chain.blocks[top][1]
        chain.fork(top)  # the same logs in another block: the runner rebuilds
        chain.seal(*logs)
        await until(lambda: runner.counters.get("reorgs") == 1, "the reorg")
        await until(lambda: node.work.evaluating == 2, "the rebuilt machine to complete round 0 again")
        node.work.release.set()
        await until(lambda: bool(node.store.history(TASK)), "round 0's line")
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert len(node.store.history(TASK)) == 1
    assert runner.error is None


async def test_a_round_finalised_otherwise_after_a_reorg_gets_the_canonical_line(tmp_path: Path) -> None:
    """A node that finalised a round on a fork of its own (nothing accepted) learns after the
    reorg that the canonical chain accepted a proposal: its history says what the chain says."""
    node = Node(tmp_path)
    chain, runner = node.chain, node.runner()
    canonical = node.peer_store(P1).put_model(model_of(1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        chain.open_round(0)
        fork_at = chain.height + 1
        finish_round(chain, 0, INIT_HASH)
        await until(lambda: bool(node.store.history(TASK)), "round 0's line on the fork")
        chain.fork(fork_at)
        finish_round(chain, 0, canonical, accepted=1)
        await until(lambda: node.store.history(TASK)[-1]["model_hash"] == "0x" + canonical.hex(),
                    "round 0's canonical line")
        nursery.cancel_scope.cancel()
    lines = round_history(node.store.history(TASK))
    assert [(line["round"], line["accepted"]) for line in lines] == [(0, 1)]


async def test_a_round_finalised_otherwise_before_the_replayed_rounds_gets_the_canonical_line(
    tmp_path: Path,
) -> None:
    """As above, but the canonical chain is two rounds further when the node rejoins it: the
    round its fork decided is older than the rounds it replays."""
    node = Node(tmp_path)
    chain, runner = node.chain, node.runner(params=THREE_ROUNDS)
    models = [node.peer_store(P1).put_model(model_of(v)) for v in (1.0, 2.0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        chain.open_round(0)
        fork_at = chain.height + 1
        finish_round(chain, 0, INIT_HASH)
        await until(lambda: bool(node.store.history(TASK)), "round 0's line on the fork")
        chain.fork(fork_at)
        finish_round(chain, 0, models[0], accepted=1)
        finish_round(chain, 1, models[1], accepted=1)
        await until(lambda: rounds_written(node.store) == [0, 1], "round 1's line")
        await until(lambda: round_history(node.store.history(TASK))[0]["model_hash"] == "0x" + models[0].hex(),
                    "round 0's canonical line")
        nursery.cancel_scope.cancel()
    lines = round_history(node.store.history(TASK))
    assert [(line["round"], line["accepted"]) for line in lines] == [(0, 1), (1, 1)]


# -- finalised rounds whose models are not recorded yet --------------------------------------

FIVE_ROUNDS = dataclasses.replace(PARAMS, rounds=5)


async def keep_sealing(chain: ScriptedChain) -> None:
    """The other nodes go on sealing while this one catches up."""
    while True:
        chain.seal()
        await trio.sleep(0.01)


def attested(chain: ScriptedChain) -> list[tuple[int, bytes]]:
    return [(s.round, s.args[0]) for s in chain.sent if s.fn == "record_model"]


async def test_a_node_back_after_rounds_without_a_recorded_model_computes_and_attests_each(
    tmp_path: Path,
) -> None:
    """Rounds 1 to 3 were finalised while the node was down, each accepting one of P1's
    deltas, but too few nodes attested their models for one to be recorded: the chain
    waits for nodes like this one. Restarted in round 4, the node replays those rounds
    from the chain, fetches their deltas (V2 scored them and serves them; P1 is gone),
    computes model_1, model_2 and model_3 each on the one before, and attests them in
    round order."""
    node = Node(tmp_path)
    chain = node.chain
    node.peers.online.remove(P1)
    model_0 = node.peer_store(V2).put_model(model_of(1.0))
    chain.open_round(0)
    finish_round(chain, 0, model_0, accepted=1)
    for r in (1, 2, 3):
        finish_round(chain, r, None, accepted=1)
        node.peer_store(V2).put_delta(round_delta(r, 0))
    expected = [(r, model_hash(model_of(1.0 + r))) for r in (1, 2, 3)]  # ArithmeticWork: +1 per delta
    runner = node.runner(params=FIVE_ROUNDS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        nursery.start_soon(keep_sealing, chain)
        await until(lambda: len(attested(chain)) >= 3, "models 1 to 3 to be attested")
        await until(lambda: rounds_written(node.store) == [0, 1, 2, 3], "rounds 0 to 3 to be written")
        nursery.cancel_scope.cancel()
    assert attested(chain) == expected
    assert all(node.store.has_model(digest) for _, digest in expected)
    assert runner.error is None


async def test_a_missed_round_whose_delta_is_gone_is_not_attested_and_takes_the_recorded_model(
    tmp_path: Path,
) -> None:
    """As above, but no peer holds round 1's accepted delta any more: the node cannot
    compute model_1, so it attests nothing (it keeps asking for the delta); once the
    others record model_1, it fetches that and completes the round."""
    node = Node(tmp_path)
    chain = node.chain
    model_0, model_1 = (node.peer_store(V2).put_model(model_of(v)) for v in (1.0, 5.0))
    chain.open_round(0)
    finish_round(chain, 0, model_0, accepted=1)
    finish_round(chain, 1, None, accepted=1)
    runner = node.runner(params=FIVE_ROUNDS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        nursery.start_soon(keep_sealing, chain)
        await until(lambda: runner.counters.get("action_failures") >= 3, "the delta fetches to fail")
        assert 1 not in dict(attested(chain))
        chain.pending.append(chain.log("ModelRecorded", 1, model_hash=model_1))  # the others' majority
        await until(lambda: rounds_written(node.store) == [0, 1], "round 1's line")
        nursery.cancel_scope.cancel()
    assert round_history(node.store.history(TASK))[1]["model_hash"] == "0x" + model_1.hex()
    assert 1 not in dict(attested(chain))
    assert runner.error is None


# -- what the machine holds, the store gives -------------------------------------------------


def one_model_for_two_rounds(node: Node) -> tuple[bytes, list[bytes]]:
    """Round 1 accepted nothing: model_1 is model_0, and both rounds fetch it at once."""
    model_0 = node.peer_store(P1).put_model(model_of(1.0))
    node.chain.open_round(0)
    finish_round(node.chain, 0, model_0, accepted=1)
    finish_round(node.chain, 1, model_0)
    return model_0, [model_0, model_0]


def a_model_to_fetch_and_to_compute(node: Node) -> tuple[bytes, list[bytes]]:
    """Round 1's model is recorded and its accepted delta can be had: the node fetches
    model_1 and computes it at once."""
    model_0, model_1 = (node.peer_store(V2).put_model(model_of(v)) for v in (1.0, 2.0))
    node.peer_store(V2).put_delta(round_delta(1, 0))
    node.chain.open_round(0)
    finish_round(node.chain, 0, model_0, accepted=1)
    finish_round(node.chain, 1, model_1, accepted=1)
    return model_1, [model_0, model_1]


@pytest.mark.parametrize("missed", [one_model_for_two_rounds, a_model_to_fetch_and_to_compute])
async def test_a_model_written_twice_at_once_completes_the_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missed: Callable[[Node], tuple[bytes, list[bytes]]]
) -> None:
    """The failure seen once in tests/test_task_daemons.py under load: a node restarted
    after rounds it missed writes one model twice at once (``missed`` says why). The write
    that syncs first is held (a disk slow under load): the other must not tell the machine
    the model is held before it is in the store, or the round's history line finds no
    model and the runner ends."""
    node = Node(tmp_path)
    twice, models = missed(node)
    held = HeldFsync(twice.hex(), os.fsync, hold_seconds=3)
    monkeypatch.setattr(os, "fsync", held)
    runner = node.runner(params=THREE_ROUNDS)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.run)
            await until(lambda: held.holding.is_set() and bool(node.store.history(TASK)),
                        "a round's line while the first write is held")
            held.release.set()
            await until(lambda: rounds_written(node.store) == [0, 1], "both rounds' lines")
            nursery.cancel_scope.cancel()
    finally:
        held.release.set()
    assert [line["model_hash"] for line in round_history(node.store.history(TASK))] == ["0x" + m.hex() for m in models]
    assert runner.counters.get("store_mismatches") == 0
    assert runner.error is None


async def test_a_model_the_store_cannot_give_is_fetched_again_and_the_runner_goes_on(tmp_path: Path) -> None:
    """The node's file of model_0 does not hash to its name (a disk fault): the machine is
    told it holds model_0 (the file is there), and the round's line cannot read it. That
    is counted, the bad file removed, the machine rebuilt from the chain and what the store
    really holds, and model_0 fetched from a peer: the runner goes on."""
    node = Node(tmp_path)
    chain = node.chain
    model_0 = node.peer_store(P1).put_model(model_of(1.0))
    good = node.peer_store(P1).get_model_bytes(model_0)
    assert good is not None
    node.store.model_path(model_0).write_bytes(good[:-3])
    chain.open_round(0)
    finish_round(chain, 0, model_0, accepted=1)
    runner = node.runner(params=THREE_ROUNDS)
    await run_until(runner, lambda: rounds_written(node.store) == [0], "round 0's line")
    assert runner.counters.get("store_mismatches") == 1
    assert node.store.get_model_bytes(model_0) == good
    assert runner.error is None


async def test_a_file_of_the_initial_model_that_is_not_it_is_written_again(tmp_path: Path) -> None:
    """Every replay holds the initial model: when its file turns out not to be it, the
    runner writes it again before the rebuild, and the voter scores on it."""
    node = Node(tmp_path)
    node.store.model_path(INIT_HASH).write_bytes(b"not a checkpoint")
    runner = node.runner()
    await run_while_voting(node, runner)
    assert node.work.scored == [(D1,)]
    assert runner.counters.get("store_mismatches") == 1
    assert model_hash(node.store.load_model(INIT_HASH)) == INIT_HASH
    assert runner.error is None
