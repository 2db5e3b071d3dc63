"""`scripts/bench replay`: a node's chain imported into a fresh one ends on the same head."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_keys import keys

from flockd.bench.chain import CHAIN_ID, T0, bench_accounts, sign_commits
from flockd.bench.replay import main, replay
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.network import GENESIS_FILE


def test_a_replay_imports_every_block_and_ends_on_the_sources_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    senders, alloc = bench_accounts(20)
    sealer = keys.PrivateKey(b"\x01" * 32)
    genesis = Genesis.create(
        chain_id=CHAIN_ID, authorities=[sealer.public_key.to_canonical_address()], timestamp=T0, alloc=alloc,
    )
    datadir = tmp_path / "node0"
    (datadir / "chain").mkdir(parents=True)
    genesis.write(datadir / GENESIS_FILE)
    node = EmbeddedChain(genesis, datadir / "chain" / "chain.sqlite", sealer)
    raw_txs = sign_commits(senders, 20)
    for start in (0, 10):
        for raw in raw_txs[start:start + 10]:
            node.add_transaction(raw)
        slot = node.next_seal_time(0)
        assert slot is not None
        node.seal_block(slot)
    node.close()
    # one run of each mode, each in a child process (installing the caches here would
    # leave them in place for the rest of this test process)
    assert main([str(tmp_path), "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 blocks, 20 transactions" in out and "cached / stock" in out
    figures = replay(datadir, "stock")
    assert figures["blocks"] == 2 and figures["txs"] == 20
