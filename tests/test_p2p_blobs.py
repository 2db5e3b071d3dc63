"""Blob frames: the sans-I/O decoder on bad input, and a real transfer between two hosts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from flockd.p2p.abc import P2PError
from flockd.p2p.blobs import (
    MAX_HEADER,
    PROTOCOL,
    REPLY_ERROR,
    BlobError,
    BlobRejected,
    BlobTooLarge,
    Frame,
    FrameDecoder,
    FrameHeader,
    HashMismatch,
    MalformedFrame,
    TruncatedFrame,
    UnknownBlobKind,
    digest,
    encode_frame,
    encode_header,
)
from flockd.p2p.host import P2PService
from flockd.p2p.limits import P2PLimits
from flockd.p2p.streams import TransferSlots

CAPS = {"delta": 1 << 20, "empty": 0}


def decoder(chunk: int = 1 << 16) -> FrameDecoder:
    return FrameDecoder(CAPS.get, chunk=chunk)


def frames_of(events: list[FrameHeader | Frame]) -> list[Frame]:
    return [e for e in events if isinstance(e, Frame)]


def raw_header(fields: object) -> bytes:
    packed = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


def test_round_trip_in_one_piece_and_byte_by_byte() -> None:
    data = os.urandom(5000)
    wire = encode_frame("delta", data) + encode_frame("empty", b"")
    events = decoder().feed(wire)
    assert frames_of(events) == [Frame("delta", data), Frame("empty", b"")]
    assert events[0] == FrameHeader("delta", 5000, digest(data))

    dec = decoder()
    got = [f for i in range(len(wire)) for f in frames_of(dec.feed(wire[i : i + 1]))]
    assert got == [Frame("delta", data), Frame("empty", b"")]
    assert dec.idle
    dec.end_of_stream()  # between frames: a clean end


def test_wanted_never_exceeds_the_frame_or_the_chunk() -> None:
    data = os.urandom(3000)
    wire = encode_frame("delta", data)
    dec = decoder(chunk=1024)
    pos, frames = 0, []
    while pos < len(wire):
        n = dec.wanted()
        assert 1 <= n <= 1024
        frames += frames_of(dec.feed(wire[pos : pos + n]))
        pos += n
    assert frames == [Frame("delta", data)]


def test_oversized_declared_size_rejected_from_the_header_alone() -> None:
    # Only the header is fed: the decoder refuses before any body byte is read or buffered.
    with pytest.raises(BlobTooLarge):
        decoder().feed(encode_header("delta", (1 << 20) + 1, b"\x00" * 32))
    with pytest.raises(BlobTooLarge):
        decoder().feed(encode_header("delta", 1 << 62, b"\x00" * 32))


def test_unknown_kind() -> None:
    with pytest.raises(UnknownBlobKind):
        decoder().feed(encode_frame("model", b"abc"))


def test_truncated_stream() -> None:
    wire = encode_frame("delta", os.urandom(100))
    for cut in (2, 10, len(wire) - 1):
        dec = decoder()
        dec.feed(wire[:cut])
        with pytest.raises(TruncatedFrame):
            dec.end_of_stream()


def test_hash_mismatch() -> None:
    data = os.urandom(100)
    wire = bytearray(encode_frame("delta", data))
    wire[-1] ^= 0xFF
    with pytest.raises(HashMismatch):
        decoder().feed(bytes(wire))
    with pytest.raises(HashMismatch):
        decoder().feed(encode_header("delta", 3, hashlib.sha256(b"abc").digest()) + b"abc")


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack(">I", 0),
        struct.pack(">I", MAX_HEADER + 1),
        struct.pack(">I", 0xFFFFFFFF),
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",
        raw_header([1, 2, 3]),
        raw_header({"kind": "delta", "size": 1}),
        raw_header({"kind": "delta", "size": 1, "hash": b"\x00" * 32, "x": 1}),
        raw_header({"kind": 5, "size": 1, "hash": b"\x00" * 32}),
        raw_header({"kind": "delta", "size": -1, "hash": b"\x00" * 32}),
        raw_header({"kind": "delta", "size": "1", "hash": b"\x00" * 32}),
        raw_header({"kind": "delta", "size": 1, "hash": b"\x00" * 31}),
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_garbage_header(wire: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decoder().feed(wire)


def test_decoder_stays_failed() -> None:
    dec = decoder()
    with pytest.raises(MalformedFrame):
        dec.feed(struct.pack(">I", 0))
    with pytest.raises(MalformedFrame):
        dec.feed(encode_frame("delta", b"ok"))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_blob_errors(data: bytes) -> None:
    dec = decoder()
    try:
        dec.feed(data)
        dec.end_of_stream()
    except BlobError:
        pass


# --- two real hosts on 127.0.0.1 ---


async def test_transfer_between_two_hosts_with_reply() -> None:
    sender = P2PService(b"\x01" * 32, network_id="blobtest")
    receiver = P2PService(b"\x02" * 32, network_id="blobtest")
    received: list[tuple[str, str, bytes]] = []

    async def on_delta(peer_id: str, kind: str, data: bytes) -> bytes:
        received.append((peer_id, kind, data))
        return digest(data)

    async def on_note(peer_id: str, kind: str, data: bytes) -> None:
        return None

    async def on_crash(peer_id: str, kind: str, data: bytes) -> bytes:
        raise RuntimeError("handler bug")

    buffers: list[bytearray] = []

    async def on_buffer(peer_id: str, kind: str, data: bytearray) -> bytes:
        buffers.append(data)
        return digest(data)

    receiver.handle_blobs("delta", on_delta, max_size=8 << 20)
    receiver.handle_blob_buffers("delta.buffer", on_buffer, max_size=8 << 20)
    receiver.handle_blobs("note", on_note, max_size=16)
    receiver.handle_blobs("crash", on_crash, max_size=16)
    payload = os.urandom(5 << 20)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sender.run)
            await nursery.start(receiver.run)
            assert await sender.connect(receiver.listen_addrs()[0]) == receiver.peer_id

            assert await sender.send_blob(receiver.peer_id, "delta", payload) == digest(payload)
            assert received == [(sender.peer_id, "delta", payload)]
            # Large blobs travel on one bulk session, keyed once.
            assert await sender.send_blob(receiver.peer_id, "delta", payload[::-1]) == digest(payload[::-1])
            assert sender.counters.get("bulk_sessions_opened") == 1
            assert receiver.counters.get("bulk_sessions_keyed") == 1
            assert await sender.send_blob(receiver.peer_id, "note", b"hi") is None
            # Each handler gets the form it registered for, by either path: a bulk blob's
            # buffer itself (no copy) or a copy of it; a stream's bytes or a copy of them.
            assert all(type(data) is bytes for _, _, data in received)
            assert await sender.send_blob(receiver.peer_id, "delta.buffer", payload) == digest(payload)
            assert await sender.send_blob(receiver.peer_id, "delta.buffer", b"small") == digest(b"small")
            assert buffers == [payload, b"small"] and all(type(data) is bytearray for data in buffers)

            # Refusals come back as BlobRejected with the receiver's reason, and the
            # connection stays usable afterwards.
            with pytest.raises(BlobRejected, match="cap"):
                await sender.send_blob(receiver.peer_id, "note", b"x" * (1 << 20))
            with pytest.raises(BlobRejected, match="not accepted"):
                await sender.send_blob(receiver.peer_id, "model", b"abc")
            with pytest.raises(BlobRejected, match="handler failed"):
                await sender.send_blob(receiver.peer_id, "crash", b"abc")
            with pytest.raises(BlobError):
                await sender.send_blob(receiver.peer_id, "bad kind!", b"abc")
            with pytest.raises(P2PError):
                await sender.send_blob("not-a-peer-id", "delta", b"abc")
            assert await sender.send_blob(receiver.peer_id, "delta", b"again") == digest(b"again")
            nursery.cancel_scope.cancel()


# --- slots and deadlines against a slow peer ---


async def _open_raw_blob_stream(host: P2PService, target: str) -> INetStream:
    return await host._host.new_stream(ID.from_base58(target), [PROTOCOL])  # type: ignore[list-item]


async def test_slow_streams_from_one_peer_do_not_block_another_peers_transfer() -> None:
    limits = P2PLimits(blob_read_timeout=30.0)
    receiver = P2PService(b"\x02" * 32, network_id="blobtest", limits=limits)
    slow = P2PService(b"\x03" * 32, network_id="blobtest")
    honest = P2PService(b"\x04" * 32, network_id="blobtest")

    async def on_delta(peer_id: str, kind: str, data: bytes) -> bytes:
        return digest(data)

    receiver.handle_blobs("delta", on_delta, max_size=8 << 20)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for host in (receiver, slow, honest):
                await nursery.start(host.run)
            await slow.connect(receiver.listen_addrs()[0])
            await honest.connect(receiver.listen_addrs()[0])
            # The slow peer opens more transfers than the node has slots, each declaring a
            # large blob and then sending nothing (well within the per-read timeout).
            held = []
            for _ in range(limits.max_inbound_blobs + 2):
                stream = await _open_raw_blob_stream(slow, receiver.peer_id)
                await stream.write(encode_header("delta", 4 << 20, b"\x00" * 32) + b"x")
                held.append(stream)
            await trio.sleep(0.5)  # let the receiver take them all in
            payload = os.urandom(100_000)
            assert await honest.send_blob(receiver.peer_id, "delta", payload) == digest(payload)
            nursery.cancel_scope.cancel()


async def test_a_trickling_transfer_is_cut_at_its_total_deadline() -> None:
    # Each read makes progress well inside the per-read timeout, so only a deadline for
    # the whole transfer ends it.
    limits = P2PLimits(blob_read_timeout=2.0, blob_min_rate=64 * 1024)
    receiver = P2PService(b"\x02" * 32, network_id="blobtest", limits=limits)
    slow = P2PService(b"\x03" * 32, network_id="blobtest")
    seen: list[bytes] = []

    async def on_delta(peer_id: str, kind: str, data: bytes) -> bytes:
        seen.append(data)
        return b"ok"

    receiver.handle_blobs("delta", on_delta, max_size=8 << 20)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.run)
            await nursery.start(slow.run)
            await slow.connect(receiver.listen_addrs()[0])
            stream = await _open_raw_blob_stream(slow, receiver.peer_id)
            size = 64 * 1024  # may take 2 s + 1 s in all
            await stream.write(encode_header("delta", size, b"\x00" * 32))
            reply = bytearray()

            async def trickle() -> None:
                with contextlib.suppress(Exception):  # the receiver resets us: expected
                    for _ in range(size):
                        await stream.write(b"x")
                        await trio.sleep(0.2)

            async with trio.open_nursery() as inner:
                inner.start_soon(trickle)
                with contextlib.suppress(Exception):
                    while chunk := await stream.read(4096):
                        reply += chunk
                inner.cancel_scope.cancel()
            frame = frames_of(FrameDecoder({REPLY_ERROR: 1024}.get).feed(bytes(reply)))
            assert frame and frame[0].kind == REPLY_ERROR and b"deadline" in frame[0].data
            assert seen == []
            nursery.cancel_scope.cancel()


def test_transfer_slots_give_each_peer_a_bounded_share() -> None:
    slots = TransferSlots(total=4, per_peer=2)
    assert slots.try_acquire("a") and slots.try_acquire("a")
    assert not slots.try_acquire("a")  # a's share is used up...
    assert slots.try_acquire("b") and slots.try_acquire("c")  # ...others still get in
    assert not slots.try_acquire("d")  # the total bound still holds
    slots.release("a")
    assert slots.try_acquire("d")
    slots.release("b")
    assert slots.try_acquire("a")
    assert not slots.try_acquire("a")
