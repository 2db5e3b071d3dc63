"""The bulk channel: large blobs over a plain TCP socket, keyed over the libp2p stream.

py-libp2p's Noise and Yamux frame and encrypt every 64 KiB in Python, which caps a stream
far below what the socket can carry. So a blob of `bulk_min` bytes or more is negotiated
on its `/flock/blob/1` stream and carried elsewhere (protocol/spec/transfer.md §4):

1. the dialer sends a `!bulk` request frame: msgpack [kind, size];
2. the receiver checks kind and size against its caps (before allocating anything), and
   answers `!bulk`: msgpack [port, key(32), ticket(16)], a fresh one-time AES-256-GCM key
   and ticket. The libp2p stream is Noise-encrypted and bound to the peer's identity, so
   only that peer learns them;
3. the dialer connects to that port on the peer's address, sends the ticket, then the
   blob in AEAD chunks (chunk i under nonce i) and, last, an empty AEAD chunk that marks
   the end;
4. the receiver decrypts each chunk straight into a buffer of the announced size;
5. the reply (`!reply`, `!none` or `!error`) comes back on the libp2p stream, as for any
   blob.

A connection to the bulk port that does not present a live ticket within the read
timeout is closed; a ticket works once, and only while its transfer's deadline lasts.

No keccak256 on this path: under a one-time key, AES-GCM's tags already bind every byte,
its place and the end to the peer that learnt the key over its Noise stream; a hash the
sender computes adds nothing against that sender. What a blob must match is the hash the
chain recorded for it (a delta's `delta_hash`), and its consumer checks that
(flockd/round/deltas.py). Hashing here too cost both sides a keccak pass per byte,
which is slower than the socket (docs/benchmarks.md, "Blob streams").
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from flockd.p2p.blobs import (
    MAX_ERROR_REPLY,
    REPLY_ERROR,
    BlobError,
    BlobTimeout,
    BlobTooLarge,
    Frame,
    MalformedFrame,
    SizeCap,
    TruncatedFrame,
    UnknownBlobKind,
)
from flockd.p2p.limits import P2PLimits
from flockd.p2p.streams import read_frame, transfer_deadline, write_frame

BULK = "!bulk"  # the offer (request) and the answer (reply) kind
KEY = 32
TICKET = 16
TAG = 16
_NONCE = struct.Struct(">4xQ")  # 96-bit nonce: the chunk index
MAX_OFFER = 128  # msgpack [kind (<= 64 chars), size]
MAX_ANSWER = 128  # msgpack [port, key, ticket]


class BulkError(BlobError):
    """A bulk transfer failed: bad offer or answer, a forged or broken chunk."""


@dataclass(frozen=True)
class Offer:
    kind: str
    size: int


@dataclass(frozen=True)
class Answer:
    port: int
    key: bytes
    ticket: bytes


def encode_offer(offer: Offer) -> bytes:
    return msgpack.packb([offer.kind, offer.size], use_bin_type=True)


def decode_offer(data: bytes) -> Offer:
    fields = _unpack(data, MAX_OFFER)
    if not (len(fields) == 2 and isinstance(fields[0], str) and type(fields[1]) is int and fields[1] >= 0):
        raise MalformedFrame("a bulk offer is [kind, size]")
    return Offer(fields[0], fields[1])


def encode_answer(answer: Answer) -> bytes:
    return msgpack.packb([answer.port, answer.key, answer.ticket], use_bin_type=True)


def decode_answer(data: bytes) -> Answer:
    fields = _unpack(data, MAX_ANSWER)
    if not (len(fields) == 3 and type(fields[0]) is int and 0 < fields[0] < 65536):
        raise MalformedFrame("a bulk answer is [port, key, ticket]")
    port, key, ticket = fields
    if not (isinstance(key, bytes) and len(key) == KEY and isinstance(ticket, bytes) and len(ticket) == TICKET):
        raise MalformedFrame("a bulk answer carries a 32-byte key and a 16-byte ticket")
    return Answer(port, key, ticket)


def _unpack(data: bytes, cap: int) -> list[Any]:
    if len(data) > cap:
        raise MalformedFrame("bulk negotiation message too large")
    try:
        fields = msgpack.unpackb(
            data, raw=False, max_str_len=64, max_bin_len=KEY, max_array_len=3, max_map_len=0, max_ext_len=0
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedFrame(f"bulk negotiation message is not valid msgpack: {exc}") from exc
    if not isinstance(fields, list):
        raise MalformedFrame("bulk negotiation message must be an array")
    return fields


def chunk_sizes(size: int, chunk: int) -> list[int]:
    """Plaintext lengths of the body's chunks (none for an empty body)."""
    return [min(chunk, size - start) for start in range(0, size, chunk)]


