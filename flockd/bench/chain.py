"""`scripts/bench chain`: the embedded chain's own path against raw py-evm `mine_all`, same run.

Workload: N "vote commit"-shaped txs (each stores a bytes32 under the sender and emits an
event), from N/10 senders, into one block.

  baseline   py-evm MiningChain.mine_all of the signed txs, in memory (no checks, no disk)
  flockd     sign -> add_transaction (decode, signature, chain id, nonce, funds, mempool)
             -> seal_block (one pass, sqlite WAL on disk) -> follower import_block
             (PoA checks + re-execution, its own sqlite) -> get_receipt for every tx

plus empty-block seal and import rates, and a full block: MAX_BLOCK_TXS commit txs from
fresh senders, sealed and imported by a follower (only genesis code runs, a tx carries at
most MAX_TX_GAS and a block at most MAX_BLOCK_TXS txs, so per-tx work, not loops, is what
a sealer can pile up; protocol/spec/chain.md). Gossip is not in this path yet (the
p2p wiring is the daemon's); its cost is one envelope per tx and per block.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import rlp
import vyper
from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.vm.forks.prague import PragueVM
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from flockd.chain.node.embedded import MAX_BLOCK_TXS, EmbeddedChain
from flockd.chain.node.genesis import Genesis

COMMIT_SOURCE = """# pragma version ^0.4.0
event Committed:
    voter: indexed(address)
    digest: bytes32

commits: public(HashMap[address, bytes32])

@external
def commit(digest: bytes32):
    self.commits[msg.sender] = digest
    log Committed(voter=msg.sender, digest=digest)
