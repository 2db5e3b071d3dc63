"""Modifying a listed model across real daemons: node0 and node1 run a one-round task and
node0 lists its model; node2 creates a new task from the listing (market_task_create
fetches and verifies it first), node0 and node1 fetch the listing and join, and the new
task runs a round from the listed model. Its lineage continues from the listing:
model_verify names the listing it starts from, and market_lineage replays the listed
task's round, then the new task's, the one ending where the other begins."""

from __future__ import annotations

import pytest
from test_market_daemons import run_task

from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.task import TX_TIMEOUT

pytestmark = pytest.mark.slow

SMALL_TASK = {"rounds": 1, "num_nodes": 2, "min_participants": 2, "expected_proposers": 2, "propose_blocks": 6,
              "commit_blocks": 5, "reveal_blocks": 8, "stake_unit": 100 * 10**18, "min_stake": 100 * 10**18}


def wait_finished(cluster: Cluster, members: list[Daemon], task_id: int) -> None:
    def finished() -> bool:
        sts = [d.call("task_status", {"task_id": task_id}) for d in members]
        return all(s["state"] == "finished" and s["model_hash"] and s["model_hash"] == s["chain_model_hash"]
                   for s in sts)

    cluster.wait_for(finished, 300, f"task {task_id} to finish with its model recorded")


def test_a_task_started_from_a_listed_model_continues_its_lineage(short_tmp):
    cluster = Cluster(short_tmp, 3)
    cluster.init()
    a, c, b = cluster.daemons
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=90)
        first, _ = run_task(cluster, [a, c])
        listed = a.call("market_list", {"task_id": first, "name": "digits-base"}, timeout=TX_TIMEOUT)
        cluster.wait_for(lambda: b.call("market_listings"), 60, "node2 to see the listing")

        created = b.call("market_task_create", {"listing_id": listed["listing_id"], "seed": 5, **SMALL_TASK},
                         timeout=TX_TIMEOUT)
        second = created["task_id"]
        assert created["model_init_hash"] == listed["model_hash"]
        assert created["spec"]["start"] == {"listing_id": listed["listing_id"], "task_id": first,
                                            "model_hash": listed["model_hash"]}
        cluster.wait_for(lambda: all(d.call("task_status", {"task_id": second}) for d in (a, c)), TX_TIMEOUT,
                         "the members to see the new task")
        for d in (a, c):
            assert d.call("market_fetch", {"listing_id": listed["listing_id"]}, timeout=TX_TIMEOUT)["lineage"]["ok"]
            d.call("task_join", {"task_id": second, "spec": created["spec"]}, timeout=TX_TIMEOUT)
        b.call("task_start", {"task_id": second}, timeout=TX_TIMEOUT)
        wait_finished(cluster, [a, c], second)

        # The node may see the round finalised before the registry says the task is finished.
        cluster.wait_for(lambda: a.call("model_verify", {"task_id": second}, timeout=TX_TIMEOUT)["complete"], 60,
                         "the registry to record the new task finished")
        verified = a.call("model_verify", {"task_id": second}, timeout=TX_TIMEOUT)
        assert verified["ok"] and verified["complete"], (verified["problems"], verified["rounds"])
        assert verified["start"]["listing_id"] == listed["listing_id"]
        status = a.call("task_status", {"task_id": second})
        final = status["model_hash"]
        assert final, status
        assert verified["final_model_hash"] == final != listed["model_hash"]

        whole = b.call("market_lineage", {"task_id": second, "spec": created["spec"]}, timeout=TX_TIMEOUT)
        assert whole["ok"] and whole["continues"] and whole["listing_id"] == listed["listing_id"]
        parent, own = whole["lineage"]
        assert (parent["task_id"], own["task_id"]) == (first, second)
        assert parent["final_model_hash"] == listed["model_hash"] and own["final_model_hash"] == final
        assert [r["round"] for r in parent["rounds"]] == [0] and [r["round"] for r in own["rounds"]] == [0]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0]
