"""Block sync without I/O: what to ask a peer for, the wire encodings, and how to answer.

Wire (msgpack, for the p2p blob stream kind "chain.blocks.1" and the block gossip topic):

    request   [1, "range", start, count]        canonical blocks start .. start+count-1
              [1, "by_hash", hash32, count]     block `hash` and up to count-1 ancestors
    response  [rlp_block, ...]                   oldest first, <= count blocks, <= MAX_BATCH_BYTES
    announce  [1, number, hash32, rlp_block|nil] a new head; the block inline if it is small

A node that hears of a longer chain runs one `Catchup` against that peer:

    catchup = Catchup(peer_number, peer_hash)
    request = catchup.start(chain.head.block_number)
    while request is not None:
        reply = await network.send_blob(peer, BLOCKS_KIND, encode_request(request))
        outcome = import_batch(chain, decode_blocks(reply, request.count))
        request = catchup.on_results(request, outcome)

A fork shows up as a missing parent; Catchup then walks back by hash (bounded by
MAX_REORG_DEPTH) until the peer's branch connects, then resumes by number. Every reply is
checked against its request (count, numbers, the hash asked for): a peer that answers
something else raises PeerMisbehaved; block validity itself is EmbeddedChain.import_block's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgpack
import rlp

from flockd.chain.embedded import MAX_BLOCK_BYTES, EmbeddedChain
from flockd.chain.records import ImportResult

BLOCKS_KIND = "chain.blocks.1"
BLOCK_TOPIC = "chain.block.1"
TX_TOPIC = "chain.tx.1"
VERSION = 1
MAX_BATCH_BLOCKS = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_GOSSIP_BLOCK = 192 * 1024  # inline in the announcement below this; else fetch by hash
MAX_REORG_DEPTH = 1024  # how far back a fork may branch before we give up on the peer
MAX_REQUEST_BYTES = 128


class SyncError(ValueError):
    """A sync message or a peer's behaviour was refused; the subclass says which."""


class MalformedMessage(SyncError):
    """Not a well-formed request, response or announcement."""


class MessageTooLarge(SyncError):
    """Over the size or count cap."""


class PeerMisbehaved(SyncError):
    """The peer's reply does not answer our request (wrong blocks, too many, a fork too deep)."""


@dataclass(frozen=True)
class BlockRequest:
    kind: Literal["range", "by_hash"]
    count: int
    start: int = 0  # range: first block number
    block_hash: bytes = b""  # by_hash: the newest block wanted


@dataclass(frozen=True)
class Announcement:
    number: int
    block_hash: bytes
    block: bytes | None  # the RLP block when small enough to gossip inline


# -- encodings -------------------------------------------------------------------------------


def encode_request(request: BlockRequest) -> bytes:
    if request.kind == "range":
        return _pack([VERSION, "range", request.start, request.count])
    return _pack([VERSION, "by_hash", request.block_hash, request.count])


def decode_request(data: bytes) -> BlockRequest:
    if len(data) > MAX_REQUEST_BYTES:
        raise MessageTooLarge(f"block request of {len(data)} bytes, limit {MAX_REQUEST_BYTES}")
    obj = _unpack(data)
    if not isinstance(obj, list) or len(obj) != 4 or obj[0] != VERSION:
        raise MalformedMessage("block request must be [1, kind, from, count]")
    _, kind, origin, count = obj
    if type(count) is not int or not 1 <= count <= MAX_BATCH_BLOCKS:
        raise MalformedMessage(f"count must be 1..{MAX_BATCH_BLOCKS}")
    if kind == "range" and type(origin) is int and 0 <= origin < 2**63:
        return BlockRequest("range", count, start=origin)
    if kind == "by_hash" and isinstance(origin, bytes) and len(origin) == 32:
        return BlockRequest("by_hash", count, block_hash=origin)
    raise MalformedMessage(f"unknown request kind or bad origin: {str(kind)[:20]!r}")


