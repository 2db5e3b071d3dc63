"""The process-wide caches of py-evm's hashing and trie walks (flockd.chain.node.evm_caches),
which the simulation's chain and the daemon's embedded chain run on, compute exactly what
the code they replace computed, stay within their sizes, and hold up under threads."""

from __future__ import annotations

import random
import sys
import threading

import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from trie import HexaryTrie

from flockd.chain.node import evm_caches


def reference_keccak(data: bytes) -> bytes:
    return pycryptodome_keccak.new(data=data, digest_bits=256).digest()


def test_keccak_matches_pycryptodome_at_every_length_across_the_rate() -> None:
    rng = random.Random(7)
    for length in [*range(0, 300), 1000, 4096, 65_537]:
        data = rng.randbytes(length)
        assert evm_caches.keccak256(data) == reference_keccak(data)
        assert evm_caches.keccak256(bytearray(data)) == reference_keccak(data)


def test_installed_keccak_is_the_one_eth_hash_and_eth_utils_use() -> None:
    from eth_hash.auto import keccak
    from eth_utils import keccak as utils_keccak

    evm_caches.install()
    assert keccak.hasher is evm_caches.kept_keccak256
    rng = random.Random(5)
    for length in (0, 1, 20, 32, 64, 65, 200):
        data = rng.randbytes(length)
        for _ in range(2):  # computed, then kept (up to 64 bytes)
            assert keccak(data) == utils_keccak(data) == reference_keccak(data)
            assert keccak(bytearray(data)) == reference_keccak(data)


def test_kept_nibbles_are_trie_own() -> None:
    from trie.utils.nibbles import bytes_to_nibbles as reference

    rng = random.Random(9)
    for length in (0, 1, 20, 32):
        key = rng.randbytes(length)
        assert evm_caches.bytes_to_nibbles(key) == evm_caches.bytes_to_nibbles(key) == reference(key)


def test_kept_node_paths_are_trie_own() -> None:
    from trie.utils.nibbles import decode_nibbles as reference

    rng = random.Random(13)
    for flag in range(6):  # even, odd, leaf even, leaf odd, and two no encoder makes
        for length in (0, 1, 5, 32):
            path = bytes([flag << 4 | rng.randrange(16)]) + rng.randbytes(length)
            assert evm_caches.decode_nibbles(path) == evm_caches.decode_nibbles(path) == reference(path)
    with pytest.raises(IndexError):
        evm_caches.decode_nibbles(b"")  # as the original: an empty path has no flag


class _PlainTrie(HexaryTrie):
    get_node = evm_caches._original_get_node  # type: ignore[assignment]


class _CachedTrie(HexaryTrie):
    get_node = evm_caches.get_node  # type: ignore[assignment]


def test_trie_with_kept_decodings_matches_the_plain_trie_through_sets_and_deletes() -> None:
    """Short keys and values make embedded nodes (edited in place by the trie's writers),
    so a shared decoding that leaked into an edit would show as a different root."""
    rng = random.Random(3)
    plain, cached = _PlainTrie({}), _CachedTrie({})
    keys = [rng.randbytes(rng.choice((1, 2, 32))) for _ in range(300)]
    for step in range(1200):
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


def test_the_caches_stay_within_their_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evm_caches, "_sizes", (8, 16))
    monkeypatch.setattr(evm_caches, "_decoded", {})
    monkeypatch.setattr(evm_caches, "_digests", {})
    rng = random.Random(11)
    trie = _CachedTrie({})
    for _ in range(200):
        trie[rng.randbytes(32)] = rng.randbytes(40)
        assert len(evm_caches._decoded) <= 8
    for _ in range(100):
        data = rng.randbytes(32)
        assert evm_caches.kept_keccak256(data) == reference_keccak(data)
        assert len(evm_caches._digests) <= 16


def test_threads_sharing_a_full_node_cache_read_what_they_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's chain runs in worker threads: with a cache small enough to evict on
    nearly every miss, concurrent tries still read back every value."""
    monkeypatch.setattr(evm_caches, "_sizes", (4, 16))
    monkeypatch.setattr(evm_caches, "_decoded", {})
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            rng = random.Random(seed)
            trie = _CachedTrie({})
            written = {rng.randbytes(32): rng.randbytes(40) for _ in range(150)}
            for key, value in written.items():
                trie[key] = value
            for _ in range(3):
                assert all(trie.get(k) == v for k, v in written.items())
        except BaseException as exc:  # reported to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
