"""Moving blob frames over a libp2p stream: bounded reads, per-read timeouts, clean errors."""

from __future__ import annotations

import contextlib

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF, StreamError

from flockd.p2p.blobs import (
    BlobError,
    BlobTimeout,
    Frame,
    FrameDecoder,
    SizeCap,
    TruncatedFrame,
    digest,
    encode_header,
)


async def read_frame(
    stream: INetStream,
    size_cap: SizeCap,
    *,
    chunk: int,
    timeout: float,
    first_timeout: float | None = None,
) -> Frame:
    """Read exactly one frame. Each read must make progress within `timeout` seconds
    (`first_timeout` for the first one, e.g. while the peer is still busy), so a stalled
    peer costs at most that long. Reads never exceed what the frame still needs, so unread
    bytes stay in the muxer's window and throttle the sender (backpressure)."""
    decoder = FrameDecoder(size_cap, chunk=chunk)
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
                return event


async def write_frame(
    stream: INetStream, kind: str, data: bytes, *, chunk: int, timeout: float
) -> None:
    # Each write is bounded by `timeout`: the muxer's own wait for window space is safe
    # to cancel, and a socket that accepts nothing for that long has a dead peer anyway.
    view = memoryview(data)
    try:
        with trio.fail_after(timeout):
            await stream.write(encode_header(kind, len(data), digest(view)))
        for start in range(0, len(view), chunk):
            with trio.fail_after(timeout):
                await stream.write(bytes(view[start : start + chunk]))
    except trio.TooSlowError as exc:
        raise BlobTimeout(f"peer accepted nothing for {timeout:.0f}s") from exc
    except StreamError as exc:
        raise BlobError(f"stream failed while writing: {exc!r}") from exc


async def close_stream(stream: INetStream, *, reset: bool = False) -> None:
    """Best-effort close (or reset); the stream may already be dead, which is fine here."""
    with trio.move_on_after(2.0):
        # libp2p raises assorted types on an already-broken stream
        with contextlib.suppress(Exception):
            await (stream.reset() if reset else stream.close())
