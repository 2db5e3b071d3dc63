"""Signed gossip envelopes (sans-I/O): seal on publish, check everything on receipt.

Wire form: msgpack array `[body, sig]`, where `body` is the msgpack map
`{v, kind, sender, payload, time}` kept as raw bytes, and `sig` is a 65-byte recoverable
secp256k1 signature over `keccak256(domain || body)`. The signature covers the body bytes
exactly as sent, so no re-encoding (map order, int widths) can break or fake verification.
The domain names the network, so an envelope from one network never verifies on another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from eth_keys import keys
from eth_keys.datatypes import PrivateKey
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak

from flockd.p2p.abc import P2PError
from flockd.p2p.ratelimit import SeenWindow, TokenBuckets

VERSION = 1
SIGNATURE_LEN = 65
MAX_KIND_LEN = 64
_BODY_KEYS = frozenset({"v", "kind", "sender", "payload", "time"})


class EnvelopeError(P2PError):
    """An inbound gossip envelope was rejected (each reason has its own subclass)."""


class EnvelopeTooLarge(EnvelopeError): ...


class MalformedEnvelope(EnvelopeError): ...


class UnsupportedVersion(EnvelopeError): ...


class BadEnvelopeField(EnvelopeError): ...


class UnsignedEnvelope(EnvelopeError): ...


class ForgedEnvelope(EnvelopeError):
    """The signature is invalid or recovers to an address other than `sender`."""


class StaleEnvelope(EnvelopeError): ...


class FutureEnvelope(EnvelopeError): ...


class ReplayedEnvelope(EnvelopeError): ...


class RateLimited(EnvelopeError): ...


@dataclass(frozen=True)
class Envelope:
    kind: str
    sender: bytes  # 20-byte Ethereum address, recovered from the signature
    payload: object
    time: int  # sender's unix time, seconds
    id: bytes  # keccak256(domain || body): what the signature signs; the replay key


@dataclass(frozen=True)
class Sealed:
    data: bytes  # the wire form
    id: bytes  # the envelope id (see Envelope.id)


def domain(network_id: str) -> bytes:
    return b"flock/gossip/v1\x00" + network_id.encode() + b"\x00"


def seal(
    key: PrivateKey, *, network_id: str, kind: str, payload: object, time: int, max_size: int
) -> Sealed:
    """Encode and sign an envelope; EnvelopeTooLarge when it would exceed `max_size`."""
    _check_kind(kind)
    body = msgpack.packb(
        {
            "v": VERSION,
            "kind": kind,
            "sender": key.public_key.to_canonical_address(),
            "payload": payload,
            "time": time,
        },
        use_bin_type=True,
    )
    envelope_id = keccak(domain(network_id) + body)
    sig = key.sign_msg_hash(envelope_id).to_bytes()
    data: bytes = msgpack.packb([body, sig], use_bin_type=True)
    if len(data) > max_size:
        raise EnvelopeTooLarge(f"envelope is {len(data)} bytes; the gossip cap is {max_size}")
    return Sealed(data=data, id=envelope_id)


def open_envelope(data: bytes, *, network_id: str, max_size: int) -> Envelope:
    """Stateless checks: size, structure, version, field types, signature."""
    if len(data) > max_size:
        raise EnvelopeTooLarge(f"envelope is {len(data)} bytes; the cap is {max_size}")
    outer = _unpack(data, max_array_len=2, max_str_len=0, max_map_len=0)
    if not isinstance(outer, list) or not 1 <= len(outer) <= 2 or not isinstance(outer[0], bytes):
        raise MalformedEnvelope("envelope must be [body: bin, sig: bin]")
    body = outer[0]
    sig = outer[1] if len(outer) == 2 else b""
    if not isinstance(sig, bytes):
        raise MalformedEnvelope("signature must be bin")
    fields = _unpack(body, max_array_len=len(body), max_str_len=len(body), max_map_len=len(body))
    if not isinstance(fields, dict) or set(fields) != _BODY_KEYS:
        raise MalformedEnvelope(f"body must be a map with exactly the keys {sorted(_BODY_KEYS)}")
    if fields["v"] != VERSION or type(fields["v"]) is not int:
        raise UnsupportedVersion(f"envelope version {fields['v']!r}; this node speaks {VERSION}")
    kind, sender, time = fields["kind"], fields["sender"], fields["time"]
    if not isinstance(kind, str):
        raise BadEnvelopeField("kind must be str")
    _check_kind(kind)
    if not isinstance(sender, bytes) or len(sender) != 20:
        raise BadEnvelopeField("sender must be a 20-byte address")
    if type(time) is not int or time < 0:
        raise BadEnvelopeField("time must be a non-negative int")
    if not sig:
        raise UnsignedEnvelope("envelope carries no signature")
    envelope_id = keccak(domain(network_id) + body)
    if _recover(sig, envelope_id) != sender:
        raise ForgedEnvelope("signature does not recover to the sender")
    return Envelope(kind=kind, sender=sender, payload=fields["payload"], time=time, id=envelope_id)


class EnvelopeGuard:
    """Stateful checks on top of open_envelope: per-relayer rate, freshness, replay."""

    def __init__(
        self,
        network_id: str,
        *,
        max_size: int,
        freshness_past: float,
        freshness_future: float,
        relay_rate: float,
        relay_burst: float,
        relay_bytes_rate: float = 2 * 1024 * 1024,
        relay_bytes_burst: float = 8 * 1024 * 1024,
    ) -> None:
        self.network_id = network_id
        self.max_size = max_size
        self.freshness_past = freshness_past
        self.freshness_future = freshness_future
        self._relayers = TokenBuckets(relay_rate, relay_burst)
        # Messages alone do not bound the work: 100 envelopes of 256 KiB a second is 25 MiB/s.
        self._relayer_bytes = TokenBuckets(relay_bytes_rate, max(relay_bytes_burst, max_size))
        # Anything older than the freshness window is rejected as stale, so remembering ids
        # for the whole window (past + future skew) is enough to catch every replay.
        self._seen = SeenWindow(freshness_past + freshness_future)

    def accept(self, data: bytes, *, relayer: str, now: float) -> Envelope:
        # Rate first: it is the cheap check that bounds the signature work a peer can cause.
        if not self._relayers.take(relayer, now):
            raise RateLimited(f"peer {relayer} relays more than {self._relayers.rate}/s")
        if not self._relayer_bytes.take(relayer, now, cost=len(data)):
            raise RateLimited(f"peer {relayer} relays more than {self._relayer_bytes.rate:.0f} B/s")
        envelope = open_envelope(data, network_id=self.network_id, max_size=self.max_size)
        if now - envelope.time > self.freshness_past:
            raise StaleEnvelope(f"envelope is {now - envelope.time:.0f}s old")
        if envelope.time - now > self.freshness_future:
            raise FutureEnvelope(f"envelope is {envelope.time - now:.0f}s in the future")
        if envelope.id in self._seen:
            raise ReplayedEnvelope(f"envelope {envelope.id.hex()[:16]} was already accepted")
        self._seen.add(envelope.id, now)
        return envelope

    def remember(self, envelope_id: bytes, now: float) -> None:
        """Mark our own envelope as seen, so a peer echoing it back is a replay."""
        self._seen.add(envelope_id, now)


def _check_kind(kind: str) -> None:
    if not 0 < len(kind) <= MAX_KIND_LEN:
        raise BadEnvelopeField(f"kind must be 1..{MAX_KIND_LEN} characters")


def _unpack(data: bytes, **limits: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(data),
            max_ext_len=0,  # no ext types: nothing decodes into objects we did not ask for
            **limits,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedEnvelope(f"not valid msgpack: {exc}") from exc


def _recover(sig: bytes, msg_hash: bytes) -> bytes:
    if len(sig) != SIGNATURE_LEN:
        raise ForgedEnvelope(f"signature must be {SIGNATURE_LEN} bytes, got {len(sig)}")
    try:
        public_key = keys.Signature(sig).recover_public_key_from_msg_hash(msg_hash)
    except (BadSignature, ValidationError) as exc:
        raise ForgedEnvelope(f"signature does not recover: {exc}") from exc
    address: bytes = public_key.to_canonical_address()
    return address
