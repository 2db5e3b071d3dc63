"""`scripts/bench replay WORKDIR`: a daemon's block import, with and without its py-evm caches.

Every daemon re-executes every block of the chain it follows; at 32 daemons on one machine
that was half of a daemon's CPU (docs/benchmarks.md, "32 daemons"). This replays a testnet
node's chain (WORKDIR/node0's genesis and chain database, as `scripts/testnet --workdir
WORKDIR` leaves them once it has stopped its daemons) into a fresh in-memory EmbeddedChain
and times `import_block` over every block: the PoA checks, the transactions' checks and
py-evm's execution, as a follower does them. Child processes alternate between

  stock    py-evm's hashing and trie walks as shipped (the baseline)
  cached   flockd.chain.node.evm_caches installed at the daemon's sizes, as `flockd run` does

and each must end on the source's head hash.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rlp

from flockd.chain.node import evm_caches
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.network import GENESIS_FILE

MODES = ("stock", "cached")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench replay")
    parser.add_argument("workdir", type=Path, help="a stopped testnet's workdir (scripts/testnet --workdir)")
    parser.add_argument("--node", default="node0", help="whose chain to replay (default node0)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, alternating (default 3)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    datadir = args.workdir / args.node
    if not (datadir / GENESIS_FILE).is_file() or not (datadir / "chain" / "chain.sqlite").is_file():
        parser.error(f"{datadir} holds no genesis and chain database (scripts/testnet --workdir {args.workdir})")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.child:
        print(json.dumps(replay(datadir, args.child)))
        return 0
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for run in range(args.runs):
        # stock, cached, then cached, stock: neither mode always goes first
        for mode in MODES if run % 2 == 0 else MODES[::-1]:
            child = [sys.executable, "-m", "flockd.bench", "replay", str(args.workdir), "--node", args.node, "--child", mode]
            out = subprocess.run(child, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"replay ({mode}) failed:\n{out.stderr}", file=sys.stderr)
                return 1
            results[mode].append(json.loads(out.stdout))
    first = results["stock"][0]
    print(f"replay bench: {args.node}'s chain, {first['blocks']:.0f} blocks, {first['txs']:.0f} transactions, "
          f"imported into a fresh in-memory chain; {args.runs} runs each, alternating")
    print(f"  {'mode':<8} {'import s (median)':>18} {'blocks/s':>9} {'tx/s':>7}   each run")
    medians = {}
    for mode in MODES:
        seconds = [r["seconds"] for r in results[mode]]
        medians[mode] = statistics.median(seconds)
        each = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"  {mode:<8} {medians[mode]:18.2f} {first['blocks'] / medians[mode]:9.1f} "
              f"{first['txs'] / medians[mode]:7.0f}   {each}")
    print(f"  cached / stock: {medians['cached'] / medians['stock']:.2f} of the time")
    return 0


def replay(datadir: Path, mode: str) -> dict[str, float]:
    """Import every block of ``datadir``'s canonical chain into a fresh chain. The source
    database is copied first (sqlite's backup, which takes its write-ahead log along), so a
    replay never writes to a node's own; the caches go in only after the source is read,
    so that reading it does not warm them."""
    genesis = Genesis.load(datadir / GENESIS_FILE)
    with tempfile.TemporaryDirectory(prefix="flockd-bench-replay-") as tmp:
        copy = Path(tmp) / "chain.sqlite"
        with contextlib.closing(sqlite3.connect(datadir / "chain" / "chain.sqlite")) as src, \
                contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        source = EmbeddedChain(genesis, copy)
        head = source.head
        blocks, txs = [], 0
        for number in range(1, head.block_number + 1):
            block = source.get_block_by_number(number)
            assert block is not None, f"block {number} missing from the source"
            blocks.append(rlp.encode(block))
            txs += len(block.transactions)
        source.close()
    if not blocks:
        raise SystemExit(f"{datadir}'s chain has no block beyond its genesis")
    if mode == "cached":
        evm_caches.install(evm_caches.DAEMON_SIZES)
    follower = EmbeddedChain(genesis, None)
    start = time.perf_counter()
    for raw in blocks:
        follower.import_block(raw)
    seconds = time.perf_counter() - start
    if follower.head.hash != head.hash:
        raise SystemExit(f"replay ended on {follower.head.hash.hex()}, the source's head is {head.hash.hex()}")
    follower.close()
    return {"seconds": seconds, "blocks": len(blocks), "txs": txs}
