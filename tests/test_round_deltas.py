"""DeltaBook's pending buffer under a flood: junk cannot evict an honest early delta."""

from __future__ import annotations

from flockd.round.base import RejectReason, delta_hash
from flockd.round.deltas import DeltaBook, Proposal

HONEST = b"\x01" * 20
JUNK = b"\x02" * 20
CAP = 4


def junk(i: int) -> bytes:
    return b"junk-%d" % i


def test_one_participant_flooding_junk_keeps_one_pending_slot_and_evicts_nobody() -> None:
    book = DeltaBook(0, CAP)
    honest = b"honest delta"
    assert book.offer(HONEST, honest, HONEST, closed=False) == []
    refused = [r for i in range(50) for r in book.offer(JUNK, junk(i), JUNK, closed=False)]
    # The flooder's first delta waits; every further one is refused, and only its own.
    assert len(refused) == 49
    assert {(r.sender, r.reason) for r in refused} == {(JUNK, RejectReason.BUFFER_FULL)}
    assert book.add_proposal(Proposal(0, HONEST, delta_hash(honest))) == []
    assert book.data(delta_hash(honest)) == honest


def test_a_full_buffer_refuses_newcomers_instead_of_evicting_the_oldest() -> None:
    book = DeltaBook(0, CAP)
    honest = b"honest delta"
    assert book.offer(HONEST, honest, HONEST, closed=False) == []
    senders = [bytes([0x10 + i]) * 20 for i in range(CAP + 3)]
    refused = [r for s in senders for r in book.offer(s, b"junk" + s, s, closed=False)]
    assert [r.sender for r in refused] == senders[CAP - 1 :]
    assert book.add_proposal(Proposal(0, HONEST, delta_hash(honest))) == []
    assert book.has(delta_hash(honest))


def test_a_repeated_push_of_the_same_bytes_is_no_rejection() -> None:
    book = DeltaBook(0, CAP)
    assert book.offer(HONEST, b"d", HONEST, closed=False) == []
    assert book.offer(HONEST, b"d", HONEST, closed=False) == []


def test_a_digest_computed_by_the_adapter_is_used_as_given() -> None:
    book = DeltaBook(0, CAP)
    data = b"delta"
    book.add_proposal(Proposal(0, HONEST, delta_hash(data)))
    assert book.offer(HONEST, data, HONEST, closed=False, digest=delta_hash(data)) == []
    assert book.data(delta_hash(data)) == data