def encode_blocks(raw_blocks: Sequence[bytes]) -> bytes:
    """As many blocks as fit under MAX_BATCH_BYTES (and MAX_BATCH_BLOCKS), oldest first."""
    chosen: list[bytes] = []
    total = 0
    for raw in raw_blocks[:MAX_BATCH_BLOCKS]:
        if total + len(raw) > MAX_BATCH_BYTES:
            break
        chosen.append(raw)
        total += len(raw)
    return _pack(chosen)


def decode_blocks(data: bytes, max_blocks: int = MAX_BATCH_BLOCKS) -> list[bytes]:
    if len(data) > MAX_BATCH_BYTES + 64 * 1024:  # + msgpack framing
        raise MessageTooLarge(f"block batch of {len(data)} bytes, limit {MAX_BATCH_BYTES}")
    obj = _unpack(data)
    if not isinstance(obj, list) or not all(isinstance(b, bytes) for b in obj):
        raise MalformedMessage("block batch must be a list of byte strings")
    if len(obj) > max_blocks:
        raise MessageTooLarge(f"{len(obj)} blocks in a batch, asked for at most {max_blocks}")
    if any(len(b) > MAX_BLOCK_BYTES for b in obj):
        raise MessageTooLarge(f"a block over {MAX_BLOCK_BYTES} bytes")
    return obj


def encode_announcement(number: int, block_hash: bytes, raw_block: bytes) -> bytes:
    inline = raw_block if len(raw_block) <= MAX_GOSSIP_BLOCK else None
    return _pack([VERSION, number, block_hash, inline])


def decode_announcement(data: bytes) -> Announcement:
    if len(data) > MAX_GOSSIP_BLOCK + 1024:
        raise MessageTooLarge(f"announcement of {len(data)} bytes")
    obj = _unpack(data)
    if not isinstance(obj, list) or len(obj) != 4 or obj[0] != VERSION:
        raise MalformedMessage("announcement must be [1, number, hash, block|nil]")
    _, number, block_hash, block = obj
    if type(number) is not int or not 0 < number < 2**63:
        raise MalformedMessage("announcement number must be a positive integer")
    if not isinstance(block_hash, bytes) or len(block_hash) != 32:
        raise MalformedMessage("announcement hash must be 32 bytes")
    if block is not None and not isinstance(block, bytes):
        raise MalformedMessage("announcement block must be bytes or nil")
    return Announcement(number, block_hash, block)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, max_bin_len=MAX_BLOCK_BYTES,
            max_str_len=64, max_array_len=MAX_BATCH_BLOCKS + 1, max_map_len=0, max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedMessage(f"not msgpack: {exc}") from None


# -- serving ---------------------------------------------------------------------------------


def answer_request(
    request: BlockRequest,
    block_by_number: Callable[[int], bytes | None],
    block_by_hash: Callable[[bytes], tuple[bytes, bytes, int] | None],
) -> bytes:
    """The reply to a decoded request. `block_by_number(n)` gives the RLP of our canonical
    block n; `block_by_hash(h)` gives (rlp, parent_hash, number) of any block we store."""
    blocks: list[bytes] = []
    if request.kind == "range":
        for number in range(request.start, request.start + request.count):
            raw = block_by_number(number)
            if raw is None:
                break
            blocks.append(raw)
    else:
        wanted = request.block_hash
        while len(blocks) < request.count:
            found = block_by_hash(wanted)
            if found is None:
                break
            raw, wanted, number = found
            blocks.append(raw)
            if number <= 1:
                break  # its parent is genesis, which everyone has
        blocks.reverse()
    return encode_blocks(blocks)


# -- catching up -----------------------------------------------------------------------------


class BlockImporter(Protocol):
    def decode_block(self, raw: bytes) -> Any: ...
    def import_block(self, raw: bytes) -> ImportResult: ...


@dataclass(frozen=True)
class BatchOutcome:
    numbers: list[int]  # of every block in the reply, oldest first
    hashes: list[bytes]
    results: list[ImportResult]  # one per imported block; ends at the first missing parent


