"""Authority votes: who may seal block n, derived from the chain alone (protocol/spec/chain.md,
"Authority votes").

A vote is an ordinary signed transaction from an authority to VOTE_ADDRESS (an address with
no code and no known key), value 0, calldata = one op byte (0x01 add, 0x00 remove) and the
20-byte candidate. Its signature names the voter; its nonce and chain id make it impossible
to include twice or on another chain. No header field carries a vote, so a sealer gains no
bytes to grind the block hash with (the round seed hashes a block hash): a vote is one more
transaction, which a sealer could already choose to include.

The rule, applied to a block's votes in transaction order on the set after its parent:
- the voter must be an authority (at that point of the block), the proposal a change (add a
  non-authority, remove an authority, never the last one, never past MAX_AUTHORITIES);
  otherwise the block is invalid (BadVote); sealers leave such transactions out;
- a voter's vote on a candidate replaces its earlier vote on that candidate;
- once more than half of the current authorities hold the same vote on a candidate, the
  change is applied and every vote on that candidate is cleared; a removed authority's own
  votes are cleared too;
- the authorities of block n are the set after block n-1: a change decided in block m
  governs block m+1 onwards. Added authorities go to the end of the turn order; a removed
  one leaves the order of the others unchanged.

The set after a block is a function of the block and the set after its parent, so it is
cached by block hash: a reorganisation or a restart recomputes it from the blocks, never
from a node's own notes. Every CHECKPOINT_EVERY-th block's snapshot is also kept in the
chain's database under its block hash (a cache of that function, right on any branch;
deleting it costs only time), so a restart walks at most that many blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import rlp
from eth.abc import BlockHeaderAPI
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from flockd.chain.node.poa import ConsensusError

VOTE_ADDRESS = keccak(b"flockd authority votes")[12:]
VOTE_GAS = 30_000  # 21,000 + calldata, with room
OP_ADD, OP_REMOVE = 1, 0
MAX_AUTHORITIES = 256  # as the genesis allows
CHECKPOINT_EVERY = 1024  # blocks between the snapshots kept for good
RECENT_SNAPSHOTS = 4096
SNAPSHOT_KEY_PREFIX = b"flockd-authority-snapshot:"


class BadVote(ConsensusError):
    """A block carries a vote transaction the rule forbids (malformed, by a non-authority, a no-op)."""


@dataclass(frozen=True)
class Vote:
    voter: bytes
    candidate: bytes
    add: bool

    def describe(self) -> str:
        return f"{to_checksum_address(self.voter)} votes to {'add' if self.add else 'remove'} {to_checksum_address(self.candidate)}"


def encode_vote(candidate: bytes, add: bool) -> bytes:
    """The calldata of a vote transaction."""
    if len(candidate) != 20:
        raise ValueError("a candidate is a 20-byte address")
    return bytes([OP_ADD if add else OP_REMOVE]) + candidate


def decode_vote(voter: bytes, data: bytes, value: int) -> Vote:
    if value != 0:
        raise BadVote(f"a vote transfers no value, this one sends {value} wei")
    if len(data) != 21 or data[0] not in (OP_ADD, OP_REMOVE):
        raise BadVote(f"a vote's calldata is an op byte (0 or 1) and an address: got {len(data)} bytes")
    return Vote(voter, bytes(data[1:]), data[0] == OP_ADD)


@dataclass(frozen=True)
class Snapshot:
    """The authority set and the open votes after some block. `votes` maps (candidate,
    voter) to the voter's current vote on that candidate (True = add), sorted, so that
    equal snapshots compare equal."""

    authorities: tuple[bytes, ...]
    votes: tuple[tuple[bytes, bytes, bool], ...] = ()

    def tally(self, candidate: bytes, add: bool) -> int:
        return sum(1 for c, v, a in self.votes if c == candidate and a == add and v in self.authorities)

    def needed(self) -> int:
        """Votes that decide a change: more than half of the current authorities."""
        return len(self.authorities) // 2 + 1

    def check(self, vote: Vote) -> None:
        """BadVote unless `vote` may go into a block on this snapshot."""
        if vote.voter not in self.authorities:
            raise BadVote(f"{vote.describe()}, but the voter is not an authority")
        if vote.add and vote.candidate in self.authorities:
            raise BadVote(f"{vote.describe()}: already an authority")
        if vote.add and len(self.authorities) >= MAX_AUTHORITIES:
            raise BadVote(f"{vote.describe()}: the set is full ({MAX_AUTHORITIES})")
        if not vote.add and vote.candidate not in self.authorities:
            raise BadVote(f"{vote.describe()}: not an authority")
        if not vote.add and len(self.authorities) == 1:
            raise BadVote(f"{vote.describe()}: the last authority cannot be removed")

    def apply(self, vote: Vote) -> Snapshot:
        """The snapshot after `vote` (checked first: BadVote)."""
        self.check(vote)
        votes = {(c, v): a for c, v, a in self.votes}
        votes[(vote.candidate, vote.voter)] = vote.add
        tallied = Snapshot(self.authorities, _sorted(votes))
        if tallied.tally(vote.candidate, vote.add) < self.needed():
            return tallied
        if vote.add:
            authorities = (*self.authorities, vote.candidate)
        else:
            authorities = tuple(a for a in self.authorities if a != vote.candidate)
        # The decided candidate's votes are spent; a removed authority's votes die with it.
        kept = {(c, v): a for (c, v), a in votes.items() if c != vote.candidate and v != vote.candidate}
        return Snapshot(authorities, _sorted(kept))

    def apply_all(self, votes: Iterable[Vote]) -> Snapshot:
        snapshot = self
        for vote in votes:
            snapshot = snapshot.apply(vote)
        return snapshot

    def pending(self) -> list[dict[str, object]]:
        """Open proposals with their voters (authorities only), for people."""
        proposals: dict[tuple[bytes, bool], list[bytes]] = {}
        for c, v, a in self.votes:
            if v in self.authorities:
                proposals.setdefault((c, a), []).append(v)
        return [
            {
                "candidate": to_checksum_address(c),
                "action": "add" if a else "remove",
                "votes": len(voters),
                "needed": self.needed(),
                "voters": [to_checksum_address(v) for v in voters],
            }
            for (c, a), voters in sorted(proposals.items())
        ]


def _sorted(votes: dict[tuple[bytes, bytes], bool]) -> tuple[tuple[bytes, bytes, bool], ...]:
    return tuple(sorted((c, v, a) for (c, v), a in votes.items()))


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return rlp.encode([list(snapshot.authorities), [[c, v, b"\x01" if a else b""] for c, v, a in snapshot.votes]])


def decode_snapshot(raw: bytes) -> Snapshot:
    authorities, votes = rlp.decode(raw)
    return Snapshot(tuple(authorities), tuple((c, v, a == b"\x01") for c, v, a in votes))


class VoteTx(Protocol):
    @property
    def to(self) -> bytes: ...
    @property
    def sender(self) -> bytes: ...
    @property
    def data(self) -> bytes: ...
    @property
    def value(self) -> int: ...


def votes_in(txs: Iterable[VoteTx]) -> list[Vote]:
    """The votes among a block's transactions, in order (BadVote for a malformed one)."""
    return [decode_vote(tx.sender, tx.data, tx.value) for tx in txs if tx.to == VOTE_ADDRESS]


