"""A whole Arena competition across real daemons (one process each, the genesis Arena):
a creator, two trainers with different data and hyperparameters, one validator. The
daemons' drivers reveal, elect, fetch the submissions and the evaluation set over p2p,
score, publish and finalise by themselves; arena_verify then passes on every node. Then
the hand-off: a two-round Alliance task among all four starts from the winner's model,
and model_verify passes on every node with the competition in the lineage. Then the
market: the creator lists the task's model and the winner; another node fetches both,
and the task's listing verifies back to the competition (competition, rounds, listing)."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from flockd.ctl import main
from flockd.testnet.cluster import Cluster
from flockd.testnet.task import TaskPlan, create_and_join, wait_finished

pytestmark = pytest.mark.slow
E18 = 10**18

CREATE = {
    "recipe": "digits-mlp", "reward_pool": "1000e18", "creator_bond": "100e18",
    "trainer_stake": "10e18", "validator_stake": "100e18", "expected_validators": 1,
    "join_blocks": 40, "submit_blocks": 12, "reveal_blocks": 10, "score_commit_blocks": 30, "score_reveal_blocks": 12,
}
TRAINING = [  # each trainer's own part of the data and hyperparameters
    {"node_index": 0, "num_nodes": 2, "epochs": 5, "seed": 1},
    {"node_index": 1, "num_nodes": 2, "epochs": 1, "lr": 0.01, "seed": 2},
]


def test_a_competition_runs_to_the_end_and_verifies_on_every_node(short_tmp, capsys):
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        creator, trainers, validator = cluster.daemons[0], cluster.daemons[1:3], cluster.daemons[3]
        created = creator.call("arena_create", CREATE, timeout=120)
        cid, spec = created["competition_id"], created["spec"]
        joins = [(validator, "validator", "100e18")] + [(d, "trainer", "10e18") for d in trainers]
        with ThreadPoolExecutor(len(joins)) as pool:  # every join in the join phase, at once
            list(pool.map(lambda j: j[0].call("arena_join", {"competition_id": cid, "spec": spec, "role": j[1], "stake": j[2]}, timeout=60), joins))
            submitted = pool.map(lambda t: t[0].call("arena_submit", {"competition_id": cid, **t[1]}, timeout=120), zip(trainers, TRAINING, strict=True))
            assert sorted(s["index"] for s in submitted) == [0, 1]

        def finalised() -> bool:
            return creator.call("arena_status", {"competition_id": cid})["phase"] == "finalised"

        cluster.wait_for(finalised, 400, "the competition to be finalised")
        results = creator.call("arena_results", {"competition_id": cid})
        assert [row["rank"] for row in results["leaderboard"]] == [1, 2], results
        assert all(row["median"] > 0 and row["reward"] > 0 for row in results["leaderboard"]), results
        (settled,) = results["validators"]
        assert settled["revealed"] and settled["reward"] > 0 and settled["slashed"] == 0, results
        for d in cluster.daemons:
            verified = d.call("arena_verify", {"competition_id": cid}, timeout=120)
            assert verified["ok"], (d.index, verified)
            counted = [s for s in verified["submissions"] if s["counted"]]
            assert len(counted) == 2 and all(s["recomputed_score"] == s["median"] for s in counted)
        # flockctl shows the leaderboard as a table
        assert main(["--datadir", str(creator.datadir), "arena_results", f"competition_id={cid}"]) == 0
        assert "leaderboard" in capsys.readouterr().out
        # every member pulls its stake and its reward; the creator what was not paid out, and its bond
        rewards = {row["trainer"]: row["reward"] for row in results["leaderboard"]}
        for d, stake in [(trainers[0], 10 * E18), (trainers[1], 10 * E18), (validator, 100 * E18)]:
            expected = stake + rewards.get(d.address, settled["reward"] if d is validator else 0)
            assert d.call("arena_claim")["claimed"] == expected
        paid = sum(rewards.values()) + settled["reward"]
        assert creator.call("arena_claim")["claimed"] == 1000 * E18 - paid + 100 * E18

        # the hand-off: the winner's model is round 0's base; every node fetches and checks it
        plan = TaskPlan(rounds=2, expected_proposers=2, propose_blocks=6, commit_blocks=5, competition=cid)
        task_id = create_and_join(cluster, plan)
        wait_finished(cluster, task_id, plan, 400, lambda statuses, rounds: None)
        winner = results["leaderboard"][0]
        for d in cluster.daemons:
            verified = d.call("model_verify", {"task_id": task_id}, timeout=300)
            assert verified["ok"] and verified["complete"], (d.index, verified)
            assert verified["initial_model_hash"] == winner["model_hash"]
            assert verified["competition"]["ok"] and verified["competition"]["winner"]["model_hash"] == winner["model_hash"]

        # the market: the task seeded by the competition, and the winner itself, listed in one table
        tuned = creator.call("market_list", {"task_id": task_id, "name": "digits-tuned"}, timeout=120)
        won = creator.call("market_list", {"competition_id": cid, "name": "digits-winner"}, timeout=120)
        cluster.wait_for(lambda: len(validator.call("market_listings")) == 2, 60, "the validator to see both listings")
        assert [x["kind"] for x in validator.call("market_listings")] == ["task", "competition"]
        fetched = validator.call("market_fetch", {"listing_id": tuned["listing_id"]}, timeout=300)
        assert fetched["lineage"]["ok"] and fetched["lineage"]["complete"] and fetched["lineage"]["competition"]["ok"]
        assert fetched["lineage"]["initial_model_hash"] == winner["model_hash"]
        whole = validator.call("market_lineage", {"listing_id": tuned["listing_id"]}, timeout=300)
        competition, rounds = whole["lineage"]
        assert whole["ok"] and (competition["kind"], rounds["kind"]) == ("competition", "task"), whole
        assert competition["winner"]["model_hash"] == rounds["initial_model_hash"] == winner["model_hash"]
        assert rounds["ends_at_listing"] and rounds["final_model_hash"] == tuned["model_hash"]
        fetched = validator.call("market_fetch", {"listing_id": won["listing_id"]}, timeout=300)
        assert fetched["kind"] == "competition" and fetched["model_hash"] == winner["model_hash"] == won["model_hash"]
        assert fetched["lineage"]["competition"]["ok"]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0, 0]
