"""Blob frames for `/flock/blob/1` (sans-I/O): encode, and decode by feeding bytes.

A frame is a 4-byte big-endian header length, a msgpack header `{kind, size, hash}` (hash =
keccak256 of the body), then `size` raw bytes. The decoder checks the declared size against
the cap for that kind BEFORE any body byte is read or buffered, hashes the body as it
arrives (or, with `verify=False`, leaves that to its caller: `check_body`, which the stream
reader runs in a worker thread for large bodies), and raises a specific BlobError for every
kind of bad input.

A request is one frame with an application kind; the reply is one frame whose kind is one
of the reserved REPLY_* kinds (they start with "!", which application kinds cannot).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from Crypto.Hash import keccak as _keccak

from flockd.p2p.abc import P2PError

PROTOCOL = "/flock/blob/1"
PREFIX = struct.Struct(">I")
MAX_HEADER = 256  # kind (<= 64 chars) + size + 32-byte hash fit in well under this
REPLY_DATA = "!reply"
REPLY_NONE = "!none"
REPLY_ERROR = "!error"
MAX_ERROR_REPLY = 1024
_KIND = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_REPLY_KINDS = frozenset({REPLY_DATA, REPLY_NONE, REPLY_ERROR})


class BlobError(P2PError):
    """A blob transfer failed or an inbound frame was rejected."""


class MalformedFrame(BlobError): ...


class UnknownBlobKind(BlobError): ...


class BlobTooLarge(BlobError): ...


class TruncatedFrame(BlobError): ...


class HashMismatch(BlobError): ...


class BlobTimeout(BlobError): ...


class BlobRejected(BlobError):
    """The remote refused our blob and said why (an error reply)."""


def check_kind(kind: str) -> None:
    """Application kinds: lowercase, 1..64 characters of [a-z0-9_.-]."""
    if not _KIND.fullmatch(kind):
        raise UnknownBlobKind(f"invalid blob kind {kind!r}")


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def hasher() -> Any:
    """An incremental keccak256 (update(), digest()): the frame body's hash."""
    return _keccak.new(digest_bits=256)


def encode_header(kind: str, size: int, body_hash: bytes) -> bytes:
    header = msgpack.packb({"kind": kind, "size": size, "hash": body_hash}, use_bin_type=True)
    return PREFIX.pack(len(header)) + header


def encode_frame(kind: str, data: bytes) -> bytes:
    return encode_header(kind, len(data), digest(data)) + data


@dataclass(frozen=True)
class FrameHeader:
    kind: str
    size: int
    hash: bytes


@dataclass(frozen=True)
class Frame:
    kind: str
    data: bytes


FrameEvent = FrameHeader | Frame
# Maps a kind to its size cap, or None when the kind is not accepted at all.
SizeCap = Callable[[str], int | None]


class FrameDecoder:
    """Feed bytes in, get FrameHeader / Frame events out; errors are BlobError subclasses.

    `wanted()` says how many bytes the decoder can use next, so a reader never pulls more
    from the stream than the current frame needs (the stream's flow control stays honest).
    """

    def __init__(self, size_cap: SizeCap, *, chunk: int = 1 << 20, verify: bool = True) -> None:
        """`verify=False`: frames come out unchecked against their header's hash; the
        caller must `check_body` each one (off the event loop when it is large)."""
        self._size_cap = size_cap
        self._chunk = chunk
        self._verify = verify
        self._buffer = bytearray()
        self._header: FrameHeader | None = None
        self._body = bytearray()
        self._hash: Any = None
        self._failed = False

    def wanted(self) -> int:
        if self._header is None:
            return self._header_end() - len(self._buffer)
        return max(1, min(self._chunk, self._header.size - len(self._body)))

    def feed(self, data: bytes) -> list[FrameEvent]:
        if self._failed:
            raise MalformedFrame("decoder already failed; the stream must be dropped")
        try:
            return self._feed(data)
        except BlobError:
            self._failed = True
            raise

    def end_of_stream(self) -> None:
        """The peer closed its side: fine between frames, an error inside one."""
        if self._header is not None or self._buffer:
            have = len(self._body) if self._header else len(self._buffer)
            raise TruncatedFrame(f"stream ended inside a frame ({have} bytes in)")

    @property
    def idle(self) -> bool:
        """True between frames (nothing partial buffered)."""
        return self._header is None and not self._buffer

    def _feed(self, data: bytes) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        view = memoryview(data)
        while view:
            if self._header is None:
                end = self._header_end()
                take = view[: end - len(self._buffer)]
                self._buffer += take
                view = view[len(take) :]
                if len(self._buffer) < end:
                    continue
                if end == PREFIX.size:
                    self._header_end()  # validate the header length as soon as it is known
                    continue
                self._header = self._parse_header()
                self._buffer.clear()
                self._hash = hasher() if self._verify else None
                events.append(self._header)
            else:
                take = view[: self._header.size - len(self._body)]
                self._body += take
                if self._hash is not None:
                    self._hash.update(take)
                view = view[len(take) :]
            if self._header is not None and len(self._body) == self._header.size:
                events.append(self._finish())
        return events

    def _header_end(self) -> int:
        if len(self._buffer) < PREFIX.size:
            return PREFIX.size
        (length,) = PREFIX.unpack_from(self._buffer)
        if not 0 < length <= MAX_HEADER:
            raise MalformedFrame(f"header length {length} outside 1..{MAX_HEADER}")
        return PREFIX.size + length

    def _parse_header(self) -> FrameHeader:
        raw = bytes(self._buffer[PREFIX.size :])
        try:
            fields = msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                max_str_len=MAX_HEADER,
                max_bin_len=MAX_HEADER,
                max_array_len=0,
                max_map_len=3,
                max_ext_len=0,
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MalformedFrame(f"header is not valid msgpack: {exc}") from exc
        if not isinstance(fields, dict) or set(fields) != {"kind", "size", "hash"}:
            raise MalformedFrame("header must be a map {kind, size, hash}")
        kind, size, body_hash = fields["kind"], fields["size"], fields["hash"]
        if not isinstance(kind, str) or type(size) is not int or size < 0:
            raise MalformedFrame("header kind must be str and size a non-negative int")
        if not isinstance(body_hash, bytes) or len(body_hash) != 32:
            raise MalformedFrame("header hash must be 32 bytes")
        cap = self._size_cap(kind)
        if cap is None:
            raise UnknownBlobKind(f"blob kind {kind!r} is not accepted here")
        if size > cap:
            raise BlobTooLarge(f"blob kind {kind!r} declares {size} bytes; the cap is {cap}")
        return FrameHeader(kind=kind, size=size, hash=body_hash)

    def _finish(self) -> Frame:
        assert self._header is not None
        if self._hash is not None and self._hash.digest() != self._header.hash:
            raise _mismatch(self._header)
        frame = Frame(kind=self._header.kind, data=bytes(self._body))
        self._header, self._hash, self._body = None, None, bytearray()
        return frame


def check_body(header: FrameHeader, data: bytes | bytearray | memoryview) -> None:
    """HashMismatch unless `data` is the body `header` announced (CPU-bound: hashes it all)."""
    if digest(data) != header.hash:
        raise _mismatch(header)


def _mismatch(header: FrameHeader) -> HashMismatch:
    return HashMismatch(f"blob kind {header.kind!r}: body does not match its hash")
