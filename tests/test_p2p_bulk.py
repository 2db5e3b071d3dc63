"""The bulk channel: only the holder of a live one-time key and ticket gets bytes in, and
every chunk, the order and the end are authenticated (AES-GCM under the one-time key)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.p2p import bulk
from flockd.p2p.blobs import BlobError, MalformedFrame, TruncatedFrame
from flockd.p2p.bulk import Answer, BulkError, BulkListener, Offer

CHUNK = 64 * 1024


async def listening(nursery: trio.Nursery) -> BulkListener:
    listener = BulkListener("127.0.0.1", chunk=CHUNK, timeout=5.0, max_unclaimed=4)
    await nursery.start(listener.run)
    return listener


async def send(port: int, answer: Answer, data: bytes) -> None:
    await bulk.send_bulk(("127.0.0.1", port), answer, data, chunk=CHUNK, timeout=5.0)


async def raw_send(port: int, ticket: bytes, key: bytes, chunks: list[bytes], end: bytes | None) -> None:
    """The chunks, then `end` sealed as the end chunk (None: no end chunk)."""
    aead = bulk.AESGCM(key)
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    async with sock:
        await sock.send_all(ticket)
        for index, chunk in enumerate(chunks):
            await sock.send_all(aead.encrypt(bulk._NONCE.pack(index), chunk, None))
        if end is not None:
            await sock.send_all(aead.encrypt(bulk._NONCE.pack(len(chunks)), end, None))


async def test_a_blob_crosses_and_a_used_ticket_is_void() -> None:
    data = os.urandom(3 * CHUNK + 123)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        with trio.fail_after(20):
            nursery.start_soon(send, listener.port, answer, data)
            assert await listener.receive(answer, expected) == data
            # The same ticket again: nobody waits for it, the connection is dropped.
            with pytest.raises(BlobError):
                await bulk.send_bulk(("127.0.0.1", listener.port), answer, data, chunk=CHUNK, timeout=2.0)
        nursery.cancel_scope.cancel()


async def test_a_wrong_key_fails_authentication() -> None:
    data = os.urandom(CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        forged = Answer(answer.port, os.urandom(32), answer.ticket)
        with trio.fail_after(20):
            nursery.start_soon(raw_send, listener.port, answer.ticket, forged.key, [data], b"")
            with pytest.raises(BulkError, match="authentication"):
                await listener.receive(answer, expected)
        nursery.cancel_scope.cancel()


async def test_the_blob_as_sent_by_a_raw_sender_with_its_end_chunk_arrives() -> None:
    data = os.urandom(2 * CHUNK + 5)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        chunks = [data[:CHUNK], data[CHUNK : 2 * CHUNK], data[2 * CHUNK :]]
        with trio.fail_after(20):
            nursery.start_soon(raw_send, listener.port, answer.ticket, answer.key, chunks, b"")
            assert await listener.receive(answer, expected) == data
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("end", "error"),
    [
        (bytes(32), BulkError),  # the end chunk is empty: anything else is not what the key's holder sent
        (None, TruncatedFrame),  # no end chunk: the connection ends inside the blob
    ],
)
async def test_a_blob_must_end_with_the_empty_end_chunk(end: bytes | None, error: type[BlobError]) -> None:
    data = os.urandom(2 * CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        chunks = [data[:CHUNK], data[CHUNK:]]
        with trio.fail_after(20):
            nursery.start_soon(raw_send, listener.port, answer.ticket, answer.key, chunks, end)
            with pytest.raises(error):
                await listener.receive(answer, expected)
        nursery.cancel_scope.cancel()


async def test_reordered_chunks_fail_authentication() -> None:
    data = os.urandom(2 * CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        aead = bulk.AESGCM(answer.key)
        sealed = [aead.encrypt(bulk._NONCE.pack(i), data[i * CHUNK : (i + 1) * CHUNK], None) for i in (0, 1)]

        async def swapped() -> None:
            sock = await trio.open_tcp_stream("127.0.0.1", listener.port)
            async with sock:
                await sock.send_all(answer.ticket + sealed[1] + sealed[0])

        with trio.fail_after(20):
            nursery.start_soon(swapped)
            with pytest.raises(BulkError, match="authentication"):
                await listener.receive(answer, expected)
        nursery.cancel_scope.cancel()


async def test_a_connection_ending_early_is_truncated() -> None:
    data = os.urandom(2 * CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        with trio.fail_after(20):
            nursery.start_soon(raw_send, listener.port, answer.ticket, answer.key, [data[:CHUNK]], None)
            with pytest.raises(TruncatedFrame):
                await listener.receive(answer, expected)
        nursery.cancel_scope.cancel()


async def test_strangers_without_a_ticket_are_dropped_and_cannot_block_a_transfer() -> None:
    data = os.urandom(CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        with trio.fail_after(30):
            strangers = [await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(6)]
            await strangers[0].send_all(os.urandom(16))  # a guessed ticket
            nursery.start_soon(send, listener.port, answer, data)
            # Beyond max_unclaimed, strangers are dropped at once; the rest time out. The
            # real transfer gets through once a place frees up.
            assert await listener.receive(answer, expected) == data
            for sock in strangers:
                await sock.aclose()
        nursery.cancel_scope.cancel()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_negotiation_decoders_only_raise_malformed_frame(data: bytes) -> None:
    for decode in (bulk.decode_offer, bulk.decode_answer):
        with contextlib.suppress(MalformedFrame):
            decode(data)


def test_negotiation_round_trips() -> None:
    assert bulk.decode_offer(bulk.encode_offer(Offer("fl.delta.1", 5 << 20))) == Offer("fl.delta.1", 5 << 20)
    answer = Answer(4242, os.urandom(32), os.urandom(16))
    assert bulk.decode_answer(bulk.encode_answer(answer)) == answer


async def test_a_silent_stranger_times_out_and_the_port_keeps_serving() -> None:
    data = os.urandom(CHUNK)
    async with trio.open_nursery() as nursery:
        listener = BulkListener("127.0.0.1", chunk=CHUNK, timeout=0.5, max_unclaimed=4)
        await nursery.start(listener.run)
        with trio.fail_after(30):
            silent = await trio.open_tcp_stream("127.0.0.1", listener.port)
            reset = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await reset.send_all(b"abc")
            await reset.aclose()
            assert await silent.receive_some(10) == b""  # closed by the listener
            answer, expected = listener.expect(len(data))
            nursery.start_soon(send, listener.port, answer, data)
            assert await listener.receive(answer, expected) == data
            await silent.aclose()
        nursery.cancel_scope.cancel()


async def test_a_sender_resetting_mid_blob_fails_that_transfer_only() -> None:
    data = os.urandom(3 * CHUNK)
    async with trio.open_nursery() as nursery:
        listener = await listening(nursery)
        answer, expected = listener.expect(len(data))
        aead = bulk.AESGCM(answer.key)
        with trio.fail_after(30):
            sock = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await sock.send_all(answer.ticket + aead.encrypt(bulk._NONCE.pack(0), data[:CHUNK], None) + b"x" * 100)
            sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await sock.aclose()  # with linger 0: an RST, not a FIN
            with pytest.raises(BlobError):
                await listener.receive(answer, expected)
            answer, expected = listener.expect(len(data))
            nursery.start_soon(send, listener.port, answer, data)
            assert await listener.receive(answer, expected) == data
        nursery.cancel_scope.cancel()
