"""Sans-I/O sync: a late node and a forked node catch up by function calls; bad messages refused."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
import rlp
from eth_keys import keys
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.chain.node.embedded import EmbeddedChain, MalformedBlock
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.poa import BadTimestamp, BlockRejected, UnauthorizedSigner, sign_header
from flockd.chain.node.sync import (
    MAX_BATCH_BLOCKS,
    BlockRequest,
    Catchup,
    MalformedMessage,
    MessageTooLarge,
    PeerCannotServe,
    PeerMisbehaved,
    SyncError,
    SyncTargets,
    advance,
    answer_from_chain,
    decode_announcement,
    decode_blocks,
    decode_request,
    encode_announcement,
    encode_blocks,
    encode_request,
    import_batch,
)

T0 = 1_700_000_000
KEYS = [keys.PrivateKey(bytes([i + 1]) * 32) for i in range(2)]


def make_pair() -> list[EmbeddedChain]:
    genesis = Genesis.create(
        chain_id=4242, authorities=[k.public_key.to_canonical_address() for k in KEYS], timestamp=T0
    )
    return [EmbeddedChain(genesis, None, k, clock=lambda: float(T0 + 10**6)) for k in KEYS]


def seal_alone(node: EmbeddedChain, blocks: int) -> None:
    """Seal as if the other authority were offline: take every turn this node gets."""
    for _ in range(blocks):
        node.seal_block(node.next_seal_time(0))


def catch_up(node: EmbeddedChain, peer: EmbeddedChain, batch: int = MAX_BATCH_BLOCKS) -> int:
    """The loop the daemon runs, with the network replaced by a function call."""
    catchup = Catchup(peer.head.block_number, peer.head.hash, batch=batch)
    request = catchup.start(node.head.block_number)
    rounds = 0
    while request is not None:
        reply = answer_from_chain(peer, encode_request(request))
        request = advance(catchup, node, request, reply)
        rounds += 1
    return rounds


def test_late_node_catches_up():
    a, b = make_pair()
    seal_alone(a, 150)
    rounds = catch_up(b, a)
    assert b.head == a.head and rounds == 3  # 64 + 64 + 22


def test_forked_node_reorgs_onto_longer_branch():
    a, b = make_pair()
    seal_alone(a, 5)
    catch_up(b, a)
    # Partition: each seals its own branch; a's grows longer.
    seal_alone(a, 30)
    seal_alone(b, 12)
    assert a.head.hash != b.head.hash
    catch_up(b, a, batch=8)  # small batches: the fork is found by bisection, then ranges
    assert b.head == a.head
    # The other way: b's branch is shorter; fetched, it stays a side branch (longest wins).
    head = a.head
    catch_up(a, b, batch=8)
    assert a.head == head


def test_misbehaving_peer_is_detected():
    a, b = make_pair()
    seal_alone(a, 10)
    catchup = Catchup(a.head.block_number, a.head.hash)
    request = catchup.start(0)
    # A reply starting at the wrong block.
    shifted = answer_from_chain(a, encode_request(BlockRequest("range", 5, start=3)))
    with pytest.raises(PeerMisbehaved):
        catchup.on_results(request, import_batch(b, decode_blocks(shifted)))
    # Blocks that do not chain.
    blocks = [rlp.encode(a.get_block_by_number(n)) for n in (1, 3)]
    with pytest.raises(PeerMisbehaved):
        import_batch(b, blocks)
    # More blocks than asked for; an empty reply (a peer without the target: ask another).
    with pytest.raises(MessageTooLarge):
        decode_blocks(encode_blocks([rlp.encode(a.get_block_by_number(n)) for n in range(1, 4)]), max_blocks=2)
    with pytest.raises(PeerCannotServe):
        catchup.on_results(request, import_batch(b, []))


def test_encodings_roundtrip_and_reject_malformed():
    req = BlockRequest("by_hash", 7, block_hash=b"\x01" * 32)
    assert decode_request(encode_request(req)) == req
    assert decode_request(encode_request(BlockRequest("range", 3, start=9))) == BlockRequest("range", 3, start=9)
    bad_requests = [
        b"\xc1",  # not msgpack
        msgpack.packb([2, "range", 1, 1]),  # unknown version
        msgpack.packb([1, "range", 1, 0]),  # count 0
        msgpack.packb([1, "range", 1, MAX_BATCH_BLOCKS + 1]),
        msgpack.packb([1, "range", -1, 1]),
        msgpack.packb([1, "by_hash", b"\x01" * 31, 1]),
        msgpack.packb([1, "everything", 0, 1]),
        msgpack.packb({"kind": "range"}),
    ]
    for data in bad_requests:
        with pytest.raises(MalformedMessage):
            decode_request(data)
    with pytest.raises(MessageTooLarge):
        decode_request(b"\x00" * 1000)
    with pytest.raises(MalformedMessage):
        decode_blocks(msgpack.packb(["not bytes"]))
    with pytest.raises(MalformedMessage):
        decode_blocks(msgpack.packb([b"x"] * (MAX_BATCH_BLOCKS + 5)))

    ann = decode_announcement(encode_announcement(b"header", b"block"))
    assert (ann.header, ann.block) == (b"header", b"block")
    assert decode_announcement(encode_announcement(b"header", b"x" * 300_000)).block is None  # fetch it
    for data in (
        msgpack.packb([1, 5, b"\x02" * 32, None]),  # version 1 named a height nobody vouched for
        msgpack.packb([2, b"", None]),
        msgpack.packb([2, b"h" * 2000, None]),
        msgpack.packb([2, b"h", "block"]),
        b"\x92",
    ):
        with pytest.raises(MalformedMessage):
            decode_announcement(data)


def test_partitioned_node_rejoins_after_more_than_1024_blocks_alone():
    a, b = make_pair()
    seal_alone(a, 3)
    catch_up(b, a)
    # A long partition: b seals 1030 blocks alone, a (the other side) 1040.
    seal_alone(b, 1030)
    seal_alone(a, 1040)
    catch_up(b, a)
    assert b.head == a.head


OUTSIDER = keys.PrivateKey(b"\x77" * 32)


def with_body(header_rlp: bytes, body: list) -> bytes:
    return rlp.encode([rlp.decode(header_rlp), *body])


def test_header_and_seal_are_judged_before_the_body_is_decoded():
    a, b = make_pair()
    seal_alone(a, 3)
    block = a.get_block_by_number(1)
    forged = sign_header(block.header, OUTSIDER)
    garbage_body = [[b"\x01" * 40], [], []]  # no transaction decodes from this
    # Sealed by a non-authority: refused for the seal, the body is never looked at.
    with pytest.raises(UnauthorizedSigner):
        b.import_block(with_body(rlp.encode(forged), garbage_body))
    # The same with a parent we lack: no catch-up may start for a block nobody may seal.
    orphan = sign_header(a.get_block_by_number(3).header, OUTSIDER)
    with pytest.raises(UnauthorizedSigner):
        b.import_block(with_body(rlp.encode(orphan), garbage_body))
    # An authority's genuine block with a lacking parent names it.
    result = b.import_block(rlp.encode(a.get_block_by_number(3)))
    assert result.status == "missing_parent"
    assert result.missing_parent == a.get_block_by_number(2).hash
    # A height no chain can reach by its timestamp (one block per slot at most).
    far = sign_header(a.get_block_by_number(3).header.copy(block_number=10**6), KEYS[0])
    with pytest.raises(BadTimestamp):
        b.import_block(with_body(rlp.encode(far), garbage_body))
    # A valid header over a body that does not decode is still malformed.
    with pytest.raises(MalformedBlock):
        b.import_block(with_body(rlp.encode(block.header), garbage_body))


def test_sync_targets_rotate_peers_and_keep_the_highest():
    targets = SyncTargets(max_targets=2, retry_after=30)
    targets.want(10, b"\x0a" * 32, "slow")
    targets.want(12, b"\x0c" * 32, "slow")
    targets.want(12, b"\x0c" * 32, "honest")
    targets.want(11, b"\x0b" * 32, "other")  # over the cap: the lowest (10) goes
    assert sorted(targets.hashes()) == [b"\x0b" * 32, b"\x0c" * 32]
    connected = ["slow", "honest", "other"]
    target, peer = targets.pick(connected, busy=set(), now=0)
    assert (target.number, peer) == (12, "honest")  # the most recent source first
    # While "honest" is busy, a second attempt at the same target goes to another peer.
    assert targets.pick(connected, busy={"honest"}, now=0)[1] == "slow"
    # A failed peer waits its turn: the next attempt rotates to the others.
    targets.failed(b"\x0c" * 32, "honest", now=0)
    assert targets.pick(connected, busy={"slow"}, now=1)[1] == "other"
    assert targets.pick(connected, busy=set(), now=31)[1] == "honest"
    # Reached or no longer ahead: forgotten.
    targets.prune(11, have={b"\x0c" * 32}.__contains__)
    assert len(targets) == 0


FUZZ_PAIR = make_pair()
seal_alone(FUZZ_PAIR[0], 2)
GENUINE = rlp.encode(FUZZ_PAIR[0].get_block_by_number(1))


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda at, byte: GENUINE[:at] + bytes([byte]) + GENUINE[at + 1 :],
        st.integers(0, len(GENUINE) - 1),
        st.integers(0, 255),
    ),
    st.builds(lambda cut: GENUINE[:cut], st.integers(0, len(GENUINE))),
))
def test_block_bytes_from_a_peer_fail_only_as_rejections(data: bytes) -> None:
    node = FUZZ_PAIR[1]
    with contextlib.suppress(BlockRejected):
        node.import_block(data)
    with contextlib.suppress(SyncError):
        decode_announcement(data)
