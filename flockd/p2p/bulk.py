"""The bulk channel: large blobs over long-lived TCP sessions, keyed over the libp2p stream.

py-libp2p's Noise and Yamux frame and encrypt every 64 KiB in Python, and each message on a
stream (opening it, an offer, a reply) costs milliseconds of that work and of wake-ups: on
a loaded 2-core machine about 50 ms per blob. So a blob of `bulk_min` bytes or more goes
over a *bulk session* (protocol/spec/transfer.md §4): one plain TCP connection per
(dialer, receiver) pair that carries blob after blob, each with its header, its body and
its reply, and is keyed once over a `/flock/blob/1` stream:

1. the dialer sends a `!bulk` frame (empty) on a blob stream;
2. the receiver, if the peer holds less than its share of sessions, answers `!bulk`:
   msgpack [port, key(32), ticket(16)], a fresh AES-256-GCM key and ticket. The stream is
   Noise-encrypted and bound to the peer's identity, so only that peer learns them, and
   the session belongs to that peer;
3. the dialer connects to that port on the peer's address and sends the ticket;
4. from then on every record either side sends is sealed under the key, with the sender's
   direction and the record's index in that direction as the nonce: a record replayed,
   reordered, reflected back, or from another session fails authentication, and the
   session ends.

Per blob: the dialer's header [kind, size] and the body in chunks, at once; the receiver
checks the size against the kind's cap and takes a transfer slot before it allocates
anything, else answers a refusal (`!error`) and ends the session; the reply message.

No keccak256 on this path: the tags under the session key bind every byte, its place and
the size to the peer that learnt the key over its Noise stream; what a blob must match is
the hash the chain recorded for it, which its consumer checks (flockd/round/deltas.py).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
from flockd.p2p.streams import TransferSlots, transfer_deadline
from flockd.stats import Counters

logger = logging.getLogger("flockd.p2p")

BULK = "!bulk"  # the keying request and its answer, on the blob stream
KEY = 32
TICKET = 16
TAG = 16
MAX_ANSWER = 128  # msgpack [port, key, ticket]
TO_RECEIVER, TO_DIALER = 0, 1  # the direction a record travels: the nonce's first word
_NONCE = struct.Struct(">IQ")  # 96 bits: direction, the record's index in that direction
_HEADER = struct.Struct(">QB64s")  # size, len(kind), kind zero-padded: one fixed-size record
SEALED_HEADER = _HEADER.size + TAG


class BulkError(BlobError):
    """A bulk session failed: a bad answer, a record that fails authentication."""


@dataclass(frozen=True)
class Answer:
    port: int
    key: bytes
    ticket: bytes


def encode_answer(answer: Answer) -> bytes:
    return msgpack.packb([answer.port, answer.key, answer.ticket], use_bin_type=True)


def decode_answer(data: bytes) -> Answer:
    if len(data) > MAX_ANSWER:
        raise MalformedFrame("bulk answer too large")
    try:
        fields = msgpack.unpackb(
            data, raw=False, max_str_len=0, max_bin_len=KEY, max_array_len=3, max_map_len=0, max_ext_len=0
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedFrame(f"bulk answer is not valid msgpack: {exc}") from exc
    if not (isinstance(fields, list) and len(fields) == 3 and type(fields[0]) is int and 0 < fields[0] < 65536):
        raise MalformedFrame("a bulk answer is [port, key, ticket]")
    port, key, ticket = fields
    if not (isinstance(key, bytes) and len(key) == KEY and isinstance(ticket, bytes) and len(ticket) == TICKET):
        raise MalformedFrame("a bulk answer carries a 32-byte key and a 16-byte ticket")
    return Answer(port, key, ticket)


def encode_header(kind: str, size: int) -> bytes:
    name = kind.encode()
    return _HEADER.pack(size, len(name), name)


def decode_header(plain: bytes | bytearray | memoryview) -> tuple[str, int]:
    size, length, padded = _HEADER.unpack(plain)
    if length > len(padded) or any(padded[length:]):
        raise MalformedFrame("a bulk header's kind is 0..64 bytes, zero-padded")
    try:
        return padded[:length].decode(), size
    except UnicodeDecodeError:
        raise MalformedFrame("a bulk header's kind is not UTF-8") from None


def chunk_sizes(size: int, chunk: int) -> range:
    """Start offsets of a body's chunks (none for an empty body)."""
    return range(0, size, chunk)


