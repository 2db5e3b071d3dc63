"""The simulation's py-evm speed-ups compute exactly what py-evm computed without them.

flockd.sim.evm_speed runs the simulation's VM with a leaner interpreter loop and unpruned
storage tries, and the simulation's chain answers reads at one head from one shared state;
each is checked here against the original code path on the same inputs (the process-wide
caches of hashing and trie walks: tests/test_evm_caches.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd.chain.node.deploy import GenesisAccount, ScratchChain
from flockd.fl.attacks import parse_behaviour
from flockd.sim import chain as sim_chain
from flockd.sim import evm_speed
from flockd.sim.chain import REGISTRY, SimChain
from flockd.sim.config import SimConfig
from flockd.sim.run import Simulation


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


class _FastScratch(ScratchChain):
    def state_overrides(self, base_state: type[Any]) -> dict[str, Any]:
        return sim_chain._Chain.state_overrides(self, base_state)  # type: ignore[arg-type]


def _code(hex_ops: str) -> GenesisAccount:
    return GenesisAccount(code=bytes.fromhex(hex_ops), storage={}, balance=0, nonce=0)


# Runtime code, each at its own address: what the leaner loop must end exactly as py-evm does.
PROGRAMS = {
    "return calldata word + 1": "600035600101" "60005260206000f3",  # CALLDATALOAD 0, +1, MSTORE, RETURN 32
    "loop until out of gas": "5b600056",  # JUMPDEST, PUSH1 0, JUMP
    "invalid opcode": "6001fe",  # PUSH1 1, INVALID
    "undefined opcode": "60010c",  # PUSH1 1, 0x0c
    "bad jump": "600356",  # JUMP to 3 (no JUMPDEST)
    "stack underflow": "01",  # ADD on an empty stack
    "memory growth, reads inside and past it": "6001610400526104005160005260206000f3",
    "runs off the end": "6001600201",  # PUSH1 1, PUSH1 2, ADD, then past the end: STOP
    "revert with data": "60aa60005260206000fd",
    "store and log": "602a600055" "60006000a0" "600054600052" "60206000f3",
}


def test_fast_loop_ends_every_program_as_py_evm_does() -> None:
    """On py-evm's stock VM and on the simulation's (leaner loop, unpruned storage)."""
    key = PrivateKey(keccak(b"flockd evm speed test"))
    sender = key.public_key.to_canonical_address()
    addresses = {name: bytes([0xEE] * 19 + [i]) for i, name in enumerate(PROGRAMS)}
    alloc = {addresses[name]: _code(code) for name, code in PROGRAMS.items()}
    chains = [ScratchChain(funded=[sender], alloc=alloc), _FastScratch(funded=[sender], alloc=alloc)]
    for name in PROGRAMS:
        for gas in (21_170, 30_000, 200_000):  # intrinsic 21,140: 30 gas to run out of
            data = (7).to_bytes(32, "big")
            plain, fast = (chain.transact(key, addresses[name], data, gas=gas) for chain in chains)
            assert (fast.gas_used, fast.ok, fast.output, fast.logs()) == (
                plain.gas_used, plain.ok, plain.output, plain.logs()
            ), name
            assert type(fast.computation.error if not fast.ok else None) is type(
                plain.computation.error if not plain.ok else None
            ), name
    assert chains[0].block_hash(chains[0].block_number) == chains[1].block_hash(chains[1].block_number)


def test_simulation_on_the_fast_loop_seals_the_blocks_of_the_stock_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small simulation (real contracts, VRF precompile, reverted transactions) ends on
    the same head block and model with py-evm's own computation and account classes."""
    cfg = SimConfig(nodes=4, rounds=2, expected_proposers=2, seed=1, behaviours={3: parse_behaviour("sign-flip")})
    fast = Simulation(cfg)
    fast_result = fast.run()
    monkeypatch.setattr(sim_chain._Chain, "state_overrides", ScratchChain.state_overrides)
    stock = Simulation(cfg)
    stock_result = stock.run()
    stock_state = stock.chain.scratch.chain.get_vm().get_state_class()
    assert stock_state.computation_class not in evm_speed._fast_classes.values()
    assert stock_state.account_db_class not in evm_speed._unpruned_classes.values()
    assert fast.chain.head == stock.chain.head
    assert fast.chain.block_hash(fast.chain.head) == stock.chain.block_hash(stock.chain.head)
    assert fast_result.final_model_hash == stock_result.final_model_hash
    assert [r.gas_used for r in fast_result.rounds] == [r.gas_used for r in stock_result.rounds]


def test_a_sent_transaction_carries_the_sender_its_signature_recovers_to() -> None:
    from eth.vm.forks.frontier.transactions import extract_transaction_sender

    keys = [PrivateKey(keccak(b"flockd sender %d" % i)) for i in range(3)]
    chain = ScratchChain(funded=[k.public_key.to_canonical_address() for k in keys])
    for key in keys:
        chain.send(key, bytes(20), b"")
    pending = list(chain._pending)
    assert [tx.sender for tx in pending] == [extract_transaction_sender(tx) for tx in pending]
    assert all(result.ok for result in chain.mine())
