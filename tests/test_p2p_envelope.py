"""Gossip envelopes: every way an inbound envelope can be wrong has its own error."""

from __future__ import annotations

import msgpack
import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.p2p.envelope import (
    BadEnvelopeField,
    EnvelopeError,
    EnvelopeGuard,
    EnvelopeTooLarge,
    ForgedEnvelope,
    FutureEnvelope,
    MalformedEnvelope,
    RateLimited,
    ReplayedEnvelope,
    StaleEnvelope,
    UnsignedEnvelope,
    UnsupportedVersion,
    domain,
    open_envelope,
    seal,
)

NET = "testnet"
NOW = 1_700_000_000
KEY = PrivateKey(b"\x11" * 32)
OTHER = PrivateKey(b"\x22" * 32)
CAP = 4096


def make_guard(*, burst: float = 100.0) -> EnvelopeGuard:
    return EnvelopeGuard(
        NET,
        max_size=CAP,
        freshness_past=120,
        freshness_future=30,
        relay_rate=10.0,
        relay_burst=burst,
    )


def sealed(
    payload: object = None, *, time: int = NOW, key: PrivateKey = KEY, kind: str = "vote"
) -> bytes:
    payload = {"round": 3, "digest": b"\x01" * 32} if payload is None else payload
    return seal(key, network_id=NET, kind=kind, payload=payload, time=time, max_size=CAP).data


def body(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "v": 1,
        "kind": "vote",
        "sender": KEY.public_key.to_canonical_address(),
        "payload": [1, 2],
        "time": NOW,
    }
    fields.update(overrides)
    return msgpack.packb({k: v for k, v in fields.items() if v is not ...}, use_bin_type=True)


def signed(raw_body: bytes, key: PrivateKey = KEY, network_id: str = NET) -> bytes:
    sig = key.sign_msg_hash(keccak(domain(network_id) + raw_body)).to_bytes()
    return msgpack.packb([raw_body, sig], use_bin_type=True)


def test_round_trip() -> None:
    env = make_guard().accept(sealed(), relayer="peerA", now=NOW + 1)
    assert env.kind == "vote"
    assert env.sender == KEY.public_key.to_canonical_address()
    assert env.payload == {"round": 3, "digest": b"\x01" * 32}
    assert env.time == NOW
    assert len(env.id) == 32


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2]),
        msgpack.packb([b"x", b"y", b"z"]),
        msgpack.packb(["str-body", b"s"]),
        msgpack.packb([b"\x01\x02", b"s" * 65]),
        signed(msgpack.packb([1, 2, 3])),
        signed(body(extra=1)),
        signed(body(time=...)),
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        open_envelope(data, network_id=NET, max_size=CAP)


def test_oversized_inbound_and_outbound() -> None:
    with pytest.raises(EnvelopeTooLarge):
        open_envelope(b"\x00" * (CAP + 1), network_id=NET, max_size=CAP)
    with pytest.raises(EnvelopeTooLarge):
        sealed(b"x" * CAP)  # publish side: refused, never silently dropped by libp2p


def test_wrong_version() -> None:
    with pytest.raises(UnsupportedVersion):
        open_envelope(signed(body(v=2)), network_id=NET, max_size=CAP)
    with pytest.raises(UnsupportedVersion):
        open_envelope(signed(body(v=True)), network_id=NET, max_size=CAP)


@pytest.mark.parametrize(
    "overrides",
    [
        {"kind": 7},
        {"kind": ""},
        {"kind": "k" * 65},
        {"sender": b"\x01" * 19},
        {"sender": "0x" + "11" * 20},
        {"time": "now"},
        {"time": -1},
        {"time": 1.5},
        {"time": True},
    ],
)
def test_wrong_field_types(overrides: dict[str, object]) -> None:
    with pytest.raises(BadEnvelopeField):
        open_envelope(signed(body(**overrides)), network_id=NET, max_size=CAP)


def test_unsigned() -> None:
    for data in (msgpack.packb([body()]), msgpack.packb([body(), b""])):
        with pytest.raises(UnsignedEnvelope):
            open_envelope(data, network_id=NET, max_size=CAP)


def test_signed_by_another_key() -> None:
    with pytest.raises(ForgedEnvelope):
        open_envelope(signed(body(), key=OTHER), network_id=NET, max_size=CAP)


def test_tampered_payload() -> None:
    raw_body, sig = msgpack.unpackb(sealed(), raw=False)
    tampered = raw_body.replace(b"\x01" * 32, b"\x02" * 32)
    assert tampered != raw_body
    with pytest.raises(ForgedEnvelope):
        open_envelope(msgpack.packb([tampered, sig]), network_id=NET, max_size=CAP)


def test_garbage_or_short_signature() -> None:
    for sig in (b"\xff" * 65, b"\x00" * 65, b"\x01" * 64):
        with pytest.raises(ForgedEnvelope):
            open_envelope(msgpack.packb([body(), sig]), network_id=NET, max_size=CAP)


def test_other_network_does_not_verify() -> None:
    with pytest.raises(ForgedEnvelope):
        open_envelope(signed(body(), network_id="othernet"), network_id=NET, max_size=CAP)


def test_stale_and_future() -> None:
    guard = make_guard()
    with pytest.raises(StaleEnvelope):
        guard.accept(sealed(time=NOW - 121), relayer="p", now=NOW)
    with pytest.raises(FutureEnvelope):
        guard.accept(sealed(time=NOW + 31), relayer="p", now=NOW)
    guard.accept(sealed(time=NOW - 119), relayer="p", now=NOW)
    guard.accept(sealed(time=NOW + 29), relayer="p", now=NOW)


def test_replayed_from_any_relayer() -> None:
    guard = make_guard()
    data = sealed()
    guard.accept(data, relayer="p", now=NOW)
    with pytest.raises(ReplayedEnvelope):
        guard.accept(data, relayer="p", now=NOW + 1)
    with pytest.raises(ReplayedEnvelope):
        guard.accept(data, relayer="q", now=NOW + 100)
    # Past the window it is stale, so forgetting it there loses nothing.
    with pytest.raises(StaleEnvelope):
        guard.accept(data, relayer="q", now=NOW + 200)


def test_own_envelope_echoed_back_is_a_replay() -> None:
    guard = make_guard()
    own = seal(KEY, network_id=NET, kind="k", payload=1, time=NOW, max_size=CAP)
    guard.remember(own.id, NOW)
    with pytest.raises(ReplayedEnvelope):
        guard.accept(own.data, relayer="p", now=NOW)


def test_rate_limit_per_relaying_peer() -> None:
    guard = make_guard(burst=3)
    for i in range(3):
        guard.accept(sealed(i), relayer="p", now=NOW)
    with pytest.raises(RateLimited):
        guard.accept(sealed(3), relayer="p", now=NOW)
    guard.accept(sealed(4), relayer="q", now=NOW)  # another peer has its own bucket
    guard.accept(sealed(5), relayer="p", now=NOW + 0.2)  # refilled at 10/s


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_envelope_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        make_guard().accept(data, relayer="p", now=NOW)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_is_rejected(position: int, flip: int) -> None:
    data = bytearray(sealed())
    position %= len(data)
    if flip == 0 or (data[position] ^ flip) == data[position]:
        return
    data[position] ^= flip
    with pytest.raises(EnvelopeError):
        open_envelope(bytes(data), network_id=NET, max_size=CAP)
