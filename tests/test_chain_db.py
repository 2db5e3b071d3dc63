"""On-disk state: sqlite batches are atomic across kill -9; a chain reopens at its head; genesis files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from eth_account import Account
from eth_keys import keys
from eth_utils import to_canonical_address, to_checksum_address

from flockd.chain.node.db import SqliteDB
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis, GenesisError, GenesisMismatch
from flockd.chain.node.poa import genesis_hash

T0 = 1_600_000_000
SEALER = keys.PrivateKey(b"\x01" * 32)
ALICE = Account.from_key(b"\x0a" * 32)
SINK = to_checksum_address("0x" + "5a" * 20)


def make_genesis(**overrides) -> Genesis:
    args = dict(
        chain_id=4242,
        authorities=[SEALER.public_key.to_canonical_address()],
        timestamp=T0,
        alloc={ALICE.address: {"balance": 10**21}},
    )
    args.update(overrides)
    return Genesis.create(**args)


def test_sqlite_db_batches_and_rollback(tmp_path):
    db = SqliteDB(tmp_path / "kv.db")
    db[b"a"] = b"1"
    with db.atomic_batch() as batch:
        batch[b"b"] = b"2"
        del batch[b"a"]
        assert b"a" not in batch and batch[b"b"] == b"2"
        assert b"b" not in db  # not visible before commit
    assert b"a" not in db and db[b"b"] == b"2"
    with pytest.raises(RuntimeError), db.atomic_batch() as batch:
        batch[b"c"] = b"3"
        raise RuntimeError("abort")
    assert b"c" not in db
    with pytest.raises(KeyError):
        del db[b"missing"]


def _run_until(code: str, ready_line: int) -> list[str]:
    """Run `code` in a subprocess, read lines until `ready_line` of them, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        while len(lines) < ready_line:
            line = proc.stdout.readline()
            assert line, "writer died early"
            lines.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    return lines


def test_kill_9_leaves_each_batch_whole_or_absent(tmp_path):
    path = tmp_path / "kv.db"
    code = textwrap.dedent(f"""
        from flockd.chain.node.db import SqliteDB
        db = SqliteDB({str(path)!r})
        i = 0
        while True:
            with db.atomic_batch() as b:
                for j in range(200):
                    b[b"k%d-%d" % (i, j)] = b"x" * 100
                b[b"last"] = str(i).encode()
            print(i, flush=True)
            i += 1
    """)
    printed = _run_until(code, 20)
    db = SqliteDB(path)
    last = int(db[b"last"])
    assert last >= int(printed[-1])  # everything it reported committed is there
    for i in range(last + 1):
        assert all(db.exists(b"k%d-%d" % (i, j)) for j in (0, 199))
    # The batch in flight when killed: entirely absent.
    assert not any(db.exists(b"k%d-%d" % (last + 1, j)) for j in range(200))


def test_chain_killed_mid_sealing_reopens_consistent(tmp_path):
    genesis_path = tmp_path / "genesis.json"
    make_genesis().write(genesis_path)
    db_path = tmp_path / "chain.db"
    code = textwrap.dedent(f"""
        from eth_account import Account
        from eth_keys import keys
        from flockd.chain.node.embedded import EmbeddedChain
        from flockd.chain.node.genesis import Genesis
        chain = EmbeddedChain(Genesis.load({str(genesis_path)!r}), {str(db_path)!r}, keys.PrivateKey(b"\\x01" * 32))
        alice = Account.from_key(b"\\x0a" * 32)
        nonce = 0
        while True:
            tx = alice.sign_transaction(dict(to={SINK!r}, value=1, gas=21000, gasPrice=10**10,
                                             nonce=nonce, chainId=4242))
            chain.add_transaction(bytes(tx.raw_transaction))
            nonce += 1
            block = chain.seal_block(chain.next_seal_time(0))
            print(block.number, flush=True)
    """)
    printed = _run_until(code, 15)
    chain = EmbeddedChain(Genesis.load(genesis_path), db_path, SEALER)
    head = chain.head.block_number
    assert head >= int(printed[-1])
    # One 1-wei transfer per block: the state matches the head exactly.
    assert chain.balance(to_canonical_address(SINK)) == head
    assert chain.nonce(to_canonical_address(ALICE.address)) == head
    assert chain.seal_block(chain.next_seal_time(0)).number == head + 1
    chain.close()


def test_reopen_restores_head_and_state(tmp_path):
    genesis = make_genesis()
    chain = EmbeddedChain(genesis, tmp_path / "c.db", SEALER)
    tx = ALICE.sign_transaction(dict(to=SINK, value=5, gas=21000, gasPrice=10**10, nonce=0, chainId=4242))
    chain.add_transaction(bytes(tx.raw_transaction))
    for _ in range(3):
        chain.seal_block(chain.next_seal_time(0))
    head = chain.head
    chain.close()
    again = EmbeddedChain(genesis, tmp_path / "c.db", SEALER)
    assert again.head == head and again.genesis_hash == genesis_hash(genesis)
    assert again.balance(to_canonical_address(SINK)) == 5
    assert again.get_receipt(tx.hash).status == 1
    again.close()
    with pytest.raises(GenesisMismatch):
        EmbeddedChain(make_genesis(chain_id=4243), tmp_path / "c.db", SEALER)


def test_genesis_file_roundtrip_and_hash(tmp_path):
    genesis = make_genesis(alloc={ALICE.address: {"balance": 10**21, "code": "0x6001", "storage": {"0x01": "0x02"}}})
    path = tmp_path / "genesis.json"
    genesis.write(path)
    with pytest.raises(FileExistsError):
        genesis.write(path)
    loaded = Genesis.load(path)
    assert loaded == genesis and genesis_hash(loaded) == genesis_hash(genesis)
    # Every consensus field changes the hash, not just alloc.
    assert genesis_hash(make_genesis(block_period=2)) != genesis_hash(make_genesis())
    assert genesis_hash(make_genesis(authorities=[b"\x02" * 20])) != genesis_hash(make_genesis())
    assert Genesis.from_json(genesis.to_json()) == genesis


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g.pop("authorities"), "missing field"),
        (lambda g: g.update(extra=1), "unknown field"),
        (lambda g: g.update(format="geth"), "format"),
        (lambda g: g.update(authorities=[]), "at least one"),
        (lambda g: g.update(authorities=["0x12"]), "not an address"),
        (lambda g: g.update(authorities=[g["authorities"][0]] * 2), "duplicate"),
        (lambda g: g.update(chain_id=True), "expected an integer"),
        (lambda g: g.update(block_period=0), "out of range"),
        (lambda g: g.update(gas_limit=10), "out of range"),
        (lambda g: g.update(alloc={"0x" + "11" * 20: {"balance": "lots"}}), "hex quantity"),
        (lambda g: g.update(alloc={"0x" + "11" * 20: {"code": "0x123"}}), "hex digits"),
        (lambda g: g.update(alloc={"0x" + "11" * 20: {"bal": 1}}), "unknown field"),
    ],
)
def test_genesis_errors_name_the_field(mutate, message):
    obj = json.loads(make_genesis().to_json())
    mutate(obj)
    with pytest.raises(GenesisError, match=message):
        Genesis.from_json(json.dumps(obj))


def test_genesis_rejects_non_json_and_oversize():
    with pytest.raises(GenesisError, match="not valid JSON"):
        Genesis.from_json(b"{nope")
    with pytest.raises(GenesisError, match="JSON object"):
        Genesis.from_json("[]")
    with pytest.raises(GenesisError, match="too large"):
        Genesis.from_json(b" " * (64 * 1024 * 1024 + 1))
