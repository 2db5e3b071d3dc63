"""Block sync without I/O: what to ask a peer for, the wire encodings, and how to answer.

Wire (msgpack, for the p2p blob stream kind "chain.blocks.1" and the block gossip topic):

    request   [1, "range", start, count]        canonical blocks start .. start+count-1
              [1, "by_hash", hash32, count]     block `hash` and up to count-1 ancestors
    response  [rlp_block, ...]                   oldest first, <= count blocks, <= MAX_BATCH_BYTES
    announce  [2, rlp_header, rlp_block|nil]     a new head; the block inline if it is small

A catch-up aims at one verified target (a block hash whose header an authority sealed) and
asks one peer at a time; the daemon rotates peers and bounds every attempt in time:

    catchup = Catchup(target_number, target_hash)
    request = catchup.start(chain.head.block_number)
    while request is not None:
        reply = await network.send_blob(peer, BLOCKS_KIND, encode_request(request))
        request = advance(catchup, chain, request, reply)

Near targets are fetched by hash (from any peer that stores the block, on any branch). A
target further away, or whose branch forks deeper than one batch, is reached by finding the
highest block the peer's canonical chain shares with ours (bisection with one-block probes:
no depth limit, so a node partitioned for any time rejoins) and fetching ranges from there.
Every reply is checked against its request (count, numbers, the hash asked for): a peer
that answers something else raises PeerMisbehaved; block validity is import_block's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgpack
import rlp

from flockd.chain.node.embedded import MAX_BLOCK_BYTES, EmbeddedChain
from flockd.chain.node.records import ImportResult

BLOCKS_KIND = "chain.blocks.1"
BLOCK_TOPIC = "chain.block.1"
TX_TOPIC = "chain.tx.1"
VERSION = 1
MAX_BATCH_BLOCKS = 64
MAX_BATCH_BYTES = 16 * 1024 * 1024
MAX_GOSSIP_BLOCK = 192 * 1024  # inline in the announcement below this; else fetch by hash
MAX_REQUEST_BYTES = 128
ANNOUNCE_VERSION = 2
MAX_ANNOUNCED_HEADER = 1024


class SyncError(ValueError):
    """A sync message or a peer's behaviour was refused; the subclass says which."""


class MalformedMessage(SyncError):
    """Not a well-formed request, response or announcement."""


class MessageTooLarge(SyncError):
    """Over the size or count cap."""


class PeerMisbehaved(SyncError):
    """The peer's reply does not answer our request (wrong blocks, too many, not chained)."""


class PeerCannotServe(SyncError):
    """The peer answered, but its chain does not lead to the target (it is on another
    branch, or its chain moved meanwhile): try another peer, no blame."""


@dataclass(frozen=True)
class BlockRequest:
    kind: Literal["range", "by_hash"]
    count: int
    start: int = 0  # range: first block number
    block_hash: bytes = b""  # by_hash: the newest block wanted


@dataclass(frozen=True)
class Announcement:
    header: bytes  # the RLP header: judged (seal, turn) before anything else
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


def encode_announcement(raw_header: bytes, raw_block: bytes) -> bytes:
    inline = raw_block if len(raw_block) <= MAX_GOSSIP_BLOCK else None
    return _pack([ANNOUNCE_VERSION, raw_header, inline])


def decode_announcement(data: bytes) -> Announcement:
    if len(data) > MAX_GOSSIP_BLOCK + MAX_ANNOUNCED_HEADER + 64:
        raise MessageTooLarge(f"announcement of {len(data)} bytes")
    obj = _unpack(data)
    if not isinstance(obj, list) or len(obj) != 3 or obj[0] != ANNOUNCE_VERSION:
        raise MalformedMessage("announcement must be [2, header, block|nil]")
    _, header, block = obj
    if not isinstance(header, bytes) or not 0 < len(header) <= MAX_ANNOUNCED_HEADER:
        raise MalformedMessage(f"announcement header must be 1..{MAX_ANNOUNCED_HEADER} bytes")
    if block is not None and (not isinstance(block, bytes) or len(block) > MAX_GOSSIP_BLOCK):
        raise MalformedMessage(f"announcement block must be nil or at most {MAX_GOSSIP_BLOCK} bytes")
    return Announcement(header, block)


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
    def decode_header(self, raw: bytes) -> Any: ...
    def import_block(self, raw: bytes) -> ImportResult: ...
    def canonical_hash(self, number: int) -> bytes | None: ...


