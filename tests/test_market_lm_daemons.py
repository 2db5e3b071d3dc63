"""A listed language model across real daemons: node0 and node1 run a one-round lm-lora
task on a tiny Llama (the base built here, in the base store every daemon reads); node0
lists its model; node2, which took no part and serves with `[serve] market = true`,
fetches it (the checkpoint checked against the global state's layout, weights and
carried adapter), replays its lineage, and serves it: /v1/models lists it and
/v1/chat/completions answers."""

from __future__ import annotations

import httpx
import pytest
from serve_tiny import TINY
from test_market_daemons import cluster_serving_market

from flockd.lm.base import BASES_ENV
from flockd.lm.build import build_base
from flockd.testnet.task import TX_TIMEOUT

pytestmark = pytest.mark.slow

NAME = "tiny-lm"
FAST = {"domains": ["json", "textwrap"], "seq_len": 64, "batch_size": 8, "steps": 12, "lr": 1e-2, "lora_rank": 4,
        "lora_alpha": 8.0}


def test_a_listed_language_model_is_fetched_and_served_by_another_node(short_tmp, monkeypatch):
    monkeypatch.setenv(BASES_ENV, str(short_tmp / "bases"))  # the daemons inherit it
    base = build_base(TINY)
    cluster, port = cluster_serving_market(short_tmp)
    a, c, b = cluster.daemons
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=90)
        created = a.call("task_create", {
            "recipe": "lm-lora", "config": {"base_hash": "0x" + base.base_hash.hex(), **FAST}, "rounds": 1,
            "num_nodes": 2, "min_participants": 2, "expected_proposers": 2,
            "propose_blocks": 60, "commit_blocks": 40, "reveal_blocks": 12,
            "stake_unit": 100 * 10**18, "min_stake": 100 * 10**18,
        }, timeout=TX_TIMEOUT)
        task_id = created["task_id"]
        cluster.wait_for(lambda: all(d.call("task_status", {"task_id": task_id}) for d in (a, c)), TX_TIMEOUT,
                         "the members to see the task")
        for d in (a, c):
            d.call("task_join", {"task_id": task_id, "spec": created["spec"]}, timeout=TX_TIMEOUT)
        a.call("task_start", {"task_id": task_id}, timeout=TX_TIMEOUT)

        def finished() -> bool:
            sts = [d.call("task_status", {"task_id": task_id}) for d in (a, c)]
            return all(s["state"] == "finished" and s["model_hash"] and s["model_hash"] == s["chain_model_hash"]
                       for s in sts)

        cluster.wait_for(finished, 400, "the LM task to finish with its model recorded")
        listed = a.call("market_list", {"task_id": task_id, "name": NAME, "licence": "MIT"}, timeout=TX_TIMEOUT)
        cluster.wait_for(lambda: b.call("market_listings"), 60, "node2 to see the listing")
        fetched = b.call("market_fetch", {"listing_id": listed["listing_id"]}, timeout=300)
        assert fetched["served"] is True and fetched["lineage"]["ok"] and fetched["lineage"]["complete"]
        assert fetched["model_hash"] == listed["model_hash"] and fetched["fetched_from"] in (a.peer_id, c.peer_id)

        url = f"http://127.0.0.1:{port}"
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [NAME]
        reply = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": NAME, "messages": [{"role": "user", "content": "def parse("}], "max_tokens": 6,
            "temperature": 0}).json()
        assert reply["model"] == NAME and reply["usage"]["completion_tokens"] >= 1
        assert isinstance(reply["choices"][0]["message"]["content"], str)
        (described,) = httpx.get(url + "/api/catalogue").json()["models"]
        assert described["kind"] == "causal-lm" and described["lineage"]["listing_id"] == listed["listing_id"]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0]
