"""Blob frames: the sans-I/O decoder on bad input, and a real transfer between two hosts."""

from __future__ import annotations

import hashlib
import os
import struct

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.p2p.abc import P2PError
from flockd.p2p.blobs import (
    MAX_HEADER,
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

    receiver.handle_blobs("delta", on_delta, max_size=8 << 20)
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
            assert await sender.send_blob(receiver.peer_id, "note", b"hi") is None

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