class SealedChannel:
    """One end of an established session: records sealed under the session key, each with
    its direction and its index in that direction as the nonce. Any failure leaves the
    channel unusable (the caller closes it)."""

    def __init__(self, sock: trio.SocketStream, key: bytes, *, outgoing: int, chunk: int, timeout: float) -> None:
        self._sock = sock
        self._aead = AESGCM(key)
        self._out, self._in = outgoing, 1 - outgoing
        self._sent = 0
        self._opened = 0
        self._chunk = chunk
        self._timeout = timeout
        # Reused scratch space, one per direction: a dialer reads the reply while its body
        # is still going out, and a shared buffer let each overwrite the other's record.
        # Outgoing: room for a header and the first body record, sent in one write.
        self._send_buffer = bytearray(SEALED_HEADER + chunk + TAG)
        self._receive_buffer = bytearray(max(chunk, _HEADER.size) + TAG)

    async def send_header(self, kind: str, size: int) -> None:
        await self._send_sealed(self._seal_header(kind, size))

    async def receive_header(self, *, first_timeout: float | None = None) -> tuple[str, int] | None:
        """The next header, None if the peer closed the session cleanly before it.
        `first_timeout`: how long to wait for its first byte."""
        plain = bytearray(_HEADER.size)
        if not await self._receive_record(memoryview(plain), first_timeout=first_timeout, end_ok=True):
            return None
        return decode_header(plain)

    async def send_body(self, data: bytes | bytearray | memoryview, *, first: int = 0) -> None:
        """The body's records, from its `first` byte on (a multiple of the chunk)."""
        view = memoryview(data)
        for start in chunk_sizes(len(view), self._chunk)[first // self._chunk :]:
            await self._send_sealed(self._seal(view[start : start + self._chunk]))

    async def receive_body(self, size: int) -> bytearray:
        """`size` bytes (already checked against a cap), opened straight into one buffer,
        which the caller gets: copying it costs more than the transfer of a large blob (a
        second allocation of its size, its page faults and the copy)."""
        blob = bytearray(size)
        with memoryview(blob) as out:  # released before the caller gets the buffer
            for start in chunk_sizes(size, self._chunk):
                await self._receive_record(out[start : start + self._chunk])
        return blob

    async def send_message(self, kind: str, data: bytes | bytearray | memoryview) -> None:
        """A header and its body, the header in one write with the body's first record:
        one wake-up of the peer fewer per message (a small reply goes out in one write)."""
        view = memoryview(data)
        sealed = self._seal_header(kind, len(view))
        if view:
            sealed = self._seal(view[: self._chunk], at=len(sealed))
        await self._send_sealed(sealed)
        await self.send_body(view, first=self._chunk)

    async def receive_message(self, size_cap: SizeCap, grace: float, min_rate: float, *, first_timeout: float | None = None) -> Frame:
        """A header and its body: the size checked against `size_cap(kind)` first, the
        body within `transfer_deadline(size, grace, min_rate)`."""
        # The whole header within one read timeout of its first byte's: a peer trickling it
        # byte by byte (each read in time) holds us no longer than one that is silent.
        whole = (self._timeout if first_timeout is None else first_timeout) + self._timeout
        try:
            with trio.fail_after(whole):
                header = await self.receive_header(first_timeout=first_timeout)
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk peer's header took more than {whole:.0f}s") from exc
        if header is None:
            raise TruncatedFrame("the bulk session ended before a message")
        kind, size = header
        check_size(size_cap, kind, size)
        allowed = transfer_deadline(size, grace, min_rate)
        try:
            with trio.fail_after(allowed):
                return Frame(kind, bytes(await self.receive_body(size)))
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk message exceeded its deadline of {allowed:.0f}s") from exc

    async def aclose(self) -> None:
        await self._sock.aclose()

    async def drain(self) -> None:
        """Before closing with the peer's records still coming: stop sending, and read and
        drop what comes for up to 2 s (until the peer closes), so that closing does not
        reset the connection before the peer has read what we sent."""
        with trio.move_on_after(2.0):
            try:
                await self._sock.send_eof()
                while await self._sock.receive_some(len(self._receive_buffer)):
                    pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _seal_header(self, kind: str, size: int) -> memoryview:
        return self._seal(memoryview(encode_header(kind, size)))

    def _seal(self, plain: memoryview, *, at: int = 0) -> memoryview:
        """The next outgoing record sealed into the send buffer at `at`; the buffer up to
        its end."""
        end = at + len(plain) + TAG
        with memoryview(self._send_buffer) as buffer:
            self._aead.encrypt_into(_NONCE.pack(self._out, self._sent), plain, None, buffer[at:end])
        self._sent += 1
        return memoryview(self._send_buffer)[:end]

    async def _send_sealed(self, sealed: memoryview) -> None:
        try:
            with trio.fail_after(self._timeout):
                await write_all(self._sock, sealed)
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk peer accepted nothing for {self._timeout:.0f}s") from exc
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise BulkError(f"bulk connection failed while sending: {exc!r}") from exc

    async def _receive_record(
        self, into: memoryview, *, first_timeout: float | None = None, end_ok: bool = False
    ) -> bool:
        """Open the next record into `into`; False at a clean end if `end_ok`."""
        sealed = memoryview(self._receive_buffer)[: len(into) + TAG]
        if not await read_exactly(self._sock, sealed, self._timeout, first_timeout=first_timeout):
            if end_ok:
                return False
            raise TruncatedFrame("the bulk connection ended before a record")
        try:
            self._aead.decrypt_into(_NONCE.pack(self._in, self._opened), sealed, None, into)
        except InvalidTag:
            raise BulkError(f"bulk record {self._opened} failed authentication") from None
        self._opened += 1
        return True


async def read_exactly(
    sock: trio.SocketStream, into: memoryview, timeout: float, *, first_timeout: float | None = None
) -> bool:
    """Fill `into`; False if the peer closed before its first byte (a clean end between
    records), TruncatedFrame if inside it. Each read must progress within `timeout`
    (`first_timeout` for the first)."""
    # Straight on the non-blocking descriptor, waiting only when it has nothing: trio's
    # recv_into passes through its scheduler after every read, which cost more than the
    # reads here (a record takes several).
    fd = sock.socket.fileno()
    filled = 0
    wait = timeout if first_timeout is None else first_timeout
    await trio.lowlevel.checkpoint()
    while filled < len(into):
        try:
            got = os.readv(fd, [into[filled:]])
        except BlockingIOError:
            try:
                with trio.fail_after(wait):
                    await trio.lowlevel.wait_readable(fd)
            except trio.TooSlowError as exc:
                raise BlobTimeout(f"the bulk peer sent nothing for {wait:.0f}s") from exc
            except trio.ClosedResourceError as exc:
                raise BulkError("bulk connection closed while reading") from exc
            continue
        except OSError as exc:
            raise BulkError(f"bulk connection failed while reading: {exc!r}") from exc
        if not got:
            if filled:
                raise TruncatedFrame("the bulk connection ended inside a record")
            return False
        filled += got
        wait = timeout
    return True


async def write_all(sock: trio.SocketStream, data: memoryview) -> None:
    """All of `data`, written as read_exactly reads (OSError or ClosedResourceError when the
    connection fails; the caller bounds the time)."""
    fd = sock.socket.fileno()
    sent = 0
    await trio.lowlevel.checkpoint()
    while sent < len(data):
        try:
            sent += os.write(fd, data[sent:])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)


