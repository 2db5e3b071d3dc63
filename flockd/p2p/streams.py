"""Moving blob frames over a libp2p stream: bounded reads, per-read timeouts, a deadline
for the whole transfer, per-peer shares of the inbound slots, clean errors.

Bodies above INLINE_HASH_MAX are hashed in a worker thread (keccak256 of a 64 MiB reply
would hold the event loop, and every peer's gossip with it, for a good part of a second);
the size caps still apply from the header, before any body byte is buffered."""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError

from flockd.p2p.blobs import (
    BlobError,
    BlobTimeout,
    Frame,
    FrameDecoder,
    FrameHeader,
    SizeCap,
    TruncatedFrame,
    check_body,
    digest,
    encode_header,
)

INLINE_HASH_MAX = 64 * 1024  # hashing less costs less than a hop to a worker thread


class TransferSlots:
    """Inbound transfer slots: at most `total` at once, and at most `per_peer` of them held
    by any one peer, so a peer with slow streams cannot take every slot."""

    def __init__(self, total: int, per_peer: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._held: Counter[str] = Counter()

    def try_acquire(self, peer_id: str) -> bool:
        if self._held.total() >= self._total or self._held[peer_id] >= self._per_peer:
            return False
        self._held[peer_id] += 1
        return True

    def release(self, peer_id: str) -> None:
        self._held[peer_id] -= 1
        if self._held[peer_id] <= 0:
            del self._held[peer_id]


def transfer_deadline(size: int, grace: float, min_rate: float | None) -> float:
    """Seconds a whole transfer of `size` bytes may take: `grace` plus the time it needs at
    `min_rate` bytes per second (no bound without a rate)."""
    return math.inf if min_rate is None else grace + size / min_rate


async def read_frame(
    stream: INetStream,
    size_cap: SizeCap,
    *,
    chunk: int,
    timeout: float,
    first_timeout: float | None = None,
    min_rate: float | None = None,
) -> Frame:
    """Read exactly one frame. Each read must make progress within `timeout` seconds
    (`first_timeout` for the first one, e.g. while the peer is still busy), so a stalled
    peer costs at most that long; with `min_rate`, the whole frame must arrive within
    `transfer_deadline(size)`, so a peer trickling bytes cannot hold the transfer either.
    Reads never exceed what the frame still needs, so unread bytes stay in the muxer's
    window and throttle the sender (backpressure)."""
    start = trio.current_time()
    frame: Frame | None = None
    with trio.CancelScope(deadline=start + transfer_deadline(0, timeout, min_rate)) as whole:
        frame = await _read_frame(stream, size_cap, chunk, timeout, first_timeout, whole, start, min_rate)
    if frame is None:
        raise BlobTimeout(f"the transfer exceeded its deadline of {whole.deadline - start:.0f}s")
    return frame


async def _read_frame(
    stream: INetStream,
    size_cap: SizeCap,
    chunk: int,
    timeout: float,
    first_timeout: float | None,
    whole: trio.CancelScope,
    start: float,
    min_rate: float | None,
) -> Frame:
    decoder = FrameDecoder(size_cap, chunk=chunk, verify=False)
    header: FrameHeader | None = None
    wait = timeout if first_timeout is None else first_timeout
    while True:
        try:
            with trio.fail_after(wait):
                data = await stream.read(decoder.wanted())
            wait = timeout
        except trio.TooSlowError as exc:
            raise BlobTimeout(f"peer sent nothing for {wait:.0f}s") from exc
        except StreamEOF:
            data = b""
        except StreamError as exc:
            raise BlobError(f"stream failed while reading: {exc!r}") from exc
        if not data:
            decoder.end_of_stream()
            raise TruncatedFrame("stream ended before a frame")
        for event in decoder.feed(data):
            if isinstance(event, Frame):
                assert header is not None  # the decoder yields a frame's header first
                if len(event.data) <= INLINE_HASH_MAX:
                    check_body(header, event.data)
                else:
                    await trio.to_thread.run_sync(check_body, header, event.data)
                return event
            header = event
            whole.deadline = start + transfer_deadline(event.size, timeout, min_rate)


async def write_frame(
    stream: INetStream,
    kind: str,
    data: bytes,
    *,
    chunk: int,
    timeout: float,
    min_rate: float | None = None,
) -> None:
    # Each write is bounded by `timeout`, and all of them by `transfer_deadline`: the
    # muxer's own wait for window space is safe to cancel, and a peer that accepts
    # nothing for that long (or too little in all) is dead or stalling us on purpose.
    view = memoryview(data)
    allowed = transfer_deadline(len(data), timeout, min_rate)
    body_hash = digest(view) if len(view) <= INLINE_HASH_MAX else await trio.to_thread.run_sync(digest, view)
    try:
        with trio.fail_after(allowed):
            with trio.fail_after(timeout):
                await stream.write(encode_header(kind, len(data), body_hash))
            for start in range(0, len(view), chunk):
                with trio.fail_after(timeout):
                    await stream.write(bytes(view[start : start + chunk]))
    except trio.TooSlowError as exc:
        raise BlobTimeout(f"peer accepted too little within {min(timeout, allowed):.0f}s") from exc
    except StreamError as exc:
        raise BlobError(f"stream failed while writing: {exc!r}") from exc


async def close_stream(stream: INetStream, *, reset: bool = False) -> None:
    """Best-effort close (or reset); the stream may already be dead, which is fine here."""
    with trio.move_on_after(2.0):
        # libp2p raises assorted types on an already-broken stream
        with contextlib.suppress(Exception):
            await (stream.reset() if reset else stream.close())
