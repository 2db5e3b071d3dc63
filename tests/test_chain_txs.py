"""Transactions: admission checks, sealing, receipts, calls, logs, mempool order and limits."""

from __future__ import annotations

import pytest
import rlp
import vyper
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak, to_canonical_address
from store_contract import STORE_SOURCE

from flockd.chain.node.embedded import EmbeddedChain, InvalidBlockTx
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.mempool import (
    AlreadyKnown,
    BadTxSignature,
    ForbiddenTarget,
    GasTooHigh,
    GasTooLow,
    InsufficientFunds,
    MalformedTx,
    MempoolLimits,
    NonceGap,
    NonceTooLow,
    PendingTx,
    PoolFull,
    ReplacementUnderpriced,
    TxTooLarge,
    WrongChainId,
)
from flockd.chain.node.records import CallRequest, CallReverted, LogFilter

T0 = 1_700_000_000
CHAIN_ID = 4242
SEALER = keys.PrivateKey(b"\x01" * 32)
ALICE = Account.from_key(b"\x0a" * 32)
BOB = Account.from_key(b"\x0b" * 32)
POOR = Account.from_key(b"\x0c" * 32)
GWEI = 10**9



STORE = to_canonical_address("0x" + "57" * 20)


def make_chain(contracts: dict[bytes, bytes] | None = None, **kwargs) -> EmbeddedChain:
    """`contracts`: address -> runtime code, deployed at genesis (the only code a chain runs)."""
    alloc = {ALICE.address: {"balance": 10**21}, BOB.address: {"balance": 10**21}, POOR.address: {"balance": 10**6}}
    alloc |= {address: {"code": code} for address, code in (contracts or {}).items()}
    genesis = Genesis.create(
        chain_id=CHAIN_ID,
        authorities=[SEALER.public_key.to_canonical_address()],
        timestamp=T0,
        alloc=alloc,
    )
    return EmbeddedChain(genesis, None, SEALER, clock=lambda: float(T0 + 10**6), **kwargs)


def sign(account, nonce: int, chain_id: int = CHAIN_ID, **fields) -> bytes:
    tx = {
        "to": BOB.address, "value": 1, "gas": 21_000, "maxFeePerGas": 2 * GWEI,
        "maxPriorityFeePerGas": GWEI, "nonce": nonce, "chainId": chain_id, "type": 2,
    }
    tx.update(fields)
    return bytes(account.sign_transaction({k: v for k, v in tx.items() if v is not None}).raw_transaction)


def seal(chain: EmbeddedChain):
    return chain.seal_block(chain.next_seal_time(0))


def test_transfer_is_sealed_with_receipt_status_1():
    chain = make_chain()
    before = chain.balance(to_canonical_address(BOB.address))
    tx_hash = chain.add_transaction(sign(ALICE, 0, value=12345))
    assert chain.nonce(to_canonical_address(ALICE.address), "pending") == 1
    assert chain.get_receipt(tx_hash) is None and chain.get_transaction(tx_hash)[1] is None
    block = seal(chain)
    assert [tx.hash for tx in block.transactions] == [tx_hash]
    receipt = chain.get_receipt(tx_hash)
    assert receipt.status == 1 and receipt.gas_used == 21_000 and receipt.block_number == 1
    assert chain.balance(to_canonical_address(BOB.address)) == before + 12345
    assert len(chain.mempool) == 0 and chain.confirmations_of(tx_hash) == 1
    assert not chain.is_confirmed(tx_hash, 1)
    seal(chain)
    assert chain.is_confirmed(tx_hash, 1) and chain.confirmations_of(tx_hash) == 2


def test_bad_transactions_are_rejected_with_specific_errors():
    chain = make_chain()
    good = sign(ALICE, 0)
    fields = rlp.decode(good[1:])
    for index, value in ((-3, 7), (-1, 0), (-2, b"\xff" * 32)):  # y_parity 7, s = 0, r >= n
        forged = list(fields)
        forged[index] = value
        with pytest.raises(BadTxSignature):
            chain.add_transaction(good[:1] + rlp.encode(forged))
    with pytest.raises(WrongChainId):
        chain.add_transaction(sign(ALICE, 0, chain_id=1))
    legacy_no_chain = Account.sign_transaction(
        {"to": BOB.address, "value": 1, "gas": 21_000, "gasPrice": 2 * GWEI, "nonce": 0}, ALICE.key
    )
    with pytest.raises(WrongChainId):
        chain.add_transaction(bytes(legacy_no_chain.raw_transaction))
    with pytest.raises(NonceGap):
        chain.add_transaction(sign(ALICE, 1))
    with pytest.raises(TxTooLarge):
        chain.add_transaction(sign(ALICE, 0, data=b"\x01" * 200_000, gas=5_000_000))
    with pytest.raises(MalformedTx):
        chain.add_transaction(b"\x02\xc0garbage")
    with pytest.raises(GasTooLow):
        chain.add_transaction(sign(ALICE, 0, gas=20_000))
    with pytest.raises(GasTooLow):
        chain.add_transaction(sign(ALICE, 0, maxFeePerGas=1, maxPriorityFeePerGas=1))
    with pytest.raises(GasTooHigh):
        chain.add_transaction(sign(ALICE, 0, gas=10**9))
    with pytest.raises(InsufficientFunds):
        chain.add_transaction(sign(POOR, 0))

    tx_hash = chain.add_transaction(good)
    with pytest.raises(AlreadyKnown):
        chain.add_transaction(good)
    with pytest.raises(ReplacementUnderpriced):
        chain.add_transaction(sign(ALICE, 0, value=2, maxFeePerGas=2 * GWEI + 1))
    replacement = chain.add_transaction(sign(ALICE, 0, value=2, maxFeePerGas=3 * GWEI, maxPriorityFeePerGas=2 * GWEI))
    assert tx_hash not in chain.mempool and replacement in chain.mempool
    seal(chain)
    with pytest.raises(NonceTooLow):  # replaying the mined tx
        chain.add_transaction(sign(ALICE, 0, value=2, maxFeePerGas=3 * GWEI, maxPriorityFeePerGas=2 * GWEI))