class ChainSource(Protocol):
    """What the ledger reads of a chain: headers by hash and a block's transactions."""

    def header_by_hash(self, block_hash: bytes) -> BlockHeaderAPI: ...
    def transactions(self, header: BlockHeaderAPI) -> Sequence[VoteTx]: ...


class AuthorityLedger:
    """Snapshots by block hash, computed from the blocks: the recent ones in an LRU, one
    every CHECKPOINT_EVERY blocks for good, so a walk back is at most that long once warm."""

    def __init__(self, genesis_authorities: Sequence[bytes], *, empty_tx_root: bytes) -> None:
        self.genesis = Snapshot(tuple(genesis_authorities))
        self._empty_tx_root = empty_tx_root
        self._recent: OrderedDict[bytes, Snapshot] = OrderedDict()
        self._checkpoints: dict[bytes, Snapshot] = {}
        self._store: MutableMapping[bytes, bytes] | None = None

    def attach(self, store: MutableMapping[bytes, bytes]) -> None:
        """Keep checkpoints in (and read them from) the chain's database."""
        self._store = store

    def _cached(self, block_hash: bytes) -> Snapshot | None:
        found = self._checkpoints.get(block_hash) or self._recent.get(block_hash)
        if found is not None and block_hash in self._recent:
            self._recent.move_to_end(block_hash)
        if found is None and self._store is not None:
            try:
                found = decode_snapshot(self._store[SNAPSHOT_KEY_PREFIX + block_hash])
            except KeyError:
                return None
            self._checkpoints[block_hash] = found
        return found

    def _checkpoint(self, header: BlockHeaderAPI, snapshot: Snapshot) -> None:
        if header.hash not in self._checkpoints:
            self._checkpoints[header.hash] = snapshot
            if self._store is not None:
                self._store[SNAPSHOT_KEY_PREFIX + header.hash] = encode_snapshot(snapshot)

    def remember(self, header: BlockHeaderAPI, snapshot: Snapshot) -> None:
        if header.block_number % CHECKPOINT_EVERY == 0:
            self._checkpoint(header, snapshot)
        self._recent[header.hash] = snapshot
        if len(self._recent) > RECENT_SNAPSHOTS:
            self._recent.popitem(last=False)

    def after(self, header: BlockHeaderAPI, source: ChainSource) -> Snapshot:
        """The snapshot after block `header` (which the source stores, with its ancestors)."""
        pending: list[BlockHeaderAPI] = []
        current = header
        snapshot: Snapshot | None
        while True:
            if current.block_number == 0:
                snapshot = self.genesis
                break
            snapshot = self._cached(current.hash)
            if snapshot is not None:
                break
            pending.append(current)
            current = source.header_by_hash(current.parent_hash)
        for block_header in reversed(pending):
            snapshot = self.next(snapshot, block_header, partial(source.transactions, block_header))
            self.remember(block_header, snapshot)
        return snapshot

    def next(self, parent: Snapshot, header: BlockHeaderAPI, txs: Callable[[], Sequence[VoteTx]]) -> Snapshot:
        """The snapshot after a block, from its parent's; txs are read only if it has any."""
        if header.transaction_root == self._empty_tx_root:
            return parent
        return parent.apply_all(votes_in(txs()))

    def warm(self, head: BlockHeaderAPI, canonical: Callable[[int], BlockHeaderAPI], source: ChainSource) -> Snapshot:
        """At start: from the newest checkpoint on the canonical chain (else the genesis),
        walk forward to the head once, leaving checkpoints behind, so no later walk back
        is longer than CHECKPOINT_EVERY blocks."""
        start, snapshot = 0, self.genesis
        for number in range(head.block_number - head.block_number % CHECKPOINT_EVERY, 0, -CHECKPOINT_EVERY):
            found = self._cached(canonical(number).hash)
            if found is not None:
                start, snapshot = number, found
                break
        last: BlockHeaderAPI | None = None
        for number in range(start + 1, head.block_number + 1):
            last = canonical(number)
            snapshot = self.next(snapshot, last, partial(source.transactions, last))
            if number % CHECKPOINT_EVERY == 0:
                self._checkpoint(last, snapshot)
        if last is not None:
            self.remember(last, snapshot)
        return snapshot