def check_size(size_cap: SizeCap, kind: str, size: int) -> None:
    cap = size_cap(kind)
    if cap is None:
        raise UnknownBlobKind(f"blob kind {kind!r} is not accepted here")
    if size > cap:
        raise BlobTooLarge(f"blob kind {kind!r} declares {size} bytes; the cap is {cap}")


def _deadline(size: int, limits: P2PLimits) -> float:
    return transfer_deadline(size, limits.blob_read_timeout, limits.blob_min_rate)


async def _connect(address: tuple[str, int], timeout: float) -> trio.SocketStream:
    try:
        with trio.fail_after(timeout):
            return await trio.open_tcp_stream(*address)
    except (OSError, trio.TooSlowError) as exc:
        raise BulkError(f"cannot connect to the bulk port {address}: {exc!r}") from exc


# --- the receiver ---

# (peer id, kind, blob) -> the reply frame (REPLY_*), as the blob service answers a stream;
# it owns the blob's buffer
BlobServer = Callable[[str, str, bytearray], Awaitable[Frame]]


@dataclass
class _Keyed:
    peer_id: str
    key: bytes


class BulkListener:
    """Accepts the bulk sessions this node's blob streams keyed (one TCP port), and serves
    blob after blob on each for the peer that keyed it."""

    def __init__(
        self,
        host: str,
        limits: P2PLimits,
        *,
        serve_blob: BlobServer,
        size_cap: SizeCap,
        blob_slots: TransferSlots,
        banned: Callable[[str], bool],
        counters: Counters | None = None,
    ) -> None:
        """`counters`: where bulk_sessions_keyed and bulk_sessions_failed are counted."""
        self._host = host
        self._limits = limits
        self._serve_blob = serve_blob
        self._size_cap = size_cap
        self._blob_slots = blob_slots
        self._banned = banned
        # A keyed session holds one of these from its keying until it ends: each peer its
        # share, and all peers together a bounded number of sockets.
        self._session_slots = TransferSlots(limits.bulk_sessions, limits.max_inbound_blobs_per_peer)
        self._unclaimed = trio.Semaphore(2 * limits.max_inbound_blobs)  # connections without a ticket yet
        self._keyed: dict[bytes, _Keyed] = {}
        self._nursery: trio.Nursery | None = None
        self.counters = counters or Counters()
        self.port = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self._host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started()

    def key_session(self, peer_id: str) -> Answer:
        """A one-time ticket and a fresh key for a session of `peer_id`. Raises BlobError
        when the peer already holds its share of sessions (or all are taken)."""
        if self._nursery is None:
            raise BulkError("the bulk listener is not running")
        if not self._session_slots.try_acquire(peer_id):
            raise BlobError("busy: too many bulk sessions")
        ticket = secrets.token_bytes(TICKET)
        keyed = _Keyed(peer_id, AESGCM.generate_key(bit_length=256))
        self._keyed[ticket] = keyed
        self._nursery.start_soon(self._expire, ticket, keyed)
        self.counters.incr("bulk_sessions_keyed")
        return Answer(self.port, keyed.key, ticket)

    async def _expire(self, ticket: bytes, keyed: _Keyed) -> None:
        await trio.sleep(self._limits.blob_read_timeout)
        if self._keyed.pop(ticket, None) is not None:  # never claimed
            self._session_slots.release(keyed.peer_id)

    async def _serve(self, sock: trio.SocketStream) -> None:
        async with sock:
            try:
                self._unclaimed.acquire_nowait()
            except trio.WouldBlock:
                return  # too many connections without a ticket: drop this one
            ticket = bytearray(TICKET)
            try:
                with trio.fail_after(self._limits.blob_read_timeout):  # the whole ticket, however sent
                    presented = await read_exactly(sock, memoryview(ticket), math.inf)
            except (BlobError, trio.TooSlowError):
                return  # silent, closed or reset before it said anything
            finally:
                self._unclaimed.release()
            keyed = self._keyed.pop(bytes(ticket), None) if presented else None
            if keyed is None:
                return
            channel = SealedChannel(
                sock, keyed.key, outgoing=TO_DIALER, chunk=self._limits.bulk_chunk, timeout=self._limits.blob_read_timeout
            )
            try:
                await self._run_session(channel, keyed.peer_id)
            except BlobError as exc:
                self.counters.incr("bulk_sessions_failed")
                logger.info("bulk session of %s ended: %s", keyed.peer_id, exc)
            finally:
                self._session_slots.release(keyed.peer_id)

    async def _run_session(self, channel: SealedChannel, peer_id: str) -> None:
        limits = self._limits
        while True:
            # The whole header within the idle limit: trickling it byte by byte (each read
            # within the read timeout) holds the session no longer than silence does.
            with trio.move_on_after(limits.bulk_idle) as idle:
                header = await channel.receive_header(first_timeout=math.inf)
            if idle.cancelled_caught:
                return  # idle for too long: the dialer opens a new session when it needs one
            if header is None or self._banned(peer_id):
                return
            kind, size = header
            if kind.startswith("!"):  # only application kinds travel to a receiver
                raise MalformedFrame(f"bulk header of kind {kind!r} from the dialer")
            try:
                check_size(self._size_cap, kind, size)
                if not self._blob_slots.try_acquire(peer_id):
                    raise BlobError("busy: too many concurrent blob transfers")
            except BlobError as exc:
                # The body is on its way: say why, and end the session rather than read it.
                await channel.send_message(REPLY_ERROR, str(exc).encode()[:MAX_ERROR_REPLY])
                await channel.drain()
                return
            try:
                await self._serve_one(channel, peer_id, kind, size)
            finally:
                self._blob_slots.release(peer_id)

    async def _serve_one(self, channel: SealedChannel, peer_id: str, kind: str, size: int) -> None:
        allowed = _deadline(size, self._limits)
        try:
            with trio.fail_after(allowed):
                data = await channel.receive_body(size)
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk transfer exceeded its deadline of {allowed:.0f}s") from exc
        reply = await self._serve_blob(peer_id, kind, data)
        allowed = _deadline(len(reply.data), self._limits)
        try:
            with trio.fail_after(allowed):
                await channel.send_message(reply.kind, reply.data)
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"the bulk reply exceeded its deadline of {allowed:.0f}s") from exc


