"""One round's proposals and the deltas behind them.

A delta is trusted only when its bytes hash to a delta_hash the chain recorded. Deltas
may arrive before their proposal lands (a push can outrun block import), so those wait in
a bounded buffer keyed by hash; once the proposal shows up they are either accepted or
rejected. The buffer holds at most one delta per sender and, once full, refuses newcomers
rather than evicting earlier ones, so a flood of junk cannot push an honest delta out. A
peer that sent bytes which do not match is remembered, and the next fetch of that delta
avoids it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flockd.round.actions import DeltaRejected, FetchDelta
from flockd.round.base import Address, ConflictingEvent, RejectReason, delta_hash


@dataclass(frozen=True)
class Proposal:
    index: int
    proposer: Address
    delta_hash: bytes


@dataclass(frozen=True)
class _Unverified:
    proposer: Address  # as claimed by the sender
    sender: Address
    data: bytes


class DeltaBook:
    def __init__(self, round_number: int, pending_cap: int) -> None:
        self.round = round_number
        self._pending_cap = pending_cap
        self._proposals: dict[int, Proposal] = {}
        self._by_proposer: dict[Address, Proposal] = {}
        self._by_hash: dict[bytes, Proposal] = {}
        self._verified: dict[bytes, bytes] = {}
        self._trusted: dict[bytes, bytes] = {}  # this node's own bytes, before they land
        self._pending: dict[bytes, _Unverified] = {}  # by delta hash
        self._pending_of: dict[Address, bytes] = {}  # each sender's one pending delta hash
        self._bad_senders: dict[bytes, set[Address]] = {}
        self._asked: set[bytes] = set()

    def ordered(self) -> list[Proposal]:
        return [self._proposals[i] for i in sorted(self._proposals)]

    def get(self, index: int) -> Proposal | None:
        return self._proposals.get(index)

    def of(self, proposer: Address) -> Proposal | None:
        return self._by_proposer.get(proposer)

    def data(self, digest: bytes) -> bytes | None:
        return self._verified.get(digest)

    def has(self, digest: bytes) -> bool:
        return digest in self._verified

    def add_own(self, data: bytes) -> None:
        """This node's delta: trusted, but still kept only if the chain names its hash."""
        digest = delta_hash(data)
        if digest in self._by_hash:
            self._verified.setdefault(digest, data)
        else:
            self._trusted[digest] = data

    def add_proposal(self, proposal: Proposal) -> list[DeltaRejected]:
        known = self._proposals.get(proposal.index)
        if known == proposal:
            return []
        if known is not None or proposal.proposer in self._by_proposer:
            raise ConflictingEvent(f"round {self.round}: proposal {proposal} contradicts {known}")
        self._proposals[proposal.index] = proposal
        self._by_proposer[proposal.proposer] = proposal
        self._by_hash[proposal.delta_hash] = proposal
        early = self._unpend(proposal.delta_hash)
        own = self._trusted.pop(proposal.delta_hash, None)
        if own is not None:
            self._verified[proposal.delta_hash] = own
        elif early is not None:
            self._verified[proposal.delta_hash] = early.data
        rejected = []
        for digest, entry in list(self._pending.items()):
            if entry.proposer == proposal.proposer:
                self._unpend(digest)
                rejected.append(self._mismatch(proposal, entry.sender))
        return rejected

    def offer(
        self,
        proposer: Address,
        data: bytes,
        sender: Address,
        closed: bool,
        digest: bytes | None = None,
    ) -> list[DeltaRejected]:
        """A peer's delta. ``closed``: no further proposal can land this round. ``digest``:
        its delta_hash when the adapter already computed it (off the event loop)."""
        digest = delta_hash(data) if digest is None else digest
        target = self._by_hash.get(digest)
        if target is not None:  # matches some proposal, whoever the sender said it was
            self._verified.setdefault(digest, data)
            return []
        claimed = self._by_proposer.get(proposer)
        if claimed is not None:
            return [self._mismatch(claimed, sender)]
        if closed:
            return [DeltaRejected(self.round, proposer, sender, RejectReason.NOT_PROPOSED)]
        if digest in self._pending:
            return []
        if sender in self._pending_of or len(self._pending) >= self._pending_cap:
            return [DeltaRejected(self.round, proposer, sender, RejectReason.BUFFER_FULL)]
        self._pending[digest] = _Unverified(proposer, sender, data)
        self._pending_of[sender] = digest
        return []

    def fetch_missing(self, proposals: Iterable[Proposal]) -> list[FetchDelta]:
        """A FetchDelta for each of these proposals whose delta is missing and not already
        asked for since the last bad copy arrived."""
        out = []
        for p in proposals:
            if p.delta_hash in self._verified or p.delta_hash in self._asked:
                continue
            self._asked.add(p.delta_hash)
            avoid = tuple(sorted(self._bad_senders.get(p.delta_hash, ())))
            out.append(FetchDelta(self.round, p.proposer, p.delta_hash, avoid))
        return out

    def fetch_failed(self, digest: bytes) -> None:
        """No peer had the delta: the next fetch_missing asks for it again."""
        self._asked.discard(digest)

    def _mismatch(self, proposal: Proposal, sender: Address) -> DeltaRejected:
        self._bad_senders.setdefault(proposal.delta_hash, set()).add(sender)
        self._asked.discard(proposal.delta_hash)  # the next fetch avoids this sender
        return DeltaRejected(self.round, proposal.proposer, sender, RejectReason.HASH_MISMATCH)

    def _unpend(self, digest: bytes) -> _Unverified | None:
        entry = self._pending.pop(digest, None)
        if entry is not None:
            del self._pending_of[entry.sender]
        return entry
