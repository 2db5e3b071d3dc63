"""The task adapter (tasks/runner.py) against a scripted chain, without sockets.

The runner is the daemon's: its real TaskMachine, its real Store on disk, its failure
events, replay and reorg handling. Only its seams are scripted (tests/fake_task_chain.py):
the chain (blocks the test seals, transactions logged in the next block), the peers
(each serving from its own Store) and the learning (arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trio
from eth_utils import keccak
from fake_task_chain import INIT_HASH, ArithmeticWork, ScriptedChain, ScriptedPeers

from flockd import round as rnd
from flockd import sortition
from flockd.chain.registry import TaskParams
from flockd.round import vote_digest
from flockd.store import Store
from flockd.tasks import runner as runner_module
from flockd.tasks.runner import NodeContext, TaskRunner

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

    def runner(self, confirmations: int = 0) -> TaskRunner:
        ctx = NodeContext(
            network=self.peers, registry=None, store=self.store, address=ME,  # type: ignore[arg-type]
            vrf_secret=keccak(b"vrf of me"), confirmations=confirmations,
        )
        return TaskRunner(ctx, TASK, None, PARAMS, [ME, P1, V2], self.work, chain=self.chain)  # type: ignore[arg-type]

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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        await vote_on_one_proposal(node, runner)
        nursery.cancel_scope.cancel()
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
