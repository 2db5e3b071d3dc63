"""The Market's genesis account: its constructor run on a scratch chain of its own.

Kept apart from `deploy.genesis_contracts` so that the token's and the registry's accounts,
and the Arena's address, are byte for byte what they were: the Market is created by its
own deployer (addresses.MARKET_DEPLOYER, nonce 0) and only stores the registry's and the
Arena's addresses (as immutables, after its runtime code).
"""

from __future__ import annotations

from functools import cache

from flockd.chain.client.addresses import (
    ARENA_ADDRESS,
    MARKET_ADDRESS,
    MARKET_DEPLOYER,
    MARKET_DEPLOYER_KEY,
    TASK_REGISTRY_ADDRESS,
)
from flockd.chain.client.artifacts import MARKET, load
from flockd.chain.node.deploy import GenesisAccount, ScratchChain


@cache
def market_genesis(registry: bytes = TASK_REGISTRY_ADDRESS, arena: bytes = ARENA_ADDRESS) -> dict[bytes, GenesisAccount]:
    """{MARKET_ADDRESS: its account}, listing the tasks of `registry` and the winners of `arena`."""
    scratch = ScratchChain(funded=[MARKET_DEPLOYER])
    address = scratch.deploy(MARKET_DEPLOYER_KEY, load(MARKET), registry, arena)
    assert address == MARKET_ADDRESS
    return {address: scratch.dump(address)}
