"""Large blobs are hashed in worker threads, never on the trio event loop.

keccak256 of a 64 MiB reply holds the loop for a good part of a second on this machine: every
peer's gossip, every chain announcement and every control request waits meanwhile, and a
peer can ask for such replies over and over. The hashing functions are wrapped to record
the thread they run on (the real hash still runs); the hosts, streams and runner are real.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from Crypto.Hash import keccak as real_keccak
from fake_task_chain import ScriptedPeers
from libp2p.peer.id import ID
from test_runner import P1, WINDOW, Node, proposal, until

from flockd import round as rnd
from flockd import store as store_module
from flockd.p2p import blobs
from flockd.p2p.host import P2PService
from flockd.p2p.limits import MiB
from flockd.p2p.streams import read_frame
from flockd.round import deltas as round_deltas
from flockd.store import Store
from flockd.tasks import runner as runner_module
from flockd.tasks import service as task_service_module
from flockd.tasks.exchange import FETCH_KIND, FetchRequest, encode_fetch
from flockd.tasks.runner import NodeContext
from flockd.tasks.service import TaskService

SMALL = 64 * 1024  # hashing this much costs less than a hop to a worker thread


class _RecordingHash:
    def __init__(self, calls: list[tuple[int, int, int]], data: Any = None) -> None:
        self._calls = calls
        self._hash = real_keccak.new(digest_bits=256)
        if data is not None:
            self.update(data)

    def update(self, data: Any) -> None:
        self._calls.append((id(self), threading.get_ident(), len(data)))
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


class _RecordingKeccak:
    """Stands in for Crypto.Hash.keccak in flockd.p2p.blobs: the same hash, thread recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (hash object, thread id, bytes hashed)

    def new(self, digest_bits: int = 256, data: Any = None) -> _RecordingHash:
        assert digest_bits == 256
        return _RecordingHash(self.calls, data)


def hashed_on(calls: list[tuple[int, int, int]], thread: int) -> list[int]:
    """The bytes of each hash computed (wholly or in part) on `thread`, above SMALL."""
    on_thread: dict[int, int] = {}
    for hash_id, ident, size in calls:
        if ident == thread:
            on_thread[hash_id] = on_thread.get(hash_id, 0) + size
    return [size for size in on_thread.values() if size > SMALL]


def recording_delta_hash(calls: list[tuple[int, bytes]], real: Any) -> Any:
    """`real` (a delta_hash), recording the thread and bytes of every call."""
    def delta_hash(data: bytes) -> bytes:
        calls.append((threading.get_ident(), data))
        return real(data)
    return delta_hash


async def test_blob_requests_and_replies_on_streams_are_hashed_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _RecordingKeccak()
    monkeypatch.setattr(blobs, "_keccak", spy)
    loop_thread = threading.get_ident()
    a = P2PService(b"\x71" * 32, network_id="hashtest")
    b = P2PService(b"\x72" * 32, network_id="hashtest")
    payload = os.urandom(MiB - 4096)  # under bulk_min: travels on the libp2p stream
    reply = os.urandom(3 * MiB)  # replies always travel on the stream

    async def on_fetch(peer_id: str, kind: str, data: bytes) -> bytes:
        assert data == payload
        return reply

    b.handle_blobs("fetch", on_fetch, max_size=2 * MiB)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.connect(b.listen_addrs()[0])
            assert await a.send_blob(b.peer_id, "fetch", payload) == reply
            # A body that does not match its header's hash is still refused.
            stream = await a._host.new_stream(ID.from_base58(b.peer_id), [blobs.PROTOCOL])  # type: ignore[list-item]
            await stream.write(blobs.encode_header("fetch", len(payload), blobs.digest(b"another body")))
            for start in range(0, len(payload), 64 * 1024):
                await stream.write(payload[start : start + 64 * 1024])
            refusal = await read_frame(stream, {blobs.REPLY_ERROR: blobs.MAX_ERROR_REPLY}.get, chunk=MiB, timeout=20)
            assert b"does not match" in refusal.data
            nursery.cancel_scope.cancel()
    sizes = [size for _, _, size in spy.calls]
    assert sum(sizes) >= 3 * len(payload) + 2 * len(reply)  # both sides hashed every blob
    assert hashed_on(spy.calls, loop_thread) == []


async def test_a_fetched_delta_is_hashed_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "POLL_SECONDS", 0.005)
    loop_thread = threading.get_ident()
    delta = os.urandom(2 * MiB)
    digest = rnd.delta_hash(delta)
    calls: list[tuple[int, bytes]] = []
    recording = functools.partial(recording_delta_hash, calls)

    # The runner's and the round machine's own hashing (the peers' stores are the test's).
    monkeypatch.setattr(rnd, "delta_hash", recording(rnd.delta_hash))
    monkeypatch.setattr(round_deltas, "delta_hash", recording(round_deltas.delta_hash))
    node = Node(tmp_path)
    node.peer_store(P1).put_delta(delta)  # the proposer serves it; nobody pushed it
    chain, runner = node.chain, node.runner()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        opened = chain.open_round(0)
        await until(lambda: "decline" in chain.sent_fns(0), "the voter to decline")
        chain.seal(proposal(chain, 0, 0, P1, digest))
        chain.seal_until(opened + WINDOW)
        await until(lambda: "commit_vote" in chain.sent_fns(0), "the commit")
        nursery.cancel_scope.cancel()
    assert node.work.scored == [(delta,)]
    assert [ident for ident, data in calls if data == delta]  # it was checked...
    assert [ident for ident, data in calls if data == delta and ident == loop_thread] == []  # ...in a thread


async def test_the_task_service_serves_and_fetches_deltas_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer asking again and again for a large delta made the node read and hash it on
    # the event loop each time; a fetched one was hashed there too.
    loop_thread = threading.get_ident()
    delta = os.urandom(2 * MiB)
    digest = rnd.delta_hash(delta)
    calls: list[tuple[int, bytes]] = []
    recording = functools.partial(recording_delta_hash, calls)

    peers = ScriptedPeers()
    peers.add(P1, Store(tmp_path / "p1"))
    peers.stores[P1].put_delta(delta)
    ctx = NodeContext(
        network=peers, registry=None, store=Store(tmp_path / "me"), address=b"\x01" * 20,  # type: ignore[arg-type]
        vrf_secret=b"\x00" * 32, confirmations=0,
    )
    service = TaskService(ctx, None)  # type: ignore[arg-type]
    monkeypatch.setattr(task_service_module, "delta_hash", recording(task_service_module.delta_hash))
    assert await service.fetch_delta(digest) == delta
    monkeypatch.setattr(store_module, "delta_hash", recording(store_module.delta_hash))  # our store only now
    request = encode_fetch(FetchRequest("delta", digest))
    assert await service._on_fetch("peer", FETCH_KIND, request) == delta
    assert len([1 for _, data in calls if data == delta]) >= 2
    assert [1 for ident, data in calls if data == delta and ident == loop_thread] == []
