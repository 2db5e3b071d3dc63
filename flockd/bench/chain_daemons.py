"""`scripts/bench chain_daemons`: vote-commit txs through two real daemons, against raw
py-evm `mine_all` of the same txs in the same run.

Path measured: sign (eth-account) -> eth_sendRawTransaction over node0's HTTP JSON-RPC ->
node0's mempool -> tx gossip -> whichever authority's slot comes -> seal -> block gossip ->
import on the other node -> every receipt visible through node1's control socket
(`chain_tx`). Blocks are 1 s slots, so the figure includes waiting for slots: it is the
throughput a client sees, not the execution rate (`scripts/bench chain` has that).
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import httpx

from flockd.bench.chain import bench_accounts, sign_commits, time_mine_all
from flockd.chain.node.network import install_genesis, network_genesis
from flockd.testnet.cluster import Cluster


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench chain_daemons")
    parser.add_argument("--txs", type=int, default=300, help="vote-commit txs to send (default 300)")
    args = parser.parse_args(argv)
    senders, extra = bench_accounts(args.txs)
    with tempfile.TemporaryDirectory(prefix="fl-bench-", dir="/tmp") as tmp:
        cluster = Cluster(Path(tmp), 2)
        cluster.init()
        genesis = network_genesis([d.address for d in cluster.daemons], extra_alloc=extra)
        for d in cluster.daemons:
            install_genesis(d.datadir, genesis, replace=True)
        raw_txs = sign_commits(senders, args.txs, chain_id=genesis.chain_id)
        baseline = time_mine_all(genesis, raw_txs)
        port = _free_port()
        first, second = cluster.daemons
        try:
            cluster.start_daemon(first, bootstrap=None, extra_args=("--chain-http", str(port)))
            cluster.wait_ready(first, 60)
            cluster.start_daemon(second, bootstrap=cluster.bootstrap_addr())
            cluster.wait_ready(second, 60)
            cluster.wait_full_mesh(60)
            seconds, blocks = _send_and_wait(f"http://127.0.0.1:{port}", raw_txs, second)
        finally:
            cluster.stop()
    print(f"chain bench through daemons: {args.txs} vote-commit txs, 2 authorities, 1 s slots")
    print(f"  {'path':<58} {'seconds':>8} {'tx/s':>8}")
    print(f"  {'baseline: py-evm mine_all (memory, one block)':<58} {baseline:8.3f} {args.txs / baseline:8.0f}")
    print(f"  {'flockd: HTTP send -> gossip -> seal -> import -> receipts':<58} {seconds:8.3f} {args.txs / seconds:8.0f}")
    print(f"  blocks used: {blocks}; ratio flockd/baseline: {baseline / seconds:.3f}")
    return 0


def _send_and_wait(url: str, raw_txs: list[bytes], follower: object) -> tuple[float, int]:
    start = time.perf_counter()
    hashes: list[str] = []
    with httpx.Client(timeout=30) as http:
        for i in range(0, len(raw_txs), 50):
            batch = [{"jsonrpc": "2.0", "id": j, "method": "eth_sendRawTransaction", "params": ["0x" + raw.hex()]}
                     for j, raw in enumerate(raw_txs[i:i + 50])]
            for reply in http.post(url, json=batch).json():
                if "result" not in reply:
                    raise SystemExit(f"bench: a tx was refused: {reply}")
                hashes.append(reply["result"])
    pending = list(hashes)
    blocks: set[int] = set()
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        still = []
        for tx_hash in pending:
            status = follower.call("chain_tx", {"tx_hash": tx_hash})  # type: ignore[attr-defined]
            if status["status"] in ("included", "confirmed"):
                blocks.add(status["block"])
            elif status["status"] == "failed":
                raise SystemExit(f"bench: tx {tx_hash} failed")
            else:
                still.append(tx_hash)
        pending = still
        if pending:
            time.sleep(0.05)
    if pending:
        raise SystemExit(f"bench: {len(pending)} txs never reached the follower")
    return time.perf_counter() - start, len(blocks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
