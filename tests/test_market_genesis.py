"""The Market in the daemon's genesis: at MARKET_ADDRESS, listing the genesis registry's
tasks and the genesis Arena's winners, readable through its client on the embedded chain; the other genesis contracts
are byte for byte what `genesis_contracts` builds without it."""

from __future__ import annotations

from eth_account import Account
from eth_utils import keccak

from flockd.chain.client.addresses import ARENA_ADDRESS, MARKET_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.artifacts import MARKET, load
from flockd.chain.client.backends import InProcessBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.market import Market
from flockd.chain.node.deploy import genesis_contracts
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.network import STAKE_FUNDS, network_genesis

NODE = Account.from_key(keccak(b"market genesis node"))


def test_the_market_is_at_its_address_and_nothing_else_moved() -> None:
    genesis = network_genesis([NODE.address], timestamp=1_700_000_000)
    alloc = genesis.alloc
    # Vyper keeps immutables after the runtime code: the registry's address, then the Arena's
    assert alloc[MARKET_ADDRESS].code == (load(MARKET).bytecode_runtime + bytes(12) + TASK_REGISTRY_ADDRESS
                                          + bytes(12) + ARENA_ADDRESS)
    assert not alloc[MARKET_ADDRESS].storage
    before = genesis_contracts({bytes.fromhex(NODE.address[2:]): STAKE_FUNDS})
    for address, account in before.items():
        now = alloc[address]
        assert (now.code, dict(now.storage), now.balance, now.nonce) == (
            account["code"], account["storage"], account["balance"], account["nonce"])
    assert ARENA_ADDRESS in alloc and MARKET_ADDRESS != ARENA_ADDRESS  # both, each at its own address
    reloaded = Genesis.from_json(genesis.to_json())
    assert reloaded.alloc[MARKET_ADDRESS] == alloc[MARKET_ADDRESS]


async def test_the_client_reads_the_genesis_market() -> None:
    chain = EmbeddedChain(network_genesis([NODE.address], timestamp=1_700_000_000), None, None)
    try:
        market = Market(ContractClient(InProcessBackend.for_chain(chain), NODE), MARKET_ADDRESS)
        assert await market.has_code()
        assert await market.registry() == TASK_REGISTRY_ADDRESS
        assert await market.arena() == ARENA_ADDRESS
        assert await market.listing_count() == 0
        assert await market.get_listing(1) is None
        assert not await Market(market.client, bytes(19) + b"\x01").has_code()
    finally:
        chain.close()
