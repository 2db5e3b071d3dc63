"""Delta pushes are admitted only from a task's participants, one per sender and round, up
to the model's size and within a byte budget; the delta is hashed once, off the loop."""

from __future__ import annotations

import os

import pytest
import trio

from flockd import round as rnd
from flockd.fl.codec import encode_delta
from flockd.identity.peerid import address_from_peer_id
from flockd.p2p.blobs import BlobRejected
from flockd.p2p.host import P2PService
from flockd.round.base import delta_hash
from flockd.stats import Counters
from flockd.tasks.exchange import DELTA_KIND, PUSH_OVERHEAD, DeltaPush, encode_push, max_delta_bytes
from flockd.tasks.pushes import PushInbox, PushRefused, TaskPushes

LAYOUT = {"b": (10,), "w": (10, 20)}
ME, A, B, OUTSIDER = (bytes([i]) * 20 for i in (1, 2, 3, 9))


def pushes(delivered: list[rnd.DeltaReceived], *, participants: frozenset[bytes], per_round: int = 4) -> TaskPushes:
    return TaskPushes(
        participants=participants | {ME},
        me=ME,
        max_delta=max_delta_bytes(LAYOUT),
        per_round=per_round,
        current_round=lambda: 0,
        deliver=delivered.append,
    )


def test_the_cap_is_the_largest_valid_encoding_of_the_layout() -> None:
    import numpy as np

    tensors = {name: np.ones(shape, dtype=np.float32) for name, shape in LAYOUT.items()}
    widest = encode_delta(tensors, samples=2**32 - 1, encoding="topk", topk_fraction=1.0)
    assert max_delta_bytes(LAYOUT) == len(widest)
    assert len(encode_delta(tensors, samples=5)) < len(widest)


def test_admission_rules() -> None:
    gate = pushes([], participants=frozenset({A, B}), per_round=2)
    gate.admit(DeltaPush(7, 0, A, b"d"), A)
    with pytest.raises(PushRefused, match="already took a push"):
        gate.admit(DeltaPush(7, 0, A, b"other"), A)
    with pytest.raises(PushRefused, match="not a participant"):
        gate.admit(DeltaPush(7, 0, OUTSIDER, b"d"), OUTSIDER)
    with pytest.raises(PushRefused, match="own delta"):
        gate.admit(DeltaPush(7, 0, A, b"d"), B)
    with pytest.raises(PushRefused, match="exceed"):
        gate.admit(DeltaPush(7, 1, B, b"x" * (gate.max_delta + 1)), B)
    with pytest.raises(PushRefused, match="outside"):
        gate.admit(DeltaPush(7, 2, B, b"d"), B)
    gate.admit(DeltaPush(7, 1, A, b"d"), A)  # the next round is a round of its own
    gate.admit(DeltaPush(7, 0, B, b"d"), B)


def test_the_byte_budget_bounds_what_two_rounds_hold() -> None:
    many = frozenset(bytes([0x40 + i]) * 20 for i in range(10))
    gate = pushes([], participants=many, per_round=2)
    big = b"x" * gate.max_delta
    senders = sorted(many)
    for r, sender in [(0, senders[0]), (0, senders[1]), (1, senders[2]), (1, senders[3])]:
        gate.admit(DeltaPush(7, r, sender, big), sender)
    with pytest.raises(PushRefused):
        gate.admit(DeltaPush(7, 1, senders[4], b"x"), senders[4])
    assert sum(sum(s.values()) for s in gate._admitted.values()) <= gate.budget


async def test_flooding_pushes_from_a_participant_and_from_a_non_participant() -> None:
    receiver = P2PService(b"\x0a" * 32, network_id="pushtest")
    flooder = P2PService(b"\x0b" * 32, network_id="pushtest")
    outsider = P2PService(b"\x0c" * 32, network_id="pushtest")
    honest = P2PService(b"\x0d" * 32, network_id="pushtest")
    address = {h: bytes.fromhex(address_from_peer_id(h.peer_id)[2:]) for h in (flooder, outsider, honest)}
    delivered: list[rnd.DeltaReceived] = []
    counters = Counters()
    inbox = PushInbox(receiver, counters)
    inbox.listen()
    task = pushes(delivered, participants=frozenset({address[flooder], address[honest]}))

    def push(host: P2PService, delta: bytes, *, round_number: int = 0) -> bytes:
        return encode_push(DeltaPush(7, round_number, address[host], delta))

    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for host in (receiver, flooder, outsider, honest):
                await nursery.start(host.run)
            for host in (flooder, outsider, honest):
                await host.connect(receiver.listen_addrs()[0])
            # No task runs yet: a push is refused from its header alone.
            with pytest.raises(BlobRejected, match="cap"):
                await honest.send_blob(receiver.peer_id, DELTA_KIND, push(honest, b"early"))
            inbox.open_task(7, task)

            for i in range(20):
                await flooder.send_blob(receiver.peer_id, DELTA_KIND, push(flooder, b"junk %d" % i))
            for i in range(5):
                await outsider.send_blob(receiver.peer_id, DELTA_KIND, push(outsider, b"junk %d" % i))
            with pytest.raises(BlobRejected, match="cap"):  # larger than any delta of the model
                await flooder.send_blob(receiver.peer_id, DELTA_KIND, push(flooder, os.urandom(task.max_delta + PUSH_OVERHEAD)))
            delta = os.urandom(1000)
            await honest.send_blob(receiver.peer_id, DELTA_KIND, push(honest, delta))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    # The flooder got one delta in for the round, the outsider none, the honest one its own,
    # each handed over with the digest computed once by the inbox.
    assert [(d.sender, d.delta) for d in delivered] == [(address[flooder], b"junk 0"), (address[honest], delta)]
    assert all(d.digest == delta_hash(d.delta) for d in delivered)
    assert all(type(d.delta) is bytes for d in delivered)  # its own bytes, not the push's buffer
    assert counters.get("pushes_admitted") == 2
    assert counters.get("pushes_refused") == 19 + 5
