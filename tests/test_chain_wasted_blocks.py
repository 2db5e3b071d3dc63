"""Wasted blocks: a sealer cannot make every node burn seconds re-executing its block.

Only the genesis contracts ever run (no contract creation, no direct precompile calls), and
no transaction may carry more gas than the protocol's heaviest call needs. Both are judged
on the transaction alone, so an importer refuses such a block before executing any of it,
and every node's pool (and JSON-RPC) refuses such a transaction up front.
"""

from __future__ import annotations

import json

import pytest
import rlp
from eth_account import Account
from eth_keys import keys
from eth_utils import to_checksum_address

from flockd.chain.ethrpc.eth_api import EthAPI
from flockd.chain.node.embedded import (
    MAX_BLOCK_TXS,
    MAX_TX_GAS,
    EmbeddedChain,
    InvalidBlockTx,
    TooManyTxs,
)
from flockd.chain.node.genesis import Genesis, GenesisError
from flockd.chain.node.mempool import ForbiddenTarget, GasTooHigh, PendingTx
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS

T0 = 1_700_000_000
CHAIN_ID = 4242
SEALER = keys.PrivateKey(b"\x01" * 32)
MALLORY = Account.from_key(b"\x0d" * 32)
BOB = Account.from_key(b"\x0b" * 32)
GWEI = 10**9
JUMP_LOOP = bytes.fromhex("5b600056")  # JUMPDEST PUSH1 0 JUMP: loops until the gas runs out
EC_PAIRING = "0x" + "00" * 19 + "08"
FILLERS = [Account.from_key(bytes([0x20 + i]) * 32) for i in range(5)]  # 5 x 64 pending txs each


def make_chain() -> EmbeddedChain:
    genesis = Genesis.create(
        chain_id=CHAIN_ID,
        authorities=[SEALER.public_key.to_canonical_address()],
        timestamp=T0,
        alloc={a.address: {"balance": 10**21} for a in [MALLORY, *FILLERS]},
    )
    return EmbeddedChain(genesis, None, SEALER, clock=lambda: float(T0 + 10**6))