"""
CONTRACT = to_checksum_address("0x" + "c0" * 20)
CHAIN_ID = 4242
T0 = 1_700_000_000
FULL_GAS_LIMIT = 30_000_000  # Genesis.create's default, as the daemon's genesis uses


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench chain")
    parser.add_argument("--txs", type=int, default=200, help="txs in the block (default 200)")
    parser.add_argument("--blocks", type=int, default=100, help="empty blocks to seal/import (default 100)")
    args = parser.parse_args(argv)

    senders, alloc = bench_accounts(args.txs)
    fillers = [Account.from_key(keccak(b"filler-%d" % i)) for i in range(-(-MAX_BLOCK_TXS // 64))]
    alloc |= {a.address: {"balance": 10**24} for a in fillers}
    sealer, follower_key = keys.PrivateKey(b"\x01" * 32), keys.PrivateKey(b"\x02" * 32)
    genesis = Genesis.create(
        chain_id=CHAIN_ID, authorities=[sealer.public_key.to_canonical_address()], timestamp=T0, alloc=alloc,
        gas_limit=FULL_GAS_LIMIT,
    )
    raw_txs = sign_commits(senders, args.txs)

    baseline = time_mine_all(genesis, raw_txs)
    with tempfile.TemporaryDirectory(prefix="flockd-bench-chain-") as tmp:
        node = EmbeddedChain(genesis, Path(tmp) / "sealer.db", sealer)
        follower = EmbeddedChain(genesis, Path(tmp) / "follower.db", follower_key)
        flockd, parts = time_flockd_path(node, follower, senders, args.txs)
        seal_rate, import_rate = time_empty_blocks(node, follower, args.blocks)
        full = time_full_block(node, follower, fillers)
        node.close()
        follower.close()

    print(f"chain bench: one block of {args.txs} commit txs from {len(senders)} senders")
    print(f"  {'path':<44} {'seconds':>8} {'tx/s':>8}")
    print(f"  {'baseline: py-evm mine_all (memory)':<44} {baseline:8.3f} {args.txs / baseline:8.0f}")
    print(f"  {'flockd: sign+admit+seal+import+receipts':<44} {flockd:8.3f} {args.txs / flockd:8.0f}")
    for name, seconds in parts.items():
        print(f"    {name:<42} {seconds:8.3f}")
    print(f"  empty blocks: seal {seal_rate:.0f}/s, import {import_rate:.0f}/s (sqlite WAL, {args.blocks} blocks)")
    txs, gas, sealed, imported = full
    print(f"  full block: {txs} commit txs (the cap), {gas:,} gas: seal {sealed:.3f} s, follower import {imported:.3f} s")
    return 0


def bench_accounts(txs: int) -> tuple[list[Any], dict[str, dict[str, Any]]]:
    """Funded senders (10 txs each) and the commit contract, as genesis alloc."""
    runtime = bytes.fromhex(vyper.compile_code(COMMIT_SOURCE, output_formats=["bytecode_runtime"])["bytecode_runtime"][2:])
    senders = [Account.from_key(keccak(b"bench-%d" % i)) for i in range(max(1, txs // 10))]
    alloc: dict[str, dict[str, Any]] = {a.address: {"balance": 10**24} for a in senders}
    alloc[CONTRACT] = {"code": runtime}
    return senders, alloc


def sign_commits(senders: list, count: int, first_nonce: int = 0, chain_id: int = CHAIN_ID) -> list[bytes]:
    raws = []
    selector = keccak(text="commit(bytes32)")[:4]
    for i in range(count):
        account = senders[i % len(senders)]
        tx = {
            "to": CONTRACT, "value": 0, "gas": 100_000, "maxFeePerGas": 2 * 10**9,
            "maxPriorityFeePerGas": 10**9, "nonce": first_nonce + i // len(senders), "chainId": chain_id,
            "data": selector + keccak(b"%d" % i), "type": 2,
        }
        raws.append(bytes(account.sign_transaction(tx).raw_transaction))
    return raws


def time_mine_all(genesis: Genesis, raw_txs: list[bytes]) -> float:
    chain_class = MiningChain.configure(vm_configuration=((0, PragueVM),), chain_id=genesis.chain_id)
    chain: Any = chain_class.from_genesis(
        AtomicDB(), {"difficulty": 0, "gas_limit": genesis.gas_limit, "timestamp": genesis.timestamp},
        cast(Any, genesis.state()),
    )
    builder = PragueVM.get_transaction_builder()
    txs = [builder.decode(raw) for raw in raw_txs]
    start = time.perf_counter()
    chain.mine_all(txs)
    return time.perf_counter() - start


def time_flockd_path(node: EmbeddedChain, follower: EmbeddedChain, senders: list, count: int) -> tuple[float, dict[str, float]]:
    parts: dict[str, float] = {}
    start = time.perf_counter()
    raw_txs = sign_commits(senders, count)
    parts["sign (eth-account)"] = time.perf_counter() - start
    mark = time.perf_counter()
    hashes = [node.add_transaction(raw) for raw in raw_txs]
    parts["add_transaction"] = time.perf_counter() - mark
    mark = time.perf_counter()
    block = node.seal_block(_next_slot(node))
    parts["seal_block"] = time.perf_counter() - mark
    mark = time.perf_counter()
    follower.import_block(rlp.encode(block))
    parts["follower import_block"] = time.perf_counter() - mark
    mark = time.perf_counter()
    receipts = [follower.get_receipt(h) for h in hashes]
    parts["get_receipt x N"] = time.perf_counter() - mark
    total = time.perf_counter() - start
    if len(block.transactions) != count or not all(r is not None and r.status == 1 for r in receipts):
        raise SystemExit("bench chain: not every tx was sealed successfully")
    return total, parts


def time_empty_blocks(node: EmbeddedChain, follower: EmbeddedChain, count: int) -> tuple[float, float]:
    blocks = []
    start = time.perf_counter()
    for _ in range(count):
        blocks.append(node.seal_block(_next_slot(node)))
    sealed = time.perf_counter() - start
    raws = [rlp.encode(b) for b in blocks]
    start = time.perf_counter()
    for raw in raws:
        follower.import_block(raw)
    imported = time.perf_counter() - start
    return count / sealed, count / imported


def time_full_block(node: EmbeddedChain, follower: EmbeddedChain, fillers: list) -> tuple[int, int, float, float]:
    """A block of MAX_BLOCK_TXS commit txs from fresh senders (each a fresh storage slot and a
    log): per-tx work, not gas, is what a block of cheap txs costs an importer."""
    count = node.max_block_txs
    for raw in sign_commits(fillers, count):
        node.add_transaction(raw)
    start = time.perf_counter()
    block = node.seal_block(_next_slot(node))
    sealed = time.perf_counter() - start
    raw_block = rlp.encode(block)
    start = time.perf_counter()
    follower.import_block(raw_block)
    imported = time.perf_counter() - start
    if len(block.transactions) != count:
        raise SystemExit(f"bench chain: the full block holds {len(block.transactions)} txs, expected {count}")
    return count, block.header.gas_used, sealed, imported


def _next_slot(node: EmbeddedChain) -> int:
    slot = node.next_seal_time(0)
    assert slot is not None, "the bench node is the only authority"
    return slot
