"""An attacker among real daemons: one of four sends sign-flipped deltas scaled by 4.
The chain's record of each round shows its proposals voted down and honest ones accepted,
and the model learns anyway.

Who proposes is a VRF draw on the block hash, so the test cannot pick the rounds the
attacker proposes in. It runs a long task with a high expected proposer count (each node
proposes with probability ~0.53 per round) and stops as soon as the attacker has proposed
in a finalised round and an honest proposal has been accepted; asserting only on what the
chain recorded, whichever rounds those were.
"""

import pytest

from flockd.testnet.cluster import Cluster
from flockd.testnet.task import TaskPlan, create_and_join

pytestmark = pytest.mark.slow

# Ten rounds bound the run; the test usually stops after two or three. The chance that
# the attacker is never drawn in ten rounds is 0.47**10 (about 1 in 2,000). Windows close
# early once every expected message is in, so long ones cost nothing when all goes well;
# they keep a voter on a busy machine from timing out while its commit is still being
# confirmed.
PLAN = TaskPlan(
    recipe="digits-mlp",
    rounds=10,
    expected_proposers=3,
    propose_blocks=10,
    commit_blocks=10,
    reveal_blocks=8,
)
ATTACKER = 3


def history(d, task_id) -> list[dict]:
    return d.call("task_status", {"task_id": task_id})["history"]


def lowered(addresses: list[str]) -> set[str]:
    return {a.lower() for a in addresses}


def test_sign_flipping_proposer_is_voted_down_and_the_model_still_learns(short_tmp):
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    cluster.configure_attacks({ATTACKER: "sign-flip:4"})
    attacker = cluster.daemons[ATTACKER].address.lower()
    observer = cluster.daemons[0]
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        task_id = create_and_join(cluster, PLAN)

        def attacked_and_learned() -> bool:
            rounds = history(observer, task_id)
            attacked = any(attacker in lowered(r["proposers"]) for r in rounds[1:])
            honest_accepted = any(lowered(r["accepted_proposers"]) - {attacker} for r in rounds)
            return attacked and honest_accepted

        cluster.wait_for(
            attacked_and_learned, 420, "the attacker to propose and an honest proposal to pass"
        )
        rounds = history(observer, task_id)
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0, 0]

    attacked = [r for r in rounds[1:] if attacker in lowered(r["proposers"])]
    assert attacked
    # Never accepted once there is a model to protect, whoever else proposed with it. In
    # round 0 the model is random: any large step, even a flipped one, can score no worse
    # on a voter's split (docs/simulation.md), so that round proves nothing either way.
    for r in rounds[1:]:
        assert attacker not in lowered(r["accepted_proposers"]), r
    honest_accepted = sum(len(lowered(r["accepted_proposers"]) - {attacker}) for r in rounds)
    assert honest_accepted >= 1
    # Every participant votes, proposers too, so every round judges its honest work.
    honest_proposals = sum(len(lowered(r["proposers"]) - {attacker}) for r in rounds)
    honest_accepted = sum(len(lowered(r["accepted_proposers"]) - {attacker}) for r in rounds)
    assert honest_accepted >= honest_proposals // 2  # IID honest work passes the voters
    assert rounds[-1]["test_accuracy"] > 0.6  # a random digits model scores ~0.1
    log = cluster.daemons[ATTACKER].log_path.read_text()
    assert "this node is MALICIOUS" in log and "sign-flip:4" in log
    assert "MALICIOUS" not in observer.log_path.read_text()
