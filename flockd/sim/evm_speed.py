"""Two pure speed-ups of the py-evm stack the simulation runs on, exact by construction.

- **Trie nodes decoded once.** py-evm's hexary trie decodes a node's RLP every time a
  path is walked, and every block's state (and every read's) walks the registry's storage
  trie from the root again. A node's decoding is a function of its bytes alone, so it is
  kept, keyed by those bytes; the trie gets a fresh copy each time (its writers edit
  decoded nodes in place). The database is still asked for each node, so a missing node
  still raises where it did.
- **Keccak without the wrapper.** eth-hash's pycryptodome backend builds a hash object per
  call (~9 us); the same C functions called directly take ~4 us, and trie hashing, SHA3
  and storage keys call it ~10,000 times a simulated round.

`install()` puts both in place for the whole process (idempotent). Nothing they return
differs from what py-evm computed before: tests/test_sim_evm_speed.py checks both against
the originals, and the simulation's runs are byte-identical with and without them.
"""

from __future__ import annotations

from typing import Any

import rlp
from Crypto.Hash.keccak import _raw_keccak_lib  # type: ignore[attr-defined]
from Crypto.Util._raw_api import ffi
from eth_hash.auto import keccak as _eth_keccak
from trie import hexary
from trie.constants import BLANK_NODE, BLANK_NODE_HASH

NODE_CACHE_SIZE = 50_000  # decoded nodes kept (a branch node is ~1 KB decoded)
_KECCAK_CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
_KECCAK_ROUNDS = 24
_KECCAK_PADDING = 0x01  # original Keccak padding (SHA3-256 uses 0x06)

_decoded: dict[bytes, Any] = {}
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
    """Put both speed-ups in place (once per process)."""
    global _installed
    if _installed:
        return
    # The check eth-hash itself runs on a backend before trusting it.
    assert keccak256(b"") == bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    _eth_keccak(b"")  # let eth-hash settle its backend first, then replace the hasher
    _eth_keccak.hasher = keccak256  # type: ignore[assignment]
    hexary.HexaryTrie.get_node = get_node  # type: ignore[method-assign]
    _installed = True
