"""Fuzz targets of the p2p layer: gossip envelopes, blob frames, peer-exchange records."""

from __future__ import annotations

import struct
from typing import Any

from eth_keys import keys
from eth_utils import keccak
from hypothesis import strategies as st

from flockd.bench._fuzz_base import (
    MSGPACK_EXPANSION,
    MSGPACK_VALUES,
    KiB,
    MiB,
    PropertyBroken,
    Target,
    decoder_check,
    linear_bound,
    msgpack_messages,
    mutate,
    mutate_bytes,
    pack,
)
from flockd.identity.peerid import peer_id_from_secret
from flockd.p2p import peerx
from flockd.p2p.blobs import MAX_HEADER, BlobError, FrameDecoder, digest
from flockd.p2p.envelope import EnvelopeError, EnvelopeGuard, domain
from flockd.p2p.limits import P2PLimits

NETWORK = "fuzz"
NOW = 1_700_000_000
_SIGNERS = [keys.PrivateKey(bytes([i + 1]) * 32) for i in range(2)]
_LIMITS = P2PLimits()

# -- gossip envelopes --------------------------------------------------------------------------


@st.composite
def _envelopes(draw: st.DrawFn) -> bytes:
    """Valid envelopes mutated at every layer: body fields (then signed, so the mutation
    reaches the checks after the signature), the body bytes, the outer array, its bytes."""
    signer = draw(st.sampled_from(_SIGNERS))
    body_fields = {
        "v": 1,
        "kind": draw(st.text(min_size=1, max_size=64)),
        "sender": signer.public_key.to_canonical_address(),
        "payload": draw(MSGPACK_VALUES),
        "time": draw(st.integers(NOW - 200, NOW + 60)),
    }
    layer = draw(st.sampled_from(("fields", "fields", "body bytes", "signature", "outer", "outer bytes")))
    if layer == "fields":
        body_fields = mutate(draw, body_fields, MSGPACK_VALUES)
    body = pack(body_fields)
    if layer == "body bytes":
        body = mutate_bytes(draw, body)
    sig = signer.sign_msg_hash(keccak(domain(NETWORK) + body)).to_bytes()
    if layer == "signature":
        sig = draw(st.sampled_from([b"", sig[:64], sig + b"\0", sig[:64] + b"\x1b", bytes(65)]))
    outer = [body, sig]
    if layer == "outer":
        outer = mutate(draw, outer, MSGPACK_VALUES, max_mutations=2)
    data = pack(outer)
    return mutate_bytes(draw, data) if layer == "outer bytes" else data


def _envelope_target() -> Target:
    # Rate limit out of the way: every case should reach the decoder (RateLimited is still
    # a documented error if it happens).
    guard = EnvelopeGuard(
        NETWORK,
        max_size=_LIMITS.max_envelope,
        freshness_past=_LIMITS.freshness_past,
        freshness_future=_LIMITS.freshness_future,
        relay_rate=1e12,
        relay_burst=1e12,
    )
    return Target(
        "gossip.envelope",
        st.binary(max_size=512) | _envelopes(),
        decoder_check(
            lambda data: guard.accept(data, relayer="fuzz-peer", now=NOW),
            (EnvelopeError,),
            bound=linear_bound(MSGPACK_EXPANSION),
        ),
    )


# -- blob frames -------------------------------------------------------------------------------

_BLOB_CAPS = {"chain.blocks.1": 128, "peers": 64 * KiB, "fl.delta.1": 64 * MiB, "!reply": 1 << 40}
_CHUNK = 4 * KiB


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=3 * _CHUNK))
    kind = draw(st.sampled_from(sorted(_BLOB_CAPS)) | st.text(max_size=70))
    header_fields = {"kind": kind, "size": len(body), "hash": digest(body)}
    header = mutate_bytes(draw, pack(mutate(draw, header_fields, MSGPACK_VALUES)))
    length = draw(st.just(len(header)) | st.integers(0, 2**32 - 1) | st.sampled_from([0, MAX_HEADER + 1]))
    return struct.pack(">I", length) + header + body


@st.composite
def _blob_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """One or two frames back to back, mutated, and the sizes the peer's writes arrive in."""
    stream = b"".join(draw(st.lists(_frames(), min_size=1, max_size=2)))
    stream = mutate_bytes(draw, stream)
    cuts = draw(st.lists(st.integers(1, 2 * _CHUNK), max_size=16))
    return stream, cuts


def _read_stream(case: tuple[bytes, list[int]]) -> None:
    """What read_frame does: never read more than `wanted()`, then the stream ends."""
    data, cuts = case
    decoder = FrameDecoder(_BLOB_CAPS.get, chunk=_CHUNK)
    at, cut = 0, 0
    while at < len(data):
        wanted = decoder.wanted()
        if not 1 <= wanted <= max(_CHUNK, 4 + MAX_HEADER):
            raise PropertyBroken(f"wanted() = {wanted}: a read must ask for 1..chunk bytes")
        size = min(wanted, cuts[cut % len(cuts)]) if cuts else wanted
        cut += 1
        decoder.feed(data[at : at + size])
        at += size
    decoder.end_of_stream()


def _blob_target() -> Target:
    return Target(
        "blob.frame",
        st.tuples(st.binary(max_size=512), st.lists(st.integers(1, 64), max_size=4)) | _blob_streams(),
        decoder_check(_read_stream, (BlobError,), bound=linear_bound(4), size=lambda c: len(c[0])),
    )


# -- peer exchange -----------------------------------------------------------------------------

_PEER_IDS = [peer_id_from_secret(bytes([i + 7]) * 32) for i in range(2)]
_ADDRS = st.sampled_from(
    ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/1", "/dns4/example.org/tcp/65535", "/dns/a/tcp/0"]
) | st.from_regex(r"/(ip4|ip6|dns|dns4|dns6|tcp|udp|p2p|unix)/[ -~]{0,20}(/tcp/[0-9]{0,6})?", fullmatch=True)
_PEER_IDS_ANY = st.sampled_from(_PEER_IDS) | st.text(max_size=60) | st.sampled_from(
    ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "16Uiu2", "1" * 52]
)


def _peer_request_target() -> Target:
    base = st.fixed_dictionaries({"addrs": st.lists(_ADDRS, max_size=peerx.MAX_ADDRS + 1)})
    return Target(
        "peers.request",
        msgpack_messages(base),
        decoder_check(peerx.decode_request, (peerx.PeerExchangeError,), bound=linear_bound(MSGPACK_EXPANSION)),
    )


def _peer_reply_target() -> Target:
    entry = st.tuples(_PEER_IDS_ANY, st.lists(_ADDRS, max_size=3)).map(list)
    base: Any = st.fixed_dictionaries({"peers": st.lists(entry, max_size=4)})
    huge = st.integers(peerx.MAX_PEERS - 1, peerx.MAX_PEERS + 1).map(
        lambda n: {"peers": [[_PEER_IDS[0], ["/ip4/1.2.3.4/tcp/1"]]] * n}
    )
    return Target(
        "peers.reply",
        msgpack_messages(base | huge),
        decoder_check(peerx.decode_reply, (peerx.PeerExchangeError,), bound=linear_bound(MSGPACK_EXPANSION)),
        examples=150,
    )


def targets() -> list[Target]:
    return [_envelope_target(), _blob_target(), _peer_request_target(), _peer_reply_target()]
