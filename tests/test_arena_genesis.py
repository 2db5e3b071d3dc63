"""The daemon's genesis holds the Arena; the token's and the registry's accounts are the
bytes they were without it (flockd.sim, whose chain has no Arena, relies on that)."""

from __future__ import annotations

from flockd.chain.client.addresses import ARENA_ADDRESS, STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.artifacts import ARENA, load
from flockd.chain.node.deploy import genesis_contracts
from flockd.chain.node.genesis import GenesisError
from flockd.chain.node.network import STAKE_FUNDS, network_genesis, parties_genesis

HOLDERS = ["0x" + "11" * 20, "0x" + "22" * 20]


def test_network_genesis_deploys_the_arena_at_its_address() -> None:
    genesis = network_genesis(HOLDERS, timestamp=1)
    # the runtime code, then the immutables (token, verifier) Vyper appends to it
    assert genesis.alloc[ARENA_ADDRESS].code.startswith(load(ARENA).bytecode_runtime)


def test_token_and_registry_bytes_do_not_change_with_the_arena() -> None:
    genesis = network_genesis(HOLDERS, timestamp=1)
    without = genesis_contracts({bytes.fromhex(h[2:]): STAKE_FUNDS for h in HOLDERS})
    for address in (STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS):
        assert genesis.alloc[address].code == without[address]["code"]
        assert dict(genesis.alloc[address].storage) == without[address]["storage"]


def test_a_party_cannot_take_the_arena_address() -> None:
    arena = "0x" + ARENA_ADDRESS.hex()
    try:
        parties_genesis(authorities=[arena], gas=[], stake=[], chain_id=7, block_period=1, timestamp=1)
    except GenesisError as exc:
        assert "the arena" in str(exc)
    else:
        raise AssertionError("the Arena's address was accepted as an authority")
