"""The scratch chain (`flockd.chain.node.deploy.ScratchChain`) under blocks fuller than
the gas target, as 256 simulated nodes' reveal blocks are."""

from __future__ import annotations

from eth.vm.forks.london.headers import calculate_expected_base_fee_per_gas
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd.chain.node.deploy import GAS_PRICE, ScratchChain

KEY = PrivateKey(keccak(b"scratch chain test"))
SENDER = KEY.public_key.to_canonical_address()
OTHER = b"\x42" * 20


def test_a_transaction_after_a_full_block_still_pays_the_base_fee() -> None:
    chain = ScratchChain(funded=[SENDER])
    # 700 kB of non-zero calldata (~28M gas under the calldata floor) fills a block well
    # past the 15M target; after two (the first from the genesis' lower fee) the next
    # block's base fee is above GAS_PRICE
    for _ in range(2):
        chain.transact(KEY, OTHER, b"\x01" * 700_000, gas=29_000_000).check()
    assert calculate_expected_base_fee_per_gas(chain.chain.get_canonical_head()) > GAS_PRICE
    result = chain.transact(KEY, OTHER, b"")
    result.check()
    assert chain.block_number == 3


def test_below_the_target_the_price_stays_the_fixed_one() -> None:
    chain = ScratchChain(funded=[SENDER])
    for _ in range(3):
        chain.transact(KEY, OTHER, b"").check()
    assert chain.gas_price() == GAS_PRICE
