"""Speed-ups of the py-evm VM for the simulation's chain only, exact by construction (the
process-wide caches of hashing and trie walks, which the daemon's chain runs on too, are
`flockd.chain.node.evm_caches`).

- **A leaner interpreter loop** (`fast_computation`, for the simulation's VM only, not the
  daemon's): py-evm runs ~120,000 opcodes a simulated round, each through a generator
  step, a debug-log check, the opcode object's call and two gas-meter calls. The loop here
  reads the code directly, charges a plain opcode's constant gas inline and calls its
  logic function; an opcode that is more than that (CALL, CREATE, ...) is called as
  before. Memory that needs no growth skips the expansion's cost arithmetic (it is zero).
  Running out of gas, invalid opcodes and every other error still come from py-evm's own
  code, raised where they were.

- **Storage tries that do not prune** (`unpruned_storage`, the simulation's VM only): py-evm
  writes each block's storage changes into a pruning trie, which re-encodes and re-hashes
  every node it replaces to delete it from the block's batch (~7% of a simulated run).
  A trie's root does not depend on pruning; the obsolete nodes stay in the in-memory
  database (+1.8 MB per 10 rounds at 20 nodes, on 2.1 MB). The daemon's chain, on disk,
  keeps pruning.

Nothing they compute differs from what py-evm computed before: tests/test_sim_evm_speed.py
checks each against the original, and the simulation's runs are byte-identical with and
without them (every round's figures, gas and model hash).
"""

from __future__ import annotations

from typing import Any

from eth.db.account import AccountDB
from eth.db.batch import BatchDB
from eth.db.cache import CacheDB
from eth.db.journal import JournalDB
from eth.db.storage import AccountStorageDB, StorageLookup
from eth.exceptions import Halt
from eth.vm.computation import NO_RESULT
from eth.vm.logic.invalid import InvalidOpcode
from eth.vm.opcode import _FastOpcode
from trie import hexary


def _run(cls: Any, computation: Any) -> None:
    """The opcode loop of py-evm's BaseComputation.apply_computation, minus the per-opcode
    generator step, debug check and two call layers of gas metering."""
    table = cls._plain_opcodes
    lookup = computation.opcodes
    code = computation.code
    raw = code._raw_code_bytes
    meter = computation._gas_meter
    while True:
        pc = code.program_counter
        try:
            opcode = raw[pc]
        except IndexError:
            opcode = 0x00  # STOP past the end, as CodeStream's iterator yields it
        else:
            code.program_counter = pc + 1
        plain = table.get(opcode)
        try:
            if plain is not None:
                logic, cost, mnemonic = plain
                if 0 <= cost <= meter.gas_remaining:
                    meter.gas_remaining -= cost
                else:
                    meter.consume_gas(cost, mnemonic)  # raises OutOfGas as before
                logic(computation)
            else:
                opcode_fn = lookup.get(opcode)
                if opcode_fn is None:
                    opcode_fn = InvalidOpcode(opcode)
                opcode_fn(computation=computation)
        except Halt:
            break


_fast_classes: dict[type[Any], type[Any]] = {}


def fast_computation(base: type[Any]) -> type[Any]:
    """A subclass of the py-evm computation class ``base`` with the leaner loop and memory
    check above (one per base); the stock class stays untouched."""
    if base not in _fast_classes:
        _fast_classes[base] = _faster(base)
    return _fast_classes[base]


def _faster(base: type[Any]) -> type[Any]:
    plain = {
        value: (op.logic_fn, op.gas_cost, op.mnemonic)
        for value, op in base.opcodes.items()
        if type(op) is _FastOpcode
    }
    def apply_computation(
        cls: Any, state: Any, message: Any, transaction_context: Any, parent_computation: Any = None
    ) -> Any:
        # BaseComputation.apply_computation, line for line, but for the loop (_run).
        with cls(state, message, transaction_context) as computation:
            if computation.is_origin_computation:
                computation.contracts_created = []
                if message.is_create:
                    cls.consume_initcode_gas_cost(computation)
            if parent_computation is not None:
                computation.contracts_created = parent_computation.contracts_created
            if message.is_create:
                computation.contracts_created.append(message.storage_address)
            precompile = computation.precompiles.get(message.code_address, NO_RESULT)
            if precompile is not NO_RESULT:
                if not message.is_delegation:
                    precompile(computation)
                return computation
            _run(cls, computation)
        return computation

    def extend_memory(self: Any, start_position: int, size: int) -> None:
        # Inside memory already (its length is always a multiple of 32): no expansion, no
        # gas (py-evm's arithmetic gives a zero difference), nothing to validate.
        if size > 0 and start_position >= 0 and start_position + size <= len(self._memory._bytes):
            return
        base.extend_memory(self, start_position, size)

    return type(
        f"Fast{base.__name__}",
        (base,),
        {
            "_plain_opcodes": plain,
            "apply_computation": classmethod(apply_computation),
            "extend_memory": extend_memory,
        },
    )


class _UnprunedLookup(StorageLookup):
    """py-evm's StorageLookup whose write trie does not prune (same roots)."""

    def _get_write_trie(self) -> hexary.HexaryTrie:
        if self._trie_nodes_batch is None:
            self._trie_nodes_batch = BatchDB(self._db, read_through_deletes=True)
        if self._write_trie is None:
            self._write_trie = hexary.HexaryTrie(self._trie_nodes_batch, root_hash=self._starting_root_hash, prune=False)
        return self._write_trie


class _UnprunedStorageDB(AccountStorageDB):
    def __init__(self, db: Any, storage_root: Any, address: Any) -> None:
        super().__init__(db, storage_root, address)
        # py-evm's chain of layers over the lookup, rebuilt over the unpruned one.
        self._storage_lookup = _UnprunedLookup(db, storage_root, address)
        self._storage_cache = CacheDB(self._storage_lookup)
        self._locked_changes = JournalDB(self._storage_cache)
        self._journal_storage = JournalDB(self._locked_changes)


_unpruned_classes: dict[type[Any], type[Any]] = {}


def unpruned_storage(base: type[Any]) -> type[Any]:
    """A subclass of the account database class ``base`` whose accounts' storage tries do
    not prune (one per base)."""
    if base not in _unpruned_classes:
        assert issubclass(base, AccountDB), base  # the method below is AccountDB's

        def _get_address_store(self: Any, address: Any) -> Any:
            # AccountDB._get_address_store, with the unpruned storage.
            if address in self._account_stores:
                return self._account_stores[address]
            store = _UnprunedStorageDB(self._raw_store_db, self._get_storage_root(address), address)
            self._account_stores[address] = store
            return store

        _unpruned_classes[base] = type(f"Unpruned{base.__name__}", (base,), {"_get_address_store": _get_address_store})
    return _unpruned_classes[base]
