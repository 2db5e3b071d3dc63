"""The cheapest attack among real daemons: one of four proposes random bytes whenever it is
elected, committing to their keccak so they pass the hash check. The honest voters vote
-1 on the garbage and still vote on every other proposal, so the honest proposals of
those rounds are accepted and the model learns.

Before a malformed delta cost only its sender, every honest voter's scoring raised on the
garbage, the voters abstained, and the whole round (honest proposals too) was rejected.

Who proposes is a VRF draw on the block hash (see test_attack_daemons.py): the test runs
a long task with a high expected proposer count and stops as soon as a finalised round
held the attacker's garbage and an honest proposal, asserting on what the chain recorded
and on the ballots each honest node committed (proposers vote too).
"""

import pytest

from flockd.store import Store
from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.task import TaskPlan, create_and_join

pytestmark = pytest.mark.slow

# As in test_attack_daemons.py: each node proposes with probability ~0.53 per round, so
# a round with the attacker and an honest proposer comes within ten rounds all but surely.
PLAN = TaskPlan(
    recipe="digits-mlp",
    rounds=10,
    expected_proposers=3,
    propose_blocks=10,
    commit_blocks=10,
    reveal_blocks=8,
)
ATTACKER = 3


def history(d: Daemon, task_id: int) -> list[dict]:
    return d.call("task_status", {"task_id": task_id})["history"]


def ballots(d: Daemon, task_id: int) -> dict[int, list[int]]:
    """The votes this node committed, by round (written before its commit is sent)."""
    return {b["round"]: b["votes"] for b in Store(d.datadir / "store").history(task_id, "ballots")}


def lowered(addresses: list[str]) -> list[str]:
    return [a.lower() for a in addresses]


def test_garbage_is_rejected_and_honest_proposals_of_its_rounds_pass(short_tmp):
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    cluster.configure_attacks({ATTACKER: "garbage"})
    attacker = cluster.daemons[ATTACKER].address.lower()
    honest = [d for d in cluster.daemons if d.index != ATTACKER]
    observer = cluster.daemons[0]

    def mixed(r: dict) -> bool:
        # the attacker and at least one honest node proposed (every participant votes,
        # the proposers too, so even a round in which all four proposed is judged)
        proposers = lowered(r["proposers"])
        return attacker in proposers and len(proposers) > 1

    try:
        cluster.start(timeout=180)  # a shared, busy machine starts four daemons slowly
        cluster.wait_full_mesh(timeout=120)
        task_id = create_and_join(cluster, PLAN)
        cluster.wait_for(
            lambda: any(mixed(r) for r in history(observer, task_id)),
            420,
            "a round with the garbage and an honest proposal to finish",
        )
        rounds = history(observer, task_id)
        committed = {d.index: ballots(d, task_id) for d in honest}
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0, 0]

    attacked = [r for r in rounds if mixed(r)]
    assert attacked
    for r in attacked:
        proposers = lowered(r["proposers"])
        accepted = set(lowered(r["accepted_proposers"]))
        assert attacker not in accepted, r
        assert accepted == set(proposers) - {attacker}, r  # every honest proposal passed
        for d in honest:  # an honest proposer's ballot too: +1 on its own, like the others
            votes = committed[d.index].get(r["round"])
            assert votes is not None, f"node {d.index} abstained in round {r['round']}"
            assert len(votes) == len(proposers), (d.index, r["round"], votes)
            assert votes == [-1 if p == attacker else 1 for p in proposers], (d.index, r)
    for r in rounds:
        assert attacker not in lowered(r["accepted_proposers"]), r
    assert rounds[-1]["test_accuracy"] > 0.6  # a random digits model scores ~0.1

    log = cluster.daemons[ATTACKER].log_path.read_text()
    assert "this node is MALICIOUS" in log and "random bytes" in log
    for d in honest:
        text = d.log_path.read_text()
        failed = [line for line in text.splitlines() if "action failed" in line]
        assert not [line for line in failed if "ScoreProposals" in line or "Aggregate" in line]
        assert "MALICIOUS" not in text
    voters_logs = "".join(d.log_path.read_text() for d in honest)
    assert "unusable delta" in voters_logs
