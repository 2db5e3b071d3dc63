"""A language-model competition across real daemons, then the hand-off: node0 creates an
lm-lora competition of adapters on the tiny Llama with its own jsonl evaluation text,
node1 trains an adapter on its own text with its own steps, lr and seed, node2 validates
(it fetches the adapter over fl.fetch.1 and the evaluation set over arena.eval.1, scores
in bits per character); arena_verify passes on every node. Then the hand-off: an lm-lora
task created from the competition, which every node joins only after deriving its initial
state (the winning adapter folded into the base) and finding the chain's hash; model_verify
passes on every node with the competition in the lineage. Its rounds are any task's
(tests/test_market_lm_daemons.py runs an lm-lora round), so none is run here."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_tiny import TINY

from flockd.lm.base import BASES_ENV
from flockd.lm.build import build_base
from flockd.testnet.cluster import Cluster
from flockd.testnet.task import TX_TIMEOUT

pytestmark = pytest.mark.slow
FAST = {"domains": ["json", "textwrap"], "seq_len": 64, "batch_size": 8, "steps": 4, "lr": 1e-2, "lora_rank": 4,
        "lora_alpha": 8.0}


def test_an_lm_competition_runs_verifies_and_seeds_a_task(short_tmp, tmp_path_factory, monkeypatch):
    monkeypatch.setenv(BASES_ENV, str(tmp_path_factory.getbasetemp() / "serve-bases"))  # the daemons inherit it
    config = {"base_hash": "0x" + build_base(TINY).base_hash.hex(), **FAST}
    eval_path, text_path = short_tmp / "eval.jsonl", short_tmp / "mine.txt"
    eval_path.write_text("".join(
        json.dumps({"prompt": f"Q{i}: what does json.loads return?", "completion": " a Python object."}) + "\n"
        for i in range(12)))
    text_path.write_text("\n\n".join(f"json.loads({i}) returns a Python object decoded from JSON text." for i in range(30)))
    cluster = Cluster(short_tmp, 3)
    cluster.init()
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        creator, trainer, validator = cluster.daemons
        created = creator.call("arena_create", {
            "recipe": "lm-lora", "config": config, "submission": "adapter", "eval_path": str(eval_path),
            "reward_pool": "1000e18", "creator_bond": "100e18", "expected_validators": 1,
            "join_blocks": 30, "submit_blocks": 50, "reveal_blocks": 8, "score_commit_blocks": 20, "score_reveal_blocks": 8,
        }, timeout=120)
        cid, spec = created["competition_id"], created["spec"]
        assert spec["submission"] == "adapter"
        joins = [(validator, "validator", "100e18"), (trainer, "trainer", "10e18")]
        with ThreadPoolExecutor(len(joins)) as pool:  # both in the join phase, at once
            list(pool.map(lambda j: j[0].call("arena_join", {"competition_id": cid, "spec": spec, "role": j[1],
                                                              "stake": j[2]}, timeout=60), joins))
        # the daemon loads transformers and the base on its first LM work: a long submit phase
        trainer.call("arena_submit", {"competition_id": cid, "data_path": str(text_path), "steps": 6, "lr": 0.02,
                                      "seed": 1}, timeout=120)

        cluster.wait_for(lambda: creator.call("arena_status", {"competition_id": cid})["phase"] == "finalised", 400,
                         "the competition to be finalised")
        (winner,) = creator.call("arena_results", {"competition_id": cid})["leaderboard"]
        assert winner["rank"] == 1 and 0 < winner["median"] < 8_000_000
        for d in cluster.daemons:
            verified = d.call("arena_verify", {"competition_id": cid}, timeout=120)
            assert verified["ok"], (d.index, verified)
            assert verified["submissions"][0]["recomputed_score"] == winner["median"]

        # the hand-off: every node derives round 0's state from the chain and the winning adapter
        # (node0 fetches it over fl.fetch.1) and stakes only if it hashes to the task's model_init_hash
        created = creator.call("task_create", {
            "recipe": "lm-lora", "config": config, "competition": cid, "rounds": 1, "num_nodes": 3,
            "min_participants": 3, "expected_proposers": 2}, timeout=TX_TIMEOUT)
        task_id = created["task_id"]
        cluster.wait_for(lambda: all(d.call("task_status", {"task_id": task_id}) for d in cluster.daemons),
                         TX_TIMEOUT, "every node to see the task")
        for d in cluster.daemons:
            d.call("task_join", {"task_id": task_id, "spec": created["spec"]}, timeout=TX_TIMEOUT)
            verified = d.call("model_verify", {"task_id": task_id}, timeout=300)
            # not started: nothing is wrong, and the lineage is not complete until the task ends
            assert verified["problems"] == [] and not verified["complete"], (d.index, verified)
            assert verified["initial_model_hash"] == created["model_init_hash"]
            assert verified["competition"]["ok"] and verified["competition"]["winner"]["model_hash"] == winner["model_hash"]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0]
