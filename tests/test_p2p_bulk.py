"""Bulk sessions: only the peer that keyed a session gets bytes in, every record is bound to
its session, direction and place, a session carries blob after blob, and what a peer can
hold open (sessions, slots, idle time) is bounded."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.p2p import bulk
from flockd.p2p.blobs import REPLY_DATA, REPLY_ERROR, BlobError, BlobRejected, Frame, MalformedFrame
from flockd.p2p.bulk import Answer, BulkListener, BulkSessions, SealedChannel
from flockd.p2p.limits import P2PLimits
from flockd.p2p.streams import TransferSlots

CHUNK = 64 * 1024
PEER = "peer-a"
KIND = "blob.test"
CAP = 8 * CHUNK
LIMITS = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=5.0, bulk_idle=5.0, bulk_sessions=4, max_inbound_blobs=4)


@dataclass
class Receiver:
    """A bulk listener whose blob service answers with the blob's length, and records what
    it was handed."""

    limits: P2PLimits = LIMITS
    served: list[tuple[str, str, bytearray]] = field(default_factory=list)
    banned: set[str] = field(default_factory=set)
    listener: BulkListener | None = None

    async def serve_blob(self, peer_id: str, kind: str, data: bytearray) -> Frame:
        self.served.append((peer_id, kind, data))
        return Frame(REPLY_DATA, len(data).to_bytes(8, "big"))

    async def start(self, nursery: trio.Nursery) -> BulkListener:
        self.listener = BulkListener(
            "127.0.0.1",
            self.limits,
            serve_blob=self.serve_blob,
            size_cap={KIND: CAP}.get,
            blob_slots=TransferSlots(self.limits.max_inbound_blobs, self.limits.max_inbound_blobs_per_peer),
            banned=self.banned.__contains__,
        )
        await nursery.start(self.listener.run)
        return self.listener

    async def keyer(self, peer_id: str) -> tuple[str, Answer]:
        """What the blob stream does for a dialer: key a session for this peer."""
        assert self.listener is not None
        return "127.0.0.1", self.listener.key_session(PEER)


def reply_cap(kind: str) -> int | None:
    return {REPLY_DATA: 8, REPLY_ERROR: 1024, "!none": 0}.get(kind)


async def open_raw(listener: BulkListener, peer_id: str = PEER) -> tuple[trio.SocketStream, SealedChannel, Answer]:
    """A dialer's session by hand: the attacker's tool."""
    answer = listener.key_session(peer_id)
    sock = await trio.open_tcp_stream("127.0.0.1", answer.port)
    await sock.send_all(answer.ticket)
    channel = SealedChannel(sock, answer.key, outgoing=bulk.TO_RECEIVER, chunk=CHUNK, timeout=5.0)
    return sock, channel, answer


@contextlib.asynccontextmanager
async def raw_session(receiver: Receiver) -> AsyncIterator[tuple[trio.SocketStream, SealedChannel]]:
    """A running receiver and a session opened by hand to it, within 30 s."""
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        sock, channel, _ = await open_raw(listener)
        with trio.fail_after(30):
            yield sock, channel
        await sock.aclose()
        nursery.cancel_scope.cancel()


async def receive_raw(sock: trio.SocketStream, size: int) -> bytes:
    raw = b""
    while len(raw) < size:
        got = await sock.receive_some(size - len(raw))
        assert got
        raw += got
    return raw


async def assert_closed(sock: trio.SocketStream) -> None:
    """The receiver ends the session: what is left to read, then EOF (or a reset)."""
    with trio.fail_after(10):
        with contextlib.suppress(trio.BrokenResourceError):
            while await sock.receive_some(1 << 16):
                pass


async def test_blob_after_blob_on_one_session_with_their_replies() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await receiver.start(nursery)
        sessions = BulkSessions(LIMITS, receiver.keyer)
        blobs = [os.urandom(3 * CHUNK + 5), os.urandom(CHUNK), b"", os.urandom(CAP)]
        with trio.fail_after(30):
            for data in blobs:
                reply = await sessions.request(PEER, KIND, data, reply_cap)
                assert reply == Frame(REPLY_DATA, len(data).to_bytes(8, "big"))
        assert [served[2] for served in receiver.served] == blobs
        assert sessions.counters.get("bulk_sessions_opened") == 1
        await sessions.close_idle()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("kind", "size"), [(KIND, CAP + 1), (KIND, 2**64 - 1), ("unknown.kind", 1)])
async def test_a_header_over_the_cap_or_of_an_unknown_kind_is_refused_before_any_body(kind: str, size: int) -> None:
    receiver = Receiver()
    async with raw_session(receiver) as (sock, channel):
        await channel.send_header(kind, size)
        await channel.send_body(os.urandom(CHUNK))  # the body follows at once; it is never read
        refusal = await channel.receive_message(reply_cap, 5.0, LIMITS.blob_min_rate)
        assert refusal.kind == REPLY_ERROR and (b"cap" in refusal.data or b"not accepted" in refusal.data)
        await assert_closed(sock)  # the refusal ends the session
    assert receiver.served == []


async def test_a_replayed_record_fails_authentication_and_ends_the_session() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        answer = listener.key_session(PEER)
        aead = bulk.AESGCM(answer.key)
        header = aead.encrypt(bulk._NONCE.pack(bulk.TO_RECEIVER, 0), bulk.encode_header(KIND, 4), None)
        body = aead.encrypt(bulk._NONCE.pack(bulk.TO_RECEIVER, 1), b"abcd", None)
        sock = await trio.open_tcp_stream("127.0.0.1", answer.port)
        with trio.fail_after(30):
            await sock.send_all(answer.ticket + header + body)
            await receive_raw(sock, bulk.SEALED_HEADER + 8 + bulk.TAG)  # the reply
            await sock.send_all(header + body)  # the first blob again, as recorded
            await assert_closed(sock)
        assert len(receiver.served) == 1  # the replay reached no handler
        nursery.cancel_scope.cancel()


def sealed_blob(answer: Answer, size: int) -> tuple[bytes, list[bytes]]:
    """A blob's header and body records of `size` random bytes, sealed by hand (the dialer's
    first blob on the session)."""
    aead = bulk.AESGCM(answer.key)
    header = aead.encrypt(bulk._NONCE.pack(bulk.TO_RECEIVER, 0), bulk.encode_header(KIND, size), None)
    body = os.urandom(size)
    records = [
        aead.encrypt(bulk._NONCE.pack(bulk.TO_RECEIVER, 1 + index), body[start : start + CHUNK], None)
        for index, start in enumerate(range(0, size, CHUNK))
    ]
    return header, records


async def assert_no_handler_gets(body: Callable[[list[bytes]], bytes], *, end: bool) -> None:
    """Send a blob's ticket and header, then ``body(records)`` (a 3-record body sealed by
    hand), and a clean end if ``end``: the receiver closes the session, serving nothing."""
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        answer = listener.key_session(PEER)
        header, records = sealed_blob(answer, 3 * CHUNK)
        sock = await trio.open_tcp_stream("127.0.0.1", answer.port)
        with trio.fail_after(30):
            with contextlib.suppress(trio.BrokenResourceError):  # reset once the receiver fails it
                await sock.send_all(answer.ticket + header + body(records))
                if end:
                    await sock.send_eof()
            await assert_closed(sock)
        assert receiver.served == []
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("where", [0, CHUNK // 2, CHUNK + bulk.TAG - 1])  # first byte, inside, last byte (its tag)
async def test_a_tampered_body_record_fails_authentication_and_reaches_no_handler(where: int) -> None:
    def tampered(records: list[bytes]) -> bytes:
        middle = bytearray(records[1])
        middle[where] ^= 1
        return records[0] + middle + records[2]

    await assert_no_handler_gets(tampered, end=False)


@pytest.mark.parametrize("cut", [CHUNK + bulk.TAG + 1, CHUNK + bulk.TAG + CHUNK // 2, 2 * (CHUNK + bulk.TAG) - 1])
async def test_a_body_cut_inside_a_record_reaches_no_handler(cut: int) -> None:
    await assert_no_handler_gets(lambda records: b"".join(records)[:cut], end=True)  # a clean end, inside a record


async def test_a_receiver_record_reflected_back_fails_authentication() -> None:
    receiver = Receiver()
    async with raw_session(receiver) as (sock, channel):
        await channel.send_message(KIND, b"abcd")
        reply_header = await receive_raw(sock, bulk.SEALED_HEADER)  # sealed by the receiver
        await receive_raw(sock, 8 + bulk.TAG)
        await sock.send_all(reply_header)  # sent back as our next header
        await assert_closed(sock)
    assert len(receiver.served) == 1


async def test_another_header_instead_of_the_body_ends_the_session() -> None:
    # Interleaving: after its go, the receiver reads the body and nothing else.
    receiver = Receiver()
    async with raw_session(receiver) as (sock, channel):
        await channel.send_header(KIND, 4)
        await channel.send_header(KIND, 4)  # a second blob's header where the body belongs
        await assert_closed(sock)
    assert receiver.served == []


async def test_a_reserved_kind_from_the_dialer_ends_the_session() -> None:
    receiver = Receiver()
    async with raw_session(receiver) as (sock, channel):
        await channel.send_header(REPLY_ERROR, 0)
        await assert_closed(sock)
    assert receiver.served == []


async def test_a_wrong_key_a_void_ticket_and_a_used_ticket_get_nothing_in() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        with trio.fail_after(30):
            answer = listener.key_session(PEER)
            sock = await trio.open_tcp_stream("127.0.0.1", answer.port)
            await sock.send_all(answer.ticket)
            forged = SealedChannel(sock, os.urandom(32), outgoing=bulk.TO_RECEIVER, chunk=CHUNK, timeout=5.0)
            await forged.send_header(KIND, 4)
            await assert_closed(sock)
            # The ticket was used: presenting it again gets the connection dropped.
            again = await trio.open_tcp_stream("127.0.0.1", answer.port)
            await again.send_all(answer.ticket)
            await assert_closed(again)
            # A guessed ticket too.
            guess = await trio.open_tcp_stream("127.0.0.1", answer.port)
            await guess.send_all(os.urandom(bulk.TICKET))
            await assert_closed(guess)
        assert receiver.served == []
        nursery.cancel_scope.cancel()


async def test_a_peer_holds_at_most_its_share_of_sessions_and_an_idle_one_is_closed() -> None:
    limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=5.0, bulk_idle=0.5, bulk_sessions=4, max_inbound_blobs=4)
    receiver = Receiver(limits=limits)
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        with trio.fail_after(30):
            held = [await open_raw(listener) for _ in range(limits.max_inbound_blobs_per_peer)]
            with pytest.raises(BlobError, match="busy"):
                listener.key_session(PEER)
            assert listener.key_session("peer-b").ticket  # another peer's share is untouched
            for sock, _, _ in held:
                await assert_closed(sock)  # silent past bulk_idle
            await trio.sleep(0.1)  # their shares are free again once the sessions ended
            sock, _, _ = await open_raw(listener)
            await sock.aclose()
        nursery.cancel_scope.cancel()


async def test_an_unclaimed_ticket_expires_and_frees_the_peers_share() -> None:
    limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=0.5, bulk_sessions=4, max_inbound_blobs=4)
    receiver = Receiver(limits=limits)
    async with trio.open_nursery() as nursery:
        listener = await receiver.start(nursery)
        tickets = [listener.key_session(PEER) for _ in range(limits.max_inbound_blobs_per_peer)]
        with pytest.raises(BlobError, match="busy"):
            listener.key_session(PEER)
        await trio.sleep(1.0)
        listener.key_session(PEER)
        with trio.fail_after(10):
            late = await trio.open_tcp_stream("127.0.0.1", tickets[0].port)
            await late.send_all(tickets[0].ticket)
            await assert_closed(late)
        nursery.cancel_scope.cancel()


async def test_a_session_of_a_banned_peer_ends_at_its_next_blob() -> None:
    receiver = Receiver()
    async with raw_session(receiver) as (sock, channel):
        receiver.banned.add(PEER)
        await channel.send_header(KIND, 4)
        await assert_closed(sock)
    assert receiver.served == []


async def test_a_dialer_resetting_mid_blob_fails_that_session_only() -> None:
    receiver = Receiver()
    data = os.urandom(3 * CHUNK)
    async with raw_session(receiver) as (sock, channel):
        await channel.send_header(KIND, 3 * CHUNK)
        await channel.send_body(os.urandom(CHUNK))
        sock.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await sock.aclose()  # with linger 0: an RST, not a FIN
        sessions = BulkSessions(LIMITS, receiver.keyer)
        assert (await sessions.request(PEER, KIND, data, reply_cap)).kind == REPLY_DATA
        await sessions.close_idle()
    assert [served[2] for served in receiver.served] == [data]


async def test_a_dialer_replaces_a_session_the_receiver_closed_while_idle() -> None:
    limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=5.0, bulk_idle=0.5, bulk_sessions=4, max_inbound_blobs=4)
    receiver = Receiver(limits=limits)
    # The dialer trusts an idle session for longer than the receiver keeps it.
    dialer_limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=5.0, bulk_idle=60.0)
    async with trio.open_nursery() as nursery:
        await receiver.start(nursery)
        sessions = BulkSessions(dialer_limits, receiver.keyer)
        with trio.fail_after(30):
            assert (await sessions.request(PEER, KIND, b"one", reply_cap)).kind == REPLY_DATA
            await trio.sleep(1.0)  # the receiver closes it
            assert (await sessions.request(PEER, KIND, b"two", reply_cap)).kind == REPLY_DATA
        assert sessions.counters.get("bulk_sessions_opened") == 2
        await sessions.close_idle()
        nursery.cancel_scope.cancel()


async def test_a_refusal_comes_back_as_an_error_reply() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await receiver.start(nursery)
        sessions = BulkSessions(LIMITS, receiver.keyer)
        with trio.fail_after(30):
            reply = await sessions.request(PEER, KIND, os.urandom(CAP + 1), reply_cap)
            assert reply.kind == REPLY_ERROR and b"cap" in reply.data
            assert (await sessions.request(PEER, KIND, b"x", reply_cap)).kind == REPLY_DATA
        assert sessions.counters.get("bulk_sessions_opened") == 2  # a refusal ends its session
        await sessions.close_idle()
        nursery.cancel_scope.cancel()


async def test_a_reply_over_the_dialers_cap_fails_the_request() -> None:
    receiver = Receiver()

    async def oversized(peer_id: str, kind: str, data: bytearray) -> Frame:
        return Frame(REPLY_DATA, bytes(64))  # reply_cap allows 8

    receiver.serve_blob = oversized  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await receiver.start(nursery)
        sessions = BulkSessions(LIMITS, receiver.keyer)
        with trio.fail_after(30), pytest.raises(BlobError, match="cap"):
            await sessions.request(PEER, KIND, b"x", reply_cap)
        nursery.cancel_scope.cancel()


async def test_a_refused_keying_is_a_rejection() -> None:
    async def refusing(peer_id: str) -> tuple[str, Answer]:
        raise BlobRejected("busy")

    sessions = BulkSessions(LIMITS, refusing)
    with pytest.raises(BlobRejected):
        await sessions.request(PEER, KIND, b"x", reply_cap)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_the_answer_decoder_only_raises_malformed_frame(data: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        bulk.decode_answer(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=bulk._HEADER.size, max_size=bulk._HEADER.size))
def test_the_header_decoder_only_raises_malformed_frame(data: bytes) -> None:
    with contextlib.suppress(MalformedFrame):
        bulk.decode_header(data)


def test_round_trips() -> None:
    answer = Answer(4242, os.urandom(32), os.urandom(16))
    assert bulk.decode_answer(bulk.encode_answer(answer)) == answer
    assert bulk.decode_header(bulk.encode_header("fl.delta.1", 5 << 20)) == ("fl.delta.1", 5 << 20)
    assert bulk.decode_header(bulk.encode_header("", 0)) == ("", 0)


async def test_a_header_trickled_byte_by_byte_is_cut_at_the_idle_limit() -> None:
    limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=5.0, bulk_idle=0.5, bulk_sessions=4, max_inbound_blobs=4)
    receiver = Receiver(limits=limits)
    async with raw_session(receiver) as (sock, _):

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for _ in range(bulk.SEALED_HEADER):
                    await sock.send_all(b"\0")
                    await trio.sleep(0.2)  # each byte well within the read timeout

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            await assert_closed(sock)  # within the idle limit, not after 89 × 0.2 s
            nursery.cancel_scope.cancel()


async def test_a_receiver_trickling_its_reply_header_is_cut_at_the_dialers_deadline() -> None:
    limits = P2PLimits(bulk_chunk=CHUNK, blob_read_timeout=0.5, blob_reply_timeout=0.5)
    key, ticket = os.urandom(32), os.urandom(bulk.TICKET)

    async def trickling_receiver(sock: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await receive_raw(sock, bulk.TICKET + bulk.SEALED_HEADER + 1 + bulk.TAG)
            for _ in range(bulk.SEALED_HEADER):
                await sock.send_all(b"\0")
                await trio.sleep(0.3)  # each byte within the dialer's read timeout

    async def keyer(peer_id: str) -> tuple[str, Answer]:
        return "127.0.0.1", Answer(port, key, ticket)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, trickling_receiver, 0)
        port = listeners[0].socket.getsockname()[1]
        sessions = BulkSessions(limits, keyer)
        with trio.fail_after(10), pytest.raises(BlobError, match="header"):
            await sessions.request(PEER, KIND, b"x", reply_cap)
        nursery.cancel_scope.cancel()