def import_batch(chain: BlockImporter, raw_blocks: Sequence[bytes]) -> BatchOutcome:
    """Check the reply chains (each block's parent is the one before), then import oldest
    first, stopping at the first block whose parent we lack. BlockRejected propagates."""
    headers = [chain.decode_block(raw).header for raw in raw_blocks]
    for older, newer in zip(headers, headers[1:], strict=False):
        if newer.parent_hash != older.hash or newer.block_number != older.block_number + 1:
            raise PeerMisbehaved("blocks of one reply do not chain")
    results = []
    for raw in raw_blocks:
        result = chain.import_block(raw)
        results.append(result)
        if result.status == "missing_parent":
            break
    return BatchOutcome([h.block_number for h in headers], [h.hash for h in headers], results)


class Catchup:
    """Catch up with one peer that announced a longer chain. Pure: no chain, no network.

    `cursor` is the newest block of the peer's branch we hold; it only moves forward, and
    walking back on a fork is bounded by MAX_REORG_DEPTH, so a catch-up always ends."""

    def __init__(self, peer_number: int, peer_hash: bytes, batch: int = MAX_BATCH_BLOCKS) -> None:
        self.peer_number = peer_number
        self.peer_hash = peer_hash
        self.batch = batch
        self.cursor = 0
        self.depth = 0  # blocks walked back while looking for a common ancestor

    def start(self, our_number: int) -> BlockRequest | None:
        self.cursor = our_number
        return self._next_range()

    def on_results(self, request: BlockRequest, outcome: BatchOutcome) -> BlockRequest | None:
        """The next request after importing a reply, or None when done."""
        self._check_shape(request, outcome)
        oldest = outcome.results[0]
        if oldest.status == "missing_parent":  # a fork: walk back along the peer's branch
            self.depth = max(self.depth, self.cursor - oldest.number)
            if self.depth > MAX_REORG_DEPTH:
                raise PeerMisbehaved(f"fork deeper than {MAX_REORG_DEPTH} blocks")
            assert oldest.missing_parent is not None
            return BlockRequest("by_hash", self.batch, block_hash=oldest.missing_parent)
        if outcome.results[-1].status == "missing_parent":
            raise PeerMisbehaved("a block of the reply does not follow the one before")
        self.cursor = max(self.cursor, outcome.numbers[-1])
        return self._next_range()

    def _next_range(self) -> BlockRequest | None:
        if self.cursor >= self.peer_number:
            return None
        count = min(self.batch, self.peer_number - self.cursor)
        return BlockRequest("range", count, start=self.cursor + 1)

    @staticmethod
    def _check_shape(request: BlockRequest, outcome: BatchOutcome) -> None:
        if not outcome.numbers:
            raise PeerMisbehaved(f"no blocks for {request}")
        if len(outcome.numbers) > request.count:
            raise PeerMisbehaved(f"{len(outcome.numbers)} blocks for a request of {request.count}")
        if request.kind == "range" and outcome.numbers[0] != request.start:
            raise PeerMisbehaved(f"asked from block {request.start}, got {outcome.numbers[0]}")
        if request.kind == "by_hash" and outcome.hashes[-1] != request.block_hash:
            raise PeerMisbehaved("the newest block is not the one asked for")


def answer_from_chain(chain: EmbeddedChain, data: bytes) -> bytes:
    """Serve one encoded request from our chain: the blob-stream handler's whole body."""
    request = decode_request(data)

    def by_number(number: int) -> bytes | None:
        block = chain.get_block_by_number(number)
        return None if block is None else rlp.encode(block)

    def by_hash(block_hash: bytes) -> tuple[bytes, bytes, int] | None:
        block = chain.get_block_by_hash(block_hash)
        return None if block is None else (rlp.encode(block), block.header.parent_hash, block.number)

    return answer_request(request, by_number, by_hash)