def test_mempool_orders_by_nonce_and_price_and_enforces_limits():
    chain = make_chain(mempool_limits=MempoolLimits(max_per_sender=3, max_total=5))
    for nonce in range(3):
        chain.add_transaction(sign(ALICE, nonce, maxPriorityFeePerGas=GWEI // 10))
    with pytest.raises(PoolFull):
        chain.add_transaction(sign(ALICE, 3))
    chain.add_transaction(sign(BOB, 0, to=ALICE.address, maxPriorityFeePerGas=GWEI))
    chain.add_transaction(sign(BOB, 1, to=ALICE.address, maxPriorityFeePerGas=GWEI))
    with pytest.raises(PoolFull):
        chain.add_transaction(sign(BOB, 2, to=ALICE.address))
    block = seal(chain)
    senders = [(tx.sender, tx.nonce) for tx in block.transactions]
    bob, alice = to_canonical_address(BOB.address), to_canonical_address(ALICE.address)
    assert senders == [(bob, 0), (bob, 1), (alice, 0), (alice, 1), (alice, 2)]  # best tip first
    assert len(chain.mempool) == 0


def test_genesis_contract_call_estimate_logs_and_revert():
    compiled = vyper.compile_code(STORE_SOURCE, output_formats=["bytecode", "bytecode_runtime"])
    chain = make_chain({STORE: bytes.fromhex(compiled["bytecode_runtime"][2:])})
    with pytest.raises(ForbiddenTarget):  # only genesis code runs here
        chain.add_transaction(sign(ALICE, 0, to=None, value=0, gas=500_000, data=compiled["bytecode"]))
    address = STORE
    assert chain.code(address)
    store_selector = keccak(text="store(uint256)")[:4]
    alice = to_canonical_address(ALICE.address)

    call = CallRequest(to=address, sender=alice, data=store_selector + (7).to_bytes(32, "big"))
    gas = chain.estimate_gas(call)
    assert 21_000 < gas < 100_000
    with pytest.raises(CallReverted) as reverted:
        chain.call(CallRequest(to=address, sender=alice, data=store_selector + (13).to_bytes(32, "big")))
    assert abi_decode(["string"], reverted.value.data[4:]) == ("unlucky",)

    ok = chain.add_transaction(sign(ALICE, 0, to=address, value=0, gas=gas, data=call.data))
    bad = chain.add_transaction(sign(ALICE, 1, to=address, value=0, gas=gas, data=store_selector + (13).to_bytes(32, "big")))
    seal(chain)
    assert chain.get_receipt(ok).status == 1 and chain.get_receipt(bad).status == 0  # reverted, still included
    stored = chain.call(CallRequest(to=address, data=keccak(text="stored()")[:4]))
    assert int.from_bytes(stored, "big") == 7

    topic = keccak(text="Stored(address,uint256)")
    logs = chain.get_logs(LogFilter(from_block=0, to_block="latest", addresses=(address,), topics=((topic,),)))
    assert len(logs) == 1 and logs[0].tx_hash == ok and logs[0].topics[1][-20:] == alice
    assert int.from_bytes(logs[0].data, "big") == 7
    assert chain.get_logs(LogFilter(from_block=0, topics=(None, (b"\x00" * 32,)))) == []
    assert chain.get_receipt(ok).logs == tuple(logs)


def test_block_with_foreign_chain_tx_is_rejected_by_importers():
    sealer = make_chain()
    follower = make_chain()
    foreign = sealer._tx_builder.decode(sign(ALICE, 0, chain_id=1))
    # Smuggle it past add_transaction, as a malicious sealer would.
    sealer.mempool.add(
        PendingTx(foreign.hash, foreign.sender, 0, 2 * GWEI, GWEI, 21_000, 21_000 * 2 * GWEI + 1, b"", foreign), 0
    )
    block = seal(sealer)
    assert len(block.transactions) == 1
    with pytest.raises(InvalidBlockTx):
        follower.import_block(rlp.encode(block))
