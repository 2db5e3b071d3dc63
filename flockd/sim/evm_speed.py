"""Pure speed-ups of the py-evm stack the simulation runs on, exact by construction.

- **Trie nodes decoded once.** py-evm's hexary trie decodes a node's RLP every time a
  path is walked, and every block's state (and every read's) walks the registry's storage
  trie from the root again. A node's decoding is a function of its bytes alone, so it is
  kept, keyed by those bytes; the trie gets a fresh copy each time (its writers edit
  decoded nodes in place). The database is still asked for each node, so a missing node
  still raises where it did.
- **Keccak without the wrapper.** eth-hash's pycryptodome backend builds a hash object per
  call (~9 us); the same C functions called directly take ~4 us, and trie hashing, SHA3
  and storage keys call it ~10,000 times a simulated round. Inputs of at most 64 bytes
  (mapping slots, storage keys: 70% of the calls, 9 in 10 of them repeats) are kept.
- **Trie keys split into nibbles once.** Every trie read and write turns its 32-byte key
  into 64 nibbles through a generator (~4 us); the same storage keys come back every block.

`install()` puts these in place for the whole process (idempotent).

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

from collections.abc import Callable
from typing import Any, TypeVar

import rlp
from Crypto.Hash.keccak import _raw_keccak_lib  # type: ignore[attr-defined]
from Crypto.Util._raw_api import ffi
from eth.db.account import AccountDB
from eth.db.batch import BatchDB
from eth.db.cache import CacheDB
from eth.db.journal import JournalDB
from eth.db.storage import AccountStorageDB, StorageLookup
from eth.exceptions import Halt
from eth.vm.computation import NO_RESULT
from eth.vm.logic.invalid import InvalidOpcode
from eth.vm.opcode import _FastOpcode
from eth_hash.auto import keccak as _eth_keccak
from trie import hexary
from trie.constants import BLANK_NODE, BLANK_NODE_HASH
from trie.utils.nibbles import bytes_to_nibbles as _bytes_to_nibbles

NODE_CACHE_SIZE = 50_000  # decoded nodes kept (a branch node is ~1 KB decoded)
SMALL_CACHE_SIZE = 100_000  # keccak digests of short inputs, and nibble keys, kept
KEPT_KECCAK_INPUT = 64  # bytes: a mapping slot's preimage is two words
_KECCAK_CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
_KECCAK_ROUNDS = 24
_KECCAK_PADDING = 0x01  # original Keccak padding (SHA3-256 uses 0x06)

_decoded: dict[bytes, Any] = {}
T = TypeVar("T")
_digests: dict[bytes, bytes] = {}
_nibbles: dict[bytes, tuple[int, ...]] = {}
_original_get_node = hexary.HexaryTrie.get_node
_installed = False


def _fresh(node: Any) -> Any:
    """A copy the trie may edit: lists copied all the way down, bytes shared (immutable)."""
    return [item if item.__class__ is bytes else _fresh(item) for item in node]


def get_node(self: hexary.HexaryTrie, node_hash: Any) -> Any:
    """HexaryTrie.get_node with the decoding of stored nodes kept."""
    if node_hash in (BLANK_NODE, BLANK_NODE_HASH):
        return BLANK_NODE
    if len(node_hash) < 32:  # an embedded node (bytes or already a list): as before
        return _original_get_node(self, node_hash)
    encoded = self.db[node_hash]
    node = _decoded.get(encoded)
    if node is None:
        node = rlp.decode(encoded)
        if len(_decoded) >= NODE_CACHE_SIZE:
            del _decoded[next(iter(_decoded))]  # oldest first; any eviction is exact
        _decoded[encoded] = node
    return node if node.__class__ is bytes else _fresh(node)


def _kept(cache: dict[bytes, T], key: bytes, compute: Callable[[bytes], T]) -> T:
    """``compute(key)``, kept in ``cache`` (emptied when full: any eviction is exact)."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= SMALL_CACHE_SIZE:
            cache.clear()
        found = cache[key] = compute(key)
    return found


def bytes_to_nibbles(value: bytes) -> tuple[int, ...]:
    """trie's bytes_to_nibbles, kept per key (a tuple: nobody can edit it)."""
    return _kept(_nibbles, value, _bytes_to_nibbles)


def kept_keccak256(data: bytes | bytearray) -> bytes:
    """keccak256, with the digests of short inputs kept (looked up by their bytes)."""
    if len(data) > KEPT_KECCAK_INPUT:
        return keccak256(data)
    return _kept(_digests, bytes(data), keccak256)


def keccak256(data: bytes | bytearray) -> bytes:
    """Keccak-256 of ``data`` through pycryptodome's C functions, one state per call
    (thread-safe: the daemon's chain runs in worker threads)."""
    holder = ffi.new("void **")
    if _raw_keccak_lib.keccak_init(holder, _KECCAK_CAPACITY_BYTES, _KECCAK_ROUNDS):
        raise ValueError("keccak_init failed")
    state = holder[0]
    try:
        _raw_keccak_lib.keccak_absorb(state, ffi.from_buffer(data), len(data))
        out = ffi.new("uint8_t[32]")
        _raw_keccak_lib.keccak_digest(state, out, 32, _KECCAK_PADDING)
        return ffi.buffer(out)[:]
    finally:
        _raw_keccak_lib.keccak_destroy(state)


def install() -> None:
    """Put the process-wide speed-ups in place (once per process)."""
    global _installed
    if _installed:
        return
    # The check eth-hash itself runs on a backend before trusting it.
    assert keccak256(b"") == bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    _eth_keccak(b"")  # let eth-hash settle its backend first, then replace the hasher
    _eth_keccak.hasher = kept_keccak256  # type: ignore[assignment]
    hexary.HexaryTrie.get_node = get_node  # type: ignore[method-assign]
    hexary.bytes_to_nibbles = bytes_to_nibbles  # the name hexary looks up per read and write
    _installed = True


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
