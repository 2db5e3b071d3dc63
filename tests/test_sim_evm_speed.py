"""The simulation's py-evm speed-ups compute exactly what py-evm computed without them.

flockd.sim.evm_speed replaces eth-hash's keccak and the hexary trie's node decoding for the
whole process, and the simulation's chain answers reads at one head from one shared
state; each is checked here against the original code path on the same inputs.
"""

from __future__ import annotations

import random

from Crypto.Hash import keccak as pycryptodome_keccak
from trie import HexaryTrie

from flockd.chain.node.deploy import ScratchChain
from flockd.sim import evm_speed
from flockd.sim.chain import REGISTRY, SimChain
from flockd.sim.config import SimConfig
from flockd.sim.run import Simulation


def reference_keccak(data: bytes) -> bytes:
    return pycryptodome_keccak.new(data=data, digest_bits=256).digest()


def test_keccak_matches_pycryptodome_at_every_length_across_the_rate() -> None:
    rng = random.Random(7)
    for length in [*range(0, 300), 1000, 4096, 65_537]:
        data = rng.randbytes(length)
        assert evm_speed.keccak256(data) == reference_keccak(data)
        assert evm_speed.keccak256(bytearray(data)) == reference_keccak(data)


def test_installed_keccak_is_the_one_eth_hash_and_eth_utils_use() -> None:
    from eth_hash.auto import keccak
    from eth_utils import keccak as utils_keccak

    evm_speed.install()
    assert keccak.hasher is evm_speed.keccak256
    assert keccak(b"flockd") == utils_keccak(b"flockd") == reference_keccak(b"flockd")


class _PlainTrie(HexaryTrie):
    get_node = evm_speed._original_get_node  # type: ignore[assignment]


class _CachedTrie(HexaryTrie):
    get_node = evm_speed.get_node  # type: ignore[assignment]


def test_trie_with_kept_decodings_matches_the_plain_trie_through_sets_and_deletes() -> None:
    """Short keys and values make embedded nodes (edited in place by the trie's writers),
    so a shared decoding that leaked into an edit would show as a different root."""
    rng = random.Random(3)
    plain, cached = _PlainTrie({}), _CachedTrie({})
    keys = [rng.randbytes(rng.choice((1, 2, 32))) for _ in range(300)]
    for step in range(3000):
        key = rng.choice(keys)
        if rng.random() < 0.25:
            for trie in (plain, cached):
                if trie.get(key):
                    del trie[key]
        else:
            value = rng.randbytes(rng.choice((1, 3, 40)))
            plain[key] = value
            cached[key] = value
        assert plain.root_hash == cached.root_hash, step
        if step % 100 == 0:
            assert all(plain.get(k) == cached.get(k) for k in keys)


def test_a_read_at_the_head_is_what_a_fresh_costless_state_returns() -> None:
    sim = Simulation(SimConfig(nodes=3, rounds=1, expected_proposers=1, seed=0))
    sim.run()
    chain: SimChain = sim.chain
    scratch = chain.scratch
    addresses = [n.address for n in sim.nodes]
    assert chain.view("get_participant", sim.task_id, addresses[1])[2] > 0  # a stake to read
    for _ in range(2):
        for address in addresses:
            data = REGISTRY.encode_call("get_participant", sim.task_id, address)
            assert scratch.call(chain.registry, data) == ScratchChain.call(scratch, chain.registry, data)
        data = REGISTRY.encode_call("task_count")
        assert scratch.call(chain.registry, data) == ScratchChain.call(scratch, chain.registry, data)
        scratch.mine_empty(1)  # a new head: the shared state and the answers kept are dropped
