"""The Prometheus endpoint: the families a node exports, and a scrape of a real daemon."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from flockd.metrics import NodeCollector, TaskTally
from flockd.stats import Counters
from flockd.testnet.cluster import Cluster

NODE_FAMILIES = {
    "flockd_peers", "flockd_chain_head", "flockd_chain_syncing", "flockd_chain_pending_transactions",
    "flockd_rpc_errors", "flockd_task_round", "flockd_task_finished", "flockd_task_rounds_finalised",
    "flockd_task_proposals_accepted", "flockd_task_proposals_rejected", "flockd_task_votes_revealed",
    "flockd_task_slashes",
}


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def counted(name: str, **counts: int) -> Counters:
    counters = Counters()
    for key, amount in counts.items():
        counters.incr(key, amount)
    return counters


class StandInNode:
    """Plain objects in the shape the collector reads (the services themselves need a mesh)."""

    def __init__(self) -> None:
        self.p2p = SimpleNamespace(peers=lambda: ["a", "b"], counters=counted("p2p", peers_banned=2, stream_bytes_in=1000))
        self.chain_service = None
        self.chain_backend = None
        runner = SimpleNamespace(
            machine=SimpleNamespace(current_round=3, finished=False), counters=counted("runner", action_failures=1)
        )
        self.tasks = SimpleNamespace(runners={7: runner}, counters=counted("tasks", action_failures=4))

    def rpc_error_counts(self) -> dict[tuple[str, int], int]:
        return {("control", -32601): 5, ("eth", 3): 1}


def scrape(collector: NodeCollector) -> dict[str, list]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return families(generate_latest(registry).decode())


def test_every_service_counter_is_exported_with_its_service_and_task():
    node = StandInNode()
    collector = NodeCollector(node, confirmations=2)  # type: ignore[arg-type]
    found = scrape(collector)
    assert [s.value for s in found["flockd_peers"]] == [2]
    assert {(s.labels["service"], s.labels["task"], s.value) for s in found["flockd_action_failures"]} == {
        ("tasks", "", 4), ("runner", "7", 1),
    }
    assert [(s.name, s.labels, s.value) for s in found["flockd_peers_banned"]] == [
        ("flockd_peers_banned_total", {"service": "p2p", "task": ""}, 2),
    ]
    errors = {(s.labels["endpoint"], s.labels["code"]): s.value for s in found["flockd_rpc_errors"]}
    assert errors == {("control", "-32601"): 5, ("eth", "3"): 1}
    assert [(s.labels, s.value) for s in found["flockd_task_round"]] == [({"task": "7"}, 3)]
    # A counter a service starts keeping later appears without touching the collector.
    node.p2p.counters.incr("gossip_dropped", 9)
    assert [s.value for s in scrape(collector)["flockd_gossip_dropped"]] == [9]
    # One that is not a metric name, or would shadow one of ours, is left out.
    node.p2p.counters.incr("Bad-Name")
    node.p2p.counters.incr("rpc_errors")
    again = scrape(collector)
    assert all(s.labels.get("service") != "p2p" for s in again["flockd_rpc_errors"])


def test_the_serving_api_counters_are_exported_when_it_runs():
    node = StandInNode()
    collector = NodeCollector(node, confirmations=2)  # type: ignore[arg-type]
    assert "flockd_generations_cancelled" not in scrape(collector)  # no [serve]: no serve_app
    node.serve_app = SimpleNamespace(counters=counted("serve", generations_cancelled=2, queue_full=1))  # type: ignore[attr-defined]
    found = scrape(collector)
    assert [(s.labels["service"], s.value) for s in found["flockd_generations_cancelled"]] == [("serve", 2)]
    assert [(s.labels["service"], s.value) for s in found["flockd_queue_full"]] == [("serve", 1)]


def test_the_market_and_arena_counters_are_exported():
    from flockd.market.held import HeldModels
    from flockd.market.service import MarketService

    node = StandInNode()
    collector = NodeCollector(node, confirmations=2)  # type: ignore[arg-type]
    market = MarketService(None, None, HeldModels(Path("unused")))  # type: ignore[arg-type]  # counters only
    for name, times in (("market_listed", 1), ("market_fetched", 2), ("market_models_refused", 3),
                        ("market_lineage_failures", 4)):
        market.counters.incr(name, times)
    node.market = market  # type: ignore[attr-defined]
    node.arena = SimpleNamespace(counters=counted("arena", action_failures=5, eval_sets_served=6,  # type: ignore[attr-defined]
                                                  eval_requests_refused=7))
    found = scrape(collector)
    for name, value in (("market_listed", 1), ("market_fetched", 2), ("market_models_refused", 3),
                        ("market_lineage_failures", 4), ("eval_sets_served", 6), ("eval_requests_refused", 7)):
        assert [(s.name, s.labels["service"], s.value) for s in found[f"flockd_{name}"]] == [
            (f"flockd_{name}_total", "arena" if name.startswith("eval") else "market", value)]
    assert ("arena", "", 5) in {(s.labels["service"], s.labels["task"], s.value) for s in found["flockd_action_failures"]}


def test_task_events_are_tallied():
    tally = TaskTally()
    tally.count("RoundFinalised", {"accepted_mask": 0b101, "n_proposals": 4})
    tally.count("VoteRevealed", {"voter": "0x"})
    tally.count("VoteRevealed", {"voter": "0x"})
    tally.count("Slashed", {"amount": 1})
    tally.count("Proposed", {})  # not a tallied event
    assert tally == TaskTally(rounds_finalised=1, proposals_accepted=2, proposals_rejected=2, votes_revealed=2, slashes=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_daemon_serves_prometheus_text_with_every_family(short_tmp):
    cluster = Cluster(short_tmp, 1)
    cluster.init()
    d = cluster.daemons[0]
    metrics_port, http_port = free_port(), free_port()
    cluster.start_daemon(
        d, bootstrap=None, extra_args=("--metrics-port", str(metrics_port), "--chain-http", str(http_port))
    )
    try:
        cluster.wait_ready(d, 60)
        cluster.wait_for(lambda: d.call("chain_head")["number"] >= 1, 60, "a sealed block", d)
        with pytest.raises(Exception, match="method not found"):
            d.call("node_nope")
        bad = httpx.post(f"http://127.0.0.1:{http_port}", json={"jsonrpc": "2.0", "id": 1, "method": "eth_nope"})
        assert bad.json()["error"]["code"] == -32601

        reply = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        found = families(reply.text)
        assert set(found) >= NODE_FAMILIES
        assert [s.value for s in found["flockd_peers"]] == [0]
        assert found["flockd_chain_head"][0].value >= 1
        assert [s.value for s in found["flockd_chain_syncing"]] == [0]
        errors = {(s.labels["endpoint"], s.labels["code"]): s.value for s in found["flockd_rpc_errors"]}
        assert errors[("control", "-32601")] >= 1 and errors[("eth", "-32601")] >= 1
        # Only local names: a DNS-rebinding page cannot read it.
        rebound = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", headers={"host": "evil.example"})
        assert rebound.status_code == 403
    finally:
        assert cluster.stop() == [0]


@pytest.mark.slow
def test_the_task_families_agree_with_the_nodes_round_history(short_tmp):
    from flockd.testnet.task import TaskPlan, create_and_join

    cluster = Cluster(short_tmp, 3)
    cluster.init()
    d = cluster.daemons[0]
    port = free_port()
    config = d.datadir / "config.toml"
    config.write_text(config.read_text().replace("\nport = 0\n", f"\nport = {port}\n"))  # [metrics] port
    plan = TaskPlan(rounds=2, expected_proposers=2, propose_blocks=15, commit_blocks=8, reveal_blocks=8)
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        task_id = create_and_join(cluster, plan)

        def task_metrics() -> dict[str, float]:
            found = families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text)
            return {
                name: sum(s.value for s in samples if s.labels.get("task") == str(task_id))
                for name, samples in found.items() if name.startswith("flockd_task_")
            }

        def history() -> list[dict]:
            return d.call("task_status", {"task_id": task_id})["history"]

        cluster.wait_for(lambda: len(history()) == plan.rounds, 400, "every round in the history", d)
        cluster.wait_for(lambda: task_metrics()["flockd_task_rounds_finalised"] == plan.rounds, 60, "rounds tallied", d)
        figures, rounds = task_metrics(), history()
        assert figures["flockd_task_finished"] == 1
        assert figures["flockd_task_proposals_accepted"] == sum(r["accepted"] for r in rounds)
        assert figures["flockd_task_proposals_rejected"] == sum(r["rejected"] for r in rounds)
        if any(0 < r["proposals"] < len(cluster.daemons) for r in rounds):  # a round with voters to vote
            assert figures["flockd_task_votes_revealed"] >= 1
        assert families(httpx.get(f"http://127.0.0.1:{port}/metrics").text)["flockd_peers"][0].value == 2
    finally:
        assert cluster.stop() == [0, 0, 0]
