"""Exact caches for py-evm's hashing and trie walks, for the whole process.

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
  So does a leaf's or extension's hex-prefixed path, which the trie decodes each time it
  looks at the node (~3% of a simulated round).

`install()` puts them in place (idempotent): the simulation's chain and the daemon's
embedded chain both run on them. Nothing they compute differs from what py-evm computed
before (tests/test_evm_caches.py checks each against the original). Every cache is
bounded, and shared by the chain's worker threads (the node cache's writes take a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import rlp
from Crypto.Hash.keccak import _raw_keccak_lib  # type: ignore[attr-defined]
from Crypto.Util._raw_api import ffi
from eth_hash.auto import keccak as _eth_keccak
from trie import hexary
from trie.constants import BLANK_NODE, BLANK_NODE_HASH
from trie.utils import nodes as trie_nodes
from trie.utils.nibbles import bytes_to_nibbles as _bytes_to_nibbles
from trie.utils.nibbles import decode_nibbles as _decode_nibbles

# How much each cache keeps, as `install` was asked: (decoded trie nodes; and each of the
# digests, nibble keys and node paths). An entry with its key is ~1.8 KB for a branch node,
# ~0.65 KB for nibbles or a path, ~0.2 KB for a digest.
SIMULATION_SIZES = (50_000, 100_000)  # ~240 MB at most, for a process that is all chain
DAEMON_SIZES = (4_000, 5_000)  # ~15 MB at most, so that a daemon with no task stays light
_sizes = SIMULATION_SIZES
KEPT_KECCAK_INPUT = 64  # bytes: a mapping slot's preimage is two words
_KECCAK_CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
_KECCAK_ROUNDS = 24
_KECCAK_PADDING = 0x01  # original Keccak padding (SHA3-256 uses 0x06)

_decoded: dict[bytes, Any] = {}
_decoded_writes = threading.Lock()
T = TypeVar("T")
_digests: dict[bytes, bytes] = {}
_nibbles: dict[bytes, tuple[int, ...]] = {}
_paths: dict[bytes, tuple[int, ...]] = {}
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
        with _decoded_writes:  # an iterator over a dict another thread grows would raise
            if len(_decoded) >= _sizes[0]:
                del _decoded[next(iter(_decoded))]  # oldest first; any eviction is exact
            _decoded[encoded] = node
    return node if node.__class__ is bytes else _fresh(node)


def _kept(cache: dict[bytes, T], key: bytes, compute: Callable[[bytes], T]) -> T:
    """``compute(key)``, kept in ``cache`` (emptied when full: any eviction is exact)."""
    found = cache.get(key)
    if found is None:
        if len(cache) >= _sizes[1]:
            cache.clear()
        found = cache[key] = compute(key)
    return found


def bytes_to_nibbles(value: bytes) -> tuple[int, ...]:
    """trie's bytes_to_nibbles, kept per key (a tuple: nobody can edit it)."""
    return _kept(_nibbles, value, _bytes_to_nibbles)


def decode_nibbles(value: bytes) -> tuple[int, ...]:
    """trie's decode_nibbles (a hex-prefixed node path), kept per path (a tuple)."""
    if value.__class__ is not bytes:
        return _decode_nibbles(value)  # unhashable (a bytearray): not kept
    return _kept(_paths, value, _decode_nibbles)


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


def install(sizes: tuple[int, int] = SIMULATION_SIZES) -> None:
    """Put the process-wide speed-ups in place, keeping up to ``sizes`` (trie nodes; and
    each of digests, nibble keys and node paths); once per process, the first call's
    sizes hold."""
    global _installed, _sizes
    if _installed:
        return
    _sizes = sizes
    # The check eth-hash itself runs on a backend before trusting it.
    assert keccak256(b"") == bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    _eth_keccak(b"")  # let eth-hash settle its backend first, then replace the hasher
    _eth_keccak.hasher = kept_keccak256  # type: ignore[assignment]
    hexary.HexaryTrie.get_node = get_node  # type: ignore[method-assign]
    hexary.bytes_to_nibbles = bytes_to_nibbles  # the name hexary looks up per read and write
    hexary.decode_nibbles = decode_nibbles  # and the names that decode node paths
    trie_nodes.decode_nibbles = decode_nibbles
    _installed = True
