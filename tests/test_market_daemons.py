"""The market across real daemons: node0 and node1 run a one-round task; node0 lists its
final model on chain; node2, which took no part, fetches it from its peers over p2p,
checks it against the listing, replays its lineage from the chain and the deltas, and
serves it on /v1/predict (and after a restart too). Peers serving other bytes (garbage
from one, a valid checkpoint of another model from the other) are refused, and the
fetch fails until one peer serves the listed bytes; it fails too, keeping nothing, while
no peer serves the deltas its lineage replays."""

from __future__ import annotations

import os
import socket

import httpx
import pytest

from flockd.config import CONFIG_FILE
from flockd.rpc.errors import RPCError
from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.task import TX_TIMEOUT

pytestmark = pytest.mark.slow

NAME = "digits-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_serving_market(short_tmp) -> tuple[Cluster, int]:
    """Three daemons, initialised; the third serves the models it fetches from the market
    ([serve] market = true) on the port returned."""
    cluster = Cluster(short_tmp, 3)
    cluster.init()
    port = free_port()
    path = cluster.daemons[2].datadir / CONFIG_FILE
    path.write_text(path.read_text() + f"\n[serve]\nenabled = true\nmarket = true\nport = {port}\n")
    return cluster, port


def model_file(d: Daemon, model_hash: str):
    return d.datadir / "store" / "models" / f"{model_hash[2:]}.safetensors"


def another_digits_model() -> bytes:
    """A valid checkpoint of the same layout, of other weights."""
    from flockd.fl.checkpoint import checkpoint_bytes
    from flockd.fl.recipe import load_recipe
    from flockd.fl.tensors import model_state

    return checkpoint_bytes(model_state(load_recipe("digits-mlp").build_model(12345)))


def run_task(cluster: Cluster, members: list[Daemon]) -> tuple[int, dict]:
    created = members[0].call("task_create", {
        "recipe": "digits-mlp", "rounds": 1, "num_nodes": 2, "min_participants": 2, "expected_proposers": 2,
        "propose_blocks": 6, "commit_blocks": 5, "reveal_blocks": 8,
        # one stake unit each (task_join stakes 100): both are elected, both propose
        "stake_unit": 100 * 10**18, "min_stake": 100 * 10**18,
    }, timeout=TX_TIMEOUT)
    task_id: int = created["task_id"]
    cluster.wait_for(lambda: all(d.call("task_status", {"task_id": task_id}) for d in members), TX_TIMEOUT,
                     "the members to see the task")
    for d in members:
        d.call("task_join", {"task_id": task_id, "spec": created["spec"]}, timeout=TX_TIMEOUT)
    members[0].call("task_start", {"task_id": task_id}, timeout=TX_TIMEOUT)

    def finished() -> bool:
        sts = [d.call("task_status", {"task_id": task_id}) for d in members]
        return all(s["state"] == "finished" and s["model_hash"] and s["model_hash"] == s["chain_model_hash"]
                   for s in sts)

    cluster.wait_for(finished, 300, "the task to finish with its model recorded")
    return task_id, created["spec"]