# --- sender ---


async def send_bulk(address: tuple[str, int], answer: Answer, data: bytes, *, chunk: int, timeout: float) -> None:
    """Connect, present the ticket, send `data` in AEAD chunks and the empty end chunk.
    Every socket operation must progress within `timeout` (the caller bounds the whole)."""
    aead = AESGCM(answer.key)
    view = memoryview(data)
    sealed = bytearray(chunk + TAG)  # one buffer, sealed into chunk after chunk
    try:
        with trio.fail_after(timeout):
            sock = await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as exc:
        raise BulkError(f"cannot connect to the bulk port {address}: {exc!r}") from exc
    async with sock:
        try:
            await _send(sock, answer.ticket, timeout)
            for index, start in enumerate(range(0, len(view), chunk)):
                plain = view[start : start + chunk]
                out = memoryview(sealed)[: len(plain) + TAG]
                aead.encrypt_into(_NONCE.pack(index), plain, None, out)
                await _send(sock, out, timeout)
            end = len(chunk_sizes(len(view), chunk))
            await _send(sock, aead.encrypt(_NONCE.pack(end), b"", None), timeout)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BulkError(f"bulk connection failed while sending: {exc!r}") from exc


async def _send(sock: trio.SocketStream, data: bytes | memoryview, timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            await sock.send_all(data)
    except trio.TooSlowError as exc:
        raise BlobTimeout(f"the bulk peer accepted nothing for {timeout:.0f}s") from exc


# --- receiver ---


@dataclass
class _Expected:
    key: bytes
    size: int
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BlobError | None = None
    claimed: bool = False
    reading: trio.CancelScope = field(default_factory=trio.CancelScope)


class BulkListener:
    """Accepts the bulk connections this node's blob streams negotiated (one TCP port)."""

    def __init__(self, host: str, *, chunk: int, timeout: float, max_unclaimed: int) -> None:
        self._host = host
        self._chunk = chunk
        self._timeout = timeout
        self._unclaimed = trio.Semaphore(max_unclaimed)  # connections still without a ticket
        self._expected: dict[bytes, _Expected] = {}
        self.port = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self._host)
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._serve, listeners, task_status=task_status)

    def expect(self, size: int) -> tuple[Answer, _Expected]:
        """A one-time key and ticket for a transfer of `size` bytes (already checked
        against the kind's cap): the caller sends the answer and awaits `receive`."""
        ticket = secrets.token_bytes(TICKET)
        expected = _Expected(key=AESGCM.generate_key(bit_length=256), size=size)
        self._expected[ticket] = expected
        return Answer(self.port, expected.key, ticket), expected

    async def receive(self, answer: Answer, expected: _Expected) -> bytes:
        """The verified blob; raises BlobError. The caller bounds the wait (its transfer
        deadline); leaving, for any reason, voids the ticket."""
        try:
            await expected.done.wait()
        finally:
            self._expected.pop(answer.ticket, None)
            expected.reading.cancel()  # a transfer still running past our deadline stops
        if expected.error is not None:
            raise expected.error
        if expected.data is None:
            raise BulkError("the bulk transfer ended without a blob")
        return expected.data

    async def _serve(self, sock: trio.SocketStream) -> None:
        async with sock:
            try:
                self._unclaimed.acquire_nowait()
            except trio.WouldBlock:
                return  # too many connections without a ticket: drop this one
            ticket: bytearray | None = None
            try:
                with trio.move_on_after(self._timeout):
                    ticket = await _receive_exactly(sock, TICKET)
            except (OSError, trio.BrokenResourceError):
                return  # reset before it said anything
            finally:
                self._unclaimed.release()
            expected = self._expected.get(bytes(ticket)) if ticket else None
            if expected is None or expected.claimed:
                return
            expected.claimed = True
            try:
                with expected.reading:
                    expected.data = await self._receive_body(sock, expected)
            except BlobError as exc:
                expected.error = exc
            except (OSError, trio.BrokenResourceError) as exc:
                expected.error = BulkError(f"bulk connection failed while reading: {exc!r}")
            finally:
                expected.done.set()

    async def _receive_body(self, sock: trio.SocketStream, expected: _Expected) -> bytes:
        aead = AESGCM(expected.key)
        blob = bytearray(expected.size)  # the size was checked against the kind's cap
        out = memoryview(blob)
        sealed = bytearray(self._chunk + TAG)  # each chunk is read into this, then opened into blob
        start = 0
        try:
            for index, length in enumerate(chunk_sizes(expected.size, self._chunk)):
                chunk = memoryview(sealed)[: length + TAG]
                await self._read_into(sock, chunk)
                _open_into(aead, index, chunk, out[start : start + length])
                start += length
            end = memoryview(sealed)[:TAG]
            await self._read_into(sock, end)
            _open_into(aead, len(chunk_sizes(expected.size, self._chunk)), end, out[:0])
        except OSError as exc:  # a reset connection, from recv_into
            raise BulkError(f"bulk connection failed while reading: {exc!r}") from exc
        return bytes(blob)

    async def _read_into(self, sock: trio.SocketStream, into: memoryview) -> None:
        try:
            with trio.fail_after(self._timeout):
                complete = await _receive_into(sock, into)
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk peer sent nothing for {self._timeout:.0f}s") from exc
        if not complete:
            raise TruncatedFrame("the bulk connection ended inside the blob")