def transfers(count: int) -> list[bytes]:
    """`count` plain transfers, round-robin over FILLERS (the pool holds 64 per sender)."""
    return [sign(i // len(FILLERS), FILLERS[i % len(FILLERS)], value=1) for i in range(count)]


def sign(nonce: int, account=MALLORY, **fields) -> bytes:
    tx = {
        "to": BOB.address, "value": 0, "gas": 21_000, "maxFeePerGas": 2 * GWEI,
        "maxPriorityFeePerGas": GWEI, "nonce": nonce, "chainId": CHAIN_ID, "type": 2,
    }
    tx.update(fields)
    return bytes(account.sign_transaction({k: v for k, v in tx.items() if v is not None}).raw_transaction)


HOSTILE = {
    # A contract whose constructor loops: every importer would run it to the last gas unit.
    "creates a looping contract": dict(to=None, data=JUMP_LOOP, gas=1_000_000),
    # py-evm's pairing check is pure Python: seconds of CPU for its gas.
    "calls a precompile": dict(to=EC_PAIRING, data=b"", gas=100_000),
    "calls the VRF precompile": dict(to=to_checksum_address(VRF_PRECOMPILE_ADDRESS), data=bytes(144), gas=100_000),
    # A plain transfer costs 21,000 whatever it carries; more gas than the cap is never needed.
    "carries gas above the cap": dict(gas=MAX_TX_GAS + 1),
}


def smuggled_block(raw: bytes):
    """A block sealed by an authority that put `raw` in its own pool past the checks, as a
    malicious (or compromised) sealer would."""
    sealer = make_chain()
    tx = sealer._tx_builder.decode(raw)
    sealer.mempool.add(PendingTx(tx.hash, tx.sender, tx.nonce, 2 * GWEI, GWEI, tx.gas, tx.gas * 2 * GWEI, raw, tx), 0)
    block = sealer.seal_block(sealer.next_seal_time(0))
    assert len(block.transactions) == 1
    return block


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_block_with_a_transaction_that_may_not_run_is_refused_before_execution(case, monkeypatch):
    block = smuggled_block(sign(0, **HOSTILE[case]))
    follower = make_chain()
    executed = []
    real_import = follower._chain.import_block
    monkeypatch.setattr(follower._chain, "import_block", lambda *a, **k: executed.append(1) or real_import(*a, **k))
    with pytest.raises(InvalidBlockTx, match="ForbiddenTarget|GasTooHigh"):
        follower.import_block(rlp.encode(block))
    assert executed == []  # refused on the transaction alone: nothing was executed
    assert follower.head.block_number == 0


@pytest.mark.parametrize("case", list(HOSTILE))
def test_the_pool_and_json_rpc_refuse_what_no_block_may_carry(case):
    chain = make_chain()
    raw = sign(0, **HOSTILE[case])
    expected = GasTooHigh if "gas" in case else ForbiddenTarget
    with pytest.raises(expected):
        chain.add_transaction(raw)
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": ["0x" + raw.hex()]}
    reply = json.loads(EthAPI(chain).handle_body(json.dumps(body).encode()))
    assert reply["error"]["code"] == -32000
    assert reply["error"]["message"].startswith(f"{expected.__name__}: ")
    assert len(chain.mempool) == 0


def test_transfers_at_the_cap_still_go_through():
    chain = make_chain()
    chain.add_transaction(sign(0, gas=MAX_TX_GAS, value=5))
    chain.add_transaction(sign(1, gas=30_000, data=b"note", value=0))  # calldata to an account: no code runs
    block = chain.seal_block(chain.next_seal_time(0))
    assert len(block.transactions) == 2
    follower = make_chain()
    assert follower.import_block(rlp.encode(block)).new_head


def test_a_block_with_more_transactions_than_the_cap_is_refused_before_execution(monkeypatch):
    # The cheapest valid txs (21,000-gas transfers) still cost every importer a signature
    # check and a py-evm execution each: a 30M-gas block held 1428 of them.
    sealer = make_chain()
    sealer.max_block_txs = MAX_BLOCK_TXS + 1  # a sealer that ignores the rule
    for raw in transfers(MAX_BLOCK_TXS + 1):
        sealer.add_transaction(raw)
    block = sealer.seal_block(sealer.next_seal_time(0))
    assert len(block.transactions) == MAX_BLOCK_TXS + 1
    follower = make_chain()
    executed = []
    real_import = follower._chain.import_block
    monkeypatch.setattr(follower._chain, "import_block", lambda *a, **k: executed.append(1) or real_import(*a, **k))
    with pytest.raises(TooManyTxs):
        follower.import_block(rlp.encode(block))
    assert executed == [] and follower.head.block_number == 0


def test_an_honest_sealer_stops_at_the_cap():
    chain = make_chain()
    for raw in transfers(MAX_BLOCK_TXS + 1):
        chain.add_transaction(raw)
    first = chain.seal_block(chain.next_seal_time(0))
    second = chain.seal_block(chain.next_seal_time(0))
    assert (len(first.transactions), len(second.transactions)) == (MAX_BLOCK_TXS, 1)


@pytest.mark.parametrize("gas_limit", [MAX_TX_GAS - 1, 30_000_001, 10**9])
def test_a_genesis_block_gas_limit_outside_the_matched_range_is_refused(gas_limit):
    # Below the per-tx cap the protocol's heaviest call could not be sent; above 30M a
    # block could ask every node for more re-execution than the bench figures cover.
    with pytest.raises(GenesisError, match="gas_limit"):
        Genesis.create(chain_id=CHAIN_ID, authorities=[SEALER.public_key.to_canonical_address()], timestamp=T0,
                       gas_limit=gas_limit)