def listen_host(listen_addrs: list[str]) -> str:
    """The IP the bulk port binds: that of the first /ip4 or /ip6 libp2p listen address."""
    for addr in listen_addrs:
        parts = addr.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
            return parts[2]
    return "127.0.0.1"


# --- the dialer ---

# peer id -> (the receiver's IP as the keying stream saw it, the answer to our `!bulk`)
SessionKeyer = Callable[[str], Awaitable[tuple[str, Answer]]]


class _Stale(BulkError):
    """A reused idle session failed before the receiver accepted anything: it had closed."""


@dataclass
class _Idle:
    channel: SealedChannel
    since: float


class BulkSessions:
    """The dialer's sessions: at most `max_inbound_blobs_per_peer` per peer (the receiver's
    share; more blobs to that peer wait), reused blob after blob, dropped after an error or
    once idle for half the receiver's idle limit."""

    def __init__(self, limits: P2PLimits, key_session: SessionKeyer, counters: Counters | None = None) -> None:
        """`counters`: where bulk_sessions_opened is counted."""
        self._limits = limits
        self._key_session = key_session
        self._shares: dict[str, trio.Semaphore] = {}
        self._idle: dict[str, list[_Idle]] = {}
        self.counters = counters or Counters()

    async def request(self, peer_id: str, kind: str, data: bytes, reply_cap: SizeCap) -> Frame:
        """Send `data` and return the receiver's reply frame (`!error` when it refused)."""
        share = self._shares.setdefault(peer_id, trio.Semaphore(self._limits.max_inbound_blobs_per_peer))
        async with share:
            idle = self._take_idle(peer_id)
            if idle is not None:
                try:
                    return await self._exchange(peer_id, idle, kind, data, reply_cap, reused=True)
                except _Stale:
                    pass  # the receiver closed it while idle: key a new one
            return await self._exchange(peer_id, await self._open(peer_id), kind, data, reply_cap, reused=False)

    async def close_idle(self, *, older_than: float = 0.0) -> None:
        now = trio.current_time()
        for peer_id in list(self._idle):
            keep = []
            for idle in self._idle[peer_id]:
                if now - idle.since >= older_than:
                    await idle.channel.aclose()
                else:
                    keep.append(idle)
            self._idle[peer_id] = keep
            self._forget_if_unused(peer_id)

    async def run(self) -> None:
        """Close sessions idle for half the receiver's limit, until cancelled; then all."""
        try:
            while True:
                await trio.sleep(self._limits.bulk_idle / 4)
                await self.close_idle(older_than=self._limits.bulk_idle / 2)
        finally:
            with trio.CancelScope(shield=True):
                await self.close_idle()

    def _take_idle(self, peer_id: str) -> SealedChannel | None:
        idle = self._idle.get(peer_id)
        now = trio.current_time()
        while idle:
            entry = idle.pop()
            if now - entry.since < self._limits.bulk_idle / 2:
                return entry.channel
            # too old to trust: the receiver may be closing it right now (closed by run())
        return None

    def _forget_if_unused(self, peer_id: str) -> None:
        share = self._shares.get(peer_id)
        if not self._idle.get(peer_id) and share is not None and share.value == self._limits.max_inbound_blobs_per_peer:
            self._idle.pop(peer_id, None)
            del self._shares[peer_id]

    async def _open(self, peer_id: str) -> SealedChannel:
        limits = self._limits
        host, answer = await self._key_session(peer_id)
        sock = await _connect((host, answer.port), limits.blob_read_timeout)
        channel = SealedChannel(sock, answer.key, outgoing=TO_RECEIVER, chunk=limits.bulk_chunk, timeout=limits.blob_read_timeout)
        try:
            with trio.fail_after(limits.blob_read_timeout):
                await sock.send_all(answer.ticket)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            await channel.aclose()
            raise BulkError(f"bulk connection failed while sending the ticket: {exc!r}") from exc
        self.counters.incr("bulk_sessions_opened")
        return channel

    async def _exchange(
        self, peer_id: str, channel: SealedChannel, kind: str, data: bytes, reply_cap: SizeCap, *, reused: bool
    ) -> Frame:
        # The body follows the header at once (a round trip for a go costs more than the
        # socket time of a 4 MiB blob on a loaded machine); a receiver that refuses the
        # header answers with its reason and ends the session, so the reply is read while
        # the body is still going out, and a refusal stops it.
        limits = self._limits
        allowed = _deadline(len(data), limits)
        upload_error: list[BlobError] = []
        reply: Frame | None = None

        async def upload(reading: trio.CancelScope) -> None:
            try:
                with trio.fail_after(allowed):
                    await channel.send_message(kind, data)
            except trio.TooSlowError:
                upload_error.append(BlobTimeout(f"the bulk transfer exceeded its deadline of {allowed:.0f}s"))
                reading.cancel()
            except BlobError as exc:  # e.g. the receiver refused and closed: its reply says why
                upload_error.append(exc)

        try:
            try:
                read_error: list[BlobError] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(upload, nursery.cancel_scope)
                    try:
                        reply = await channel.receive_message(
                            reply_cap, limits.blob_read_timeout, limits.blob_min_rate,
                            first_timeout=allowed + limits.blob_reply_timeout,
                        )
                    except BlobError as exc:  # raised below, not as an exception group
                        read_error.append(exc)
                    nursery.cancel_scope.cancel()  # a refusal can come before the body is out
                if read_error:
                    raise read_error[0]
            except (BulkError, TruncatedFrame) as exc:
                raise (_Stale(str(exc)) if reused else exc) from exc
            if reply is None:
                raise upload_error[0]
            if reply.kind == REPLY_ERROR or upload_error:
                raise _Refused(reply)  # the receiver ended the session
        except _Refused as refused:
            await channel.aclose()
            return refused.reply
        except BaseException:
            with trio.CancelScope(shield=True):
                await channel.aclose()
            raise
        self._idle.setdefault(peer_id, []).append(_Idle(channel, trio.current_time()))
        return reply


class _Refused(Exception):
    def __init__(self, reply: Frame) -> None:
        self.reply = reply