def test_a_listed_model_is_fetched_verified_and_served_by_another_node(short_tmp):
    cluster, port = cluster_serving_market(short_tmp)
    a, c, b = cluster.daemons  # a lists, c took part too, b only fetches
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=90)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/v1/models").json()["data"] == []  # serving, nothing yet
        task_id, spec = run_task(cluster, [a, c])
        final = a.call("task_status", {"task_id": task_id})["model_hash"]

        with pytest.raises(RPCError, match="not the creator or a participant"):
            b.call("market_list", {"task_id": task_id, "name": NAME, "spec": spec}, timeout=TX_TIMEOUT)
        with pytest.raises(RPCError, match="name"):
            a.call("market_list", {"task_id": task_id, "name": "<b>bold</b>"})
        listed = a.call("market_list", {"task_id": task_id, "name": NAME, "description": "digits, one round",
                                         "licence": "MIT"}, timeout=TX_TIMEOUT)
        assert listed["model_hash"] == final
        listing_id = listed["listing_id"]
        cluster.wait_for(lambda: b.call("market_listings"), 60, "node2 to see the listing")
        (seen,) = b.call("market_listings")
        assert (seen["name"], seen["task_id"], seen["model_hash"], seen["lister"]) == (NAME, task_id, final, a.address)

        # Both holders serve other bytes: garbage, and a valid checkpoint of another model.
        originals = {d.index: model_file(d, final).read_bytes() for d in (a, c)}
        model_file(c, final).write_bytes(os.urandom(len(originals[c.index])))
        model_file(a, final).write_bytes(another_digits_model())
        with pytest.raises(RPCError, match="none of 2 peers served listed model"):
            b.call("market_fetch", {"listing_id": listing_id}, timeout=TX_TIMEOUT)
        assert not model_file(b, final).exists()
        assert httpx.get(url + "/v1/models").json()["data"] == []

        model_file(a, final).write_bytes(originals[a.index])
        # The listed bytes, but no peer serves the deltas the lineage replays: refused, not kept.
        deltas = {p: p.read_bytes() for d in (a, c) for p in (d.datadir / "store" / "deltas").iterdir()}
        assert deltas
        for p in deltas:
            p.write_bytes(b"not the delta")
        with pytest.raises(RPCError, match="the lineage does not replay to the listed model"):
            b.call("market_fetch", {"listing_id": listing_id}, timeout=TX_TIMEOUT)
        assert not model_file(b, final).exists()
        for p, data in deltas.items():
            p.write_bytes(data)
        fetched = b.call("market_fetch", {"listing_id": listing_id}, timeout=TX_TIMEOUT)
        assert fetched["fetched_from"] == a.peer_id and fetched["served"] is True
        assert fetched["lineage"]["ok"] and fetched["lineage"]["complete"]
        assert fetched["lineage"]["final_model_hash"] == final and fetched["model_hash"] == final
        assert fetched["lineage"]["rounds"][0]["accepted"] >= 1
        assert model_file(b, final).read_bytes() == originals[a.index]
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [NAME]
        reply = httpx.post(url + "/v1/predict", json={"model": NAME, "input": [[0.0] * 64, [8.0] * 64]}).json()
        assert [row["index"] for row in reply["data"]] == [0, 1]
        assert all(len(row["probabilities"]) == 10 for row in reply["data"])
        (described,) = httpx.get(url + "/api/catalogue").json()["models"]
        assert described["lineage"]["listing_id"] == listing_id and described["lineage"]["rounds"] == 1
        assert described["lineage_note"].startswith(f"listing {listing_id} of task {task_id}: 1 round(s)")
        # The page's catalogue of every listing: this one served here, verified, its graph task → round → listing
        (row,) = [r for r in httpx.get(url + "/api/listings").json()["listings"] if r["listing_id"] == listing_id]
        assert row["served"] == {"model": NAME, "endpoint": "/v1/predict"} and row["verified"]["ok"]
        assert [n["type"] for n in row["lineage"]["nodes"]] == ["task", "round", "listing"]
        replayed = httpx.post(url + f"/api/listings/{listing_id}/replay", timeout=TX_TIMEOUT).json()
        assert replayed["ok"] and [p["rounds_checked"] for p in replayed["lineage"]] == [1]

        # The knowledge folder named by RPC, searched at once.
        knowledge = short_tmp / "knowledge"
        knowledge.mkdir()
        (knowledge / "fact.md").write_text("The digits model was listed by node zero.")
        assert b.call("serve_knowledge", {"folder": str(knowledge)})["added"] == 1
        hits = httpx.post(url + "/api/search", json={"query": "who listed the digits model"}).json()["sources"]
        assert [h["file"] for h in hits] == ["fact.md"]

        # Unlisted by its lister: no longer fetchable; only the lister may unlist.
        with pytest.raises(RPCError, match="only the lister"):
            b.call("market_unlist", {"listing_id": listing_id}, timeout=TX_TIMEOUT)
        a.call("market_unlist", {"listing_id": listing_id}, timeout=TX_TIMEOUT)
        cluster.wait_for(lambda: not b.call("market_listings"), 60, "node2 to see the listing withdrawn")
        with pytest.raises(RPCError, match="unlisted"):
            b.call("market_fetch", {"listing_id": listing_id}, timeout=TX_TIMEOUT)

        # What node2 verified it serves again after a restart.
        b.call("node_stop")
        assert b.process is not None and b.process.wait(timeout=60) == 0
        cluster.start_daemon(b, bootstrap=cluster.bootstrap_addr())
        cluster.wait_ready(b, 120)
        cluster.wait_for(lambda: "serve" in b.call("node_status")["services"], 60, "node2 serving")
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [NAME]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0]