def _open_into(aead: AESGCM, index: int, sealed: memoryview, into: memoryview) -> None:
    try:
        aead.decrypt_into(_NONCE.pack(index), sealed, None, into)
    except InvalidTag:
        raise BulkError(f"bulk chunk {index} failed authentication") from None


async def _receive_exactly(sock: trio.SocketStream, size: int) -> bytearray | None:
    """`size` bytes, or None if the peer closed first."""
    buffer = bytearray(size)
    return buffer if await _receive_into(sock, memoryview(buffer)) else None


async def _receive_into(sock: trio.SocketStream, into: memoryview) -> bool:
    """Fill `into` from the socket; False if the peer closed first."""
    filled = 0
    while filled < len(into):
        got = await sock.socket.recv_into(into[filled:])
        if not got:
            return False
        filled += got
    return True


def listen_host(listen_addrs: list[str]) -> str:
    """The IP the bulk port binds: that of the first /ip4 or /ip6 libp2p listen address."""
    for addr in listen_addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            return parts[2]
    return "127.0.0.1"



# --- the two ends of a negotiated transfer, as the blob service runs them ---


async def request(stream: Any, kind: str, data: bytes, limits: P2PLimits, reply_cap: SizeCap) -> Frame:
    """Offer `data` on the blob stream, send it over the bulk channel, and return the
    receiver's reply frame (an `!error` one if it refused the offer)."""
    chunk, timeout = limits.blob_chunk, limits.blob_read_timeout
    await write_frame(stream, BULK, encode_offer(Offer(kind, len(data))), chunk=chunk, timeout=timeout)
    answer_cap = {BULK: MAX_ANSWER, REPLY_ERROR: MAX_ERROR_REPLY}.get
    answered = await read_frame(stream, answer_cap, chunk=chunk, timeout=timeout)
    if answered.kind == REPLY_ERROR:
        return answered
    answer = decode_answer(answered.data)
    remote = stream.get_remote_address()
    if remote is None:
        raise BulkError("the blob stream has no remote address to reach the bulk port at")
    allowed = transfer_deadline(len(data), timeout, limits.blob_min_rate)
    try:
        with trio.fail_after(allowed):
            await send_bulk((remote[0], answer.port), answer, data, chunk=limits.bulk_chunk, timeout=timeout)
    except trio.TooSlowError as exc:
        raise BlobTimeout(f"the bulk transfer exceeded its deadline of {allowed:.0f}s") from exc
    return await read_frame(stream, reply_cap, chunk=chunk, timeout=timeout, first_timeout=limits.blob_reply_timeout)


async def serve(
    stream: Any, offer_frame: Frame, listener: BulkListener, size_cap: SizeCap, limits: P2PLimits
) -> Frame:
    """Answer a `!bulk` offer and return the blob it carried, verified, as if it had come
    on the stream itself. Raises BlobError (the caller refuses the stream with it)."""
    offer = decode_offer(offer_frame.data)
    cap = None if offer.kind == BULK else size_cap(offer.kind)
    if cap is None:
        raise UnknownBlobKind(f"blob kind {offer.kind!r} is not accepted here")
    if offer.size > cap:
        raise BlobTooLarge(f"blob kind {offer.kind!r} declares {offer.size} bytes; the cap is {cap}")
    answer, expected = listener.expect(offer.size)
    allowed = transfer_deadline(offer.size, limits.blob_read_timeout, limits.blob_min_rate)
    try:
        with trio.fail_after(allowed):
            await write_frame(
                stream, BULK, encode_answer(answer), chunk=limits.blob_chunk, timeout=limits.blob_read_timeout
            )
            data = await listener.receive(answer, expected)
    except trio.TooSlowError as exc:
        raise BlobTimeout(f"the bulk transfer exceeded its deadline of {allowed:.0f}s") from exc
    return Frame(offer.kind, data)
