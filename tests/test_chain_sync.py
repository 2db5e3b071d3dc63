"""Sans-I/O sync: a late node and a forked node catch up by function calls; bad messages refused."""

from __future__ import annotations

import msgpack
import pytest
import rlp
from eth_keys import keys

from flockd.chain.embedded import EmbeddedChain
from flockd.chain.genesis import Genesis
from flockd.chain.sync import (
    MAX_BATCH_BLOCKS,
    BlockRequest,
    Catchup,
    MalformedMessage,
    MessageTooLarge,
    PeerMisbehaved,
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
        request = catchup.on_results(request, import_batch(node, decode_blocks(reply, request.count)))
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
    catch_up(b, a, batch=8)  # small batches: the walk back takes several requests
    assert b.head == a.head
    # The other way: nothing to fetch, a's branch is already the longer one.
    assert catch_up(a, b) == 0


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
    # More blocks than asked for, and an empty reply to a range the peer claimed to have.
    with pytest.raises(MessageTooLarge):
        decode_blocks(encode_blocks([rlp.encode(a.get_block_by_number(n)) for n in range(1, 4)]), max_blocks=2)
    with pytest.raises(PeerMisbehaved):
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

    ann = decode_announcement(encode_announcement(5, b"\x02" * 32, b"block"))
    assert (ann.number, ann.block_hash, ann.block) == (5, b"\x02" * 32, b"block")
    assert decode_announcement(encode_announcement(5, b"\x02" * 32, b"x" * 300_000)).block is None  # fetch it
    for data in (msgpack.packb([1, 0, b"\x02" * 32, None]), msgpack.packb([1, 5, b"\x02", None]), b"\x92"):
        with pytest.raises(MalformedMessage):
            decode_announcement(data)
