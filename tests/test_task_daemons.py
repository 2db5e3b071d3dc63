"""A learning task across real daemons: one is killed with SIGKILL mid-round; the round
still finalises without it, and once restarted it reaches the same model as the chain."""

import pytest

from flockd.testnet.cluster import Cluster
from flockd.testnet.task import TaskPlan, create_and_join

pytestmark = pytest.mark.slow

PLAN = TaskPlan(recipe="digits-mlp", rounds=3, expected_proposers=2, propose_blocks=6, commit_blocks=5, reveal_blocks=8)


def status(d, task_id):
    return d.call("task_status", {"task_id": task_id})


def test_node_killed_mid_round_restarts_and_reaches_the_same_model(short_tmp):
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        task_id = create_and_join(cluster, PLAN)
        victim, others = cluster.daemons[3], cluster.daemons[:3]

        def in_round_1():
            rs = others[0].call("round_status", {"task_id": task_id})
            return rs["round"] == 1 and rs["phase"] in ("proposing", "committing")

        cluster.wait_for(in_round_1, 240, "round 1 to be under way")
        cluster.kill(victim)

        # The round finalises without the victim, and the task goes on.
        cluster.wait_for(lambda: all(len(status(d, task_id)["history"]) >= 2 for d in others), 240,
                         "round 1 to finalise without the killed node")
        cluster.start_daemon(victim, bootstrap=cluster.bootstrap_addr())
        cluster.wait_ready(victim, 60)

        def finished_everywhere():
            # "finished" on chain comes with the last finalise, before its model is attested;
            # a node's history line for a round follows the attestation. The survivors have
            # every round; the restarted node skipped the round it missed (it fetched that
            # model) and must end on the last one.
            sts = [status(d, task_id) for d in cluster.daemons]
            last = PLAN.rounds - 1
            return all(
                s["state"] == "finished" and s["history"] and s["history"][-1]["round"] == last
                and s["model_hash"] == s["chain_model_hash"]
                for s in sts
            ) and all(len(s["history"]) == PLAN.rounds for s in sts[:3])

        cluster.wait_for(finished_everywhere, 300, "every node, the restarted one too, to hold the chain's model")
        hashes = {status(d, task_id)["model_hash"] for d in cluster.daemons}
        assert len(hashes) == 1 and None not in hashes
        verified = [d.call("model_verify", {"task_id": task_id}) for d in others]
        assert all(v["ok"] and v["complete"] for v in verified), verified
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0, 0]