@dataclass(frozen=True)
class BatchOutcome:
    numbers: list[int]  # of every block in the reply, oldest first
    hashes: list[bytes]
    results: list[ImportResult]  # one per imported block; ends at the first missing parent


def import_batch(chain: BlockImporter, raw_blocks: Sequence[bytes]) -> BatchOutcome:
    """Check the reply chains (each block's parent is the one before), then import oldest
    first, stopping at the first block whose parent we lack. BlockRejected propagates."""
    headers = [chain.decode_header(raw) for raw in raw_blocks]
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
    """Reach one target block from one peer. Pure: no chain, no network.

    Steps: `by_hash` the target when it is near; else (or when that batch does not connect)
    bisect for the highest height where the peer's canonical chain agrees with ours, with
    one-block `range` probes; then `range`s up to the target's height. Each step only moves
    forward (the bisection interval shrinks, the range cursor grows), so it always ends."""

    def __init__(self, target_number: int, target_hash: bytes, batch: int = MAX_BATCH_BLOCKS) -> None:
        self.target_number = target_number
        self.target_hash = target_hash
        self.batch = batch
        self.cursor = 0  # the newest block of the peer's canonical chain we hold
        self.probing = False
        self._low = 0  # highest height known to agree (genesis always does)
        self._high = 0  # highest height that may still agree

    def start(self, our_number: int) -> BlockRequest | None:
        if self.target_number - our_number <= self.batch:
            return BlockRequest("by_hash", min(self.batch, self.target_number), block_hash=self.target_hash)
        return self._bisect(min(our_number, self.target_number - 1))

    def on_probe(self, request: BlockRequest, agrees: bool) -> BlockRequest | None:
        """After a probe: does the peer's block at request.start equal our canonical one?"""
        if agrees:
            self._low = request.start
        else:
            self._high = request.start - 1
        return self._next_probe()

    def on_results(self, request: BlockRequest, outcome: BatchOutcome) -> BlockRequest | None:
        """The next request after importing a reply, or None when done."""
        self._check_shape(request, outcome)
        if outcome.results[-1].status == "missing_parent" and outcome.results[0].status != "missing_parent":
            raise PeerMisbehaved("a block of the reply does not follow the one before")
        connected = outcome.results[0].status != "missing_parent"
        if request.kind == "by_hash":
            # The target and its ancestors; if they do not reach our chain, the fork is
            # deeper than a batch: find where the peer's chain leaves ours.
            return None if connected else self._bisect(min(outcome.numbers[0] - 1, self.target_number - 1))
        if not connected:
            raise PeerCannotServe("the peer's canonical chain moved away from the agreed block")
        self.cursor = max(self.cursor, outcome.numbers[-1])
        return self._next_range()

    def _bisect(self, high: int) -> BlockRequest | None:
        self._low, self._high = 0, max(0, high)
        if self._high == 0:
            return self._next_probe()
        # The first probe is the top of the interval: a peer ahead on our own chain agrees
        # at once. Later ones halve the interval.
        self.probing = True
        return BlockRequest("range", 1, start=self._high)

    def _next_probe(self) -> BlockRequest | None:
        if self._low >= self._high:
            self.probing = False
            self.cursor = self._low
            return self._next_range()
        self.probing = True
        return BlockRequest("range", 1, start=(self._low + self._high + 1) // 2)

    def _next_range(self) -> BlockRequest | None:
        if self.cursor >= self.target_number:
            return None
        count = min(self.batch, self.target_number - self.cursor)
        return BlockRequest("range", count, start=self.cursor + 1)

    @staticmethod
    def _check_shape(request: BlockRequest, outcome: BatchOutcome) -> None:
        if not outcome.numbers:
            raise PeerCannotServe(f"no blocks for {request}")
        if len(outcome.numbers) > request.count:
            raise PeerMisbehaved(f"{len(outcome.numbers)} blocks for a request of {request.count}")
        if request.kind == "range" and outcome.numbers[0] != request.start:
            raise PeerMisbehaved(f"asked from block {request.start}, got {outcome.numbers[0]}")
        if request.kind == "by_hash" and outcome.hashes[-1] != request.block_hash:
            raise PeerMisbehaved("the newest block is not the one asked for")


def advance(catchup: Catchup, chain: BlockImporter, request: BlockRequest, reply: bytes) -> BlockRequest | None:
    """Apply one reply to a catch-up (compare a probe, or import a batch) and return the next
    request, None when done. Costly (imports): the daemon runs it in a worker thread."""
    raws = decode_blocks(reply, request.count)
    if not catchup.probing:
        return catchup.on_results(request, import_batch(chain, raws))
    if len(raws) != 1:
        raise PeerCannotServe(f"no block {request.start} from the peer")
    header = chain.decode_header(raws[0])
    if header.block_number != request.start:
        raise PeerMisbehaved(f"asked for block {request.start}, got {header.block_number}")
    return catchup.on_probe(request, header.hash == chain.canonical_hash(request.start))


def answer_from_chain(chain: EmbeddedChain, data: bytes) -> bytes:
    """Serve one encoded request from our chain: the blob-stream handler's whole body."""
    request = decode_request(data)

    def by_number(number: int) -> bytes | None:
        block = chain.get_block_by_number(number)
        return None if block is None else rlp.encode(block)

    def by_hash(block_hash: bytes) -> tuple[bytes, bytes, int] | None:
        block = chain.get_block_by_hash(block_hash)
        return None if block is None else (rlp.encode(block), block.header.parent_hash, block.number)

    # One view of the chain for the whole answer: a reorg between two reads would hand the
    # peer blocks that do not chain, and it would blame us.
    with chain.consistent_view():
        return answer_request(request, by_number, by_hash)


# -- whom to catch up with -------------------------------------------------------------------


@dataclass
class SyncTarget:
    number: int
    block_hash: bytes
    sources: list[str]  # peers that announced or relayed it, most recent last
    failed: dict[str, float]  # peer -> when an attempt with it ended short of the target


class SyncTargets:
    """Blocks we want (verified headers whose blocks we lack) and the peers to ask. Pure.

    The highest targets first; each attempt goes to a peer not busy with another attempt,
    the target's sources first, then any connected peer; a peer whose attempt failed waits
    `retry_after` seconds for that target, so attempts rotate among peers."""

    def __init__(self, *, max_targets: int = 8, max_sources: int = 8, retry_after: float = 30.0) -> None:
        self.max_targets = max_targets
        self.max_sources = max_sources
        self.retry_after = retry_after
        self._targets: dict[bytes, SyncTarget] = {}

    def __len__(self) -> int:
        return len(self._targets)

    def hashes(self) -> list[bytes]:
        return list(self._targets)

    def want(self, number: int, block_hash: bytes, source: str) -> None:
        target = self._targets.get(block_hash)
        if target is None:
            target = self._targets[block_hash] = SyncTarget(number, block_hash, [], {})
            if len(self._targets) > self.max_targets:
                lowest = min(self._targets.values(), key=lambda t: t.number)
                del self._targets[lowest.block_hash]
        if source in target.sources:
            target.sources.remove(source)
        target.sources.append(source)
        del target.sources[: -self.max_sources]

    def prune(self, head_number: int, have: Callable[[bytes], bool]) -> None:
        """Forget targets we hold, and those no longer above our head (fork choice would
        not switch to a branch that is not longer)."""
        for block_hash in [h for h, t in self._targets.items() if t.number <= head_number or have(h)]:
            del self._targets[block_hash]

    def pick(self, connected: Sequence[str], busy: set[str], now: float) -> tuple[SyncTarget, str] | None:
        for target in sorted(self._targets.values(), key=lambda t: -t.number):
            live = set(connected)
            ordered = [p for p in reversed(target.sources) if p in live]
            ordered += [p for p in connected if p not in ordered]
            for peer in ordered:
                if peer not in busy and now >= target.failed.get(peer, 0.0):
                    return target, peer
        return None

    def failed(self, block_hash: bytes, peer: str, now: float) -> None:
        target = self._targets.get(block_hash)
        if target is not None:
            target.failed[peer] = now + self.retry_after
