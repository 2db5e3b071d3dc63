"""RFC 9381 ECVRF-EDWARDS25519-SHA512-TAI (suite 0x03) on libsodium via PyNaCl.

Keys are RFC 8032 Ed25519 keys: the secret key is the 32-byte seed, the public key the
32-byte encoded point. A proof `pi` is Gamma (32) || c (16) || s (32); the output `beta`
is 64 bytes and depends on `(public key, alpha)` only, never on the prover's choices.

Why the point arithmetic is not a thin wrapper over libsodium: libsodium's scalar
multiplication refuses points outside the prime-order subgroup, but RFC 9381 verification
must work on a public key or Gamma that carries a small-order component (and the TAI
hash-to-curve must accept such candidates before clearing the cofactor, or its counter
diverges from the RFC). So such points are decoded and added with `crypto_core_ed25519_add`,
which only needs a point on the curve, and a multiple of one is split as
n*P = (n >> 3)*(8P) + (n & 7)*P, where 8P is in the subgroup libsodium accepts. Honest
keys and proofs are in that subgroup and take the direct path.

Secret scalars stay inside libsodium (scalar_reduce/mul/add), not Python integers.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from nacl import bindings as sodium
from nacl import exceptions as nacl_exceptions

SUITE = b"\x03"
SECRET_KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
PROOF_BYTES = 80
OUTPUT_BYTES = 64
CHALLENGE_BYTES = 16

GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the prime subgroup order
IDENTITY = b"\x01" + bytes(31)  # canonical encoding of (0, 1)
_ZERO_SCALAR = bytes(32)


class VRFError(ValueError):
    """A VRF input was rejected."""


class InvalidSecretKey(VRFError):
    """The secret key is not a 32-byte Ed25519 seed."""


class InvalidPublicKey(VRFError):
    """The public key is malformed, not a canonical curve point, or of small order."""


class MalformedProof(VRFError):
    """The proof has the wrong length, a Gamma that is not a canonical point, or s >= L."""


class ProofMismatch(VRFError):
    """A well-formed proof that does not prove `alpha` under this public key."""


# --- point and scalar helpers (points are 32-byte canonical encodings) ---------------------

_FIELD_PRIME = 2**255 - 19


def _is_canonical(encoded: bytes) -> bool:
    """RFC 8032 5.1.3's encoding rules: y < p, and no sign bit on x = 0 (y = 1 or y = -1)."""
    n = int.from_bytes(encoded, "little")
    y, x_sign = n & ((1 << 255) - 1), n >> 255
    return y < _FIELD_PRIME and not (x_sign and y in (1, _FIELD_PRIME - 1))


class _Point(NamedTuple):
    encoded: bytes
    prime_order: bool  # in the prime-order subgroup, so libsodium multiplies it directly


def _decode_point(encoded: bytes) -> _Point | None:
    """The point if `encoded` is a canonical curve point (any subgroup), else None."""
    if len(encoded) != 32 or not _is_canonical(encoded):
        return None
    if sodium.crypto_core_ed25519_is_valid_point(encoded):
        return _Point(encoded, prime_order=True)  # the honest case, settled in one call
    try:
        # libsodium's addition decodes without a subgroup check: it fails only off the curve.
        sodium.crypto_core_ed25519_add(encoded, IDENTITY)
    except nacl_exceptions.RuntimeError:
        return None
    return _Point(encoded, prime_order=False)


def _add(p: bytes, q: bytes) -> bytes:
    return sodium.crypto_core_ed25519_add(p, q)


def _sub(p: bytes, q: bytes) -> bytes:
    return sodium.crypto_core_ed25519_sub(p, q)


def _times_cofactor(p: bytes) -> bytes:
    for _ in range(3):
        p = _add(p, p)
    return p


def _scalar(n: int) -> bytes:
    return (n % GROUP_ORDER).to_bytes(32, "little")


def _mul_base(n: bytes) -> bytes:
    # libsodium reports the identity as an error, so a zero scalar is answered here.
    return IDENTITY if n == _ZERO_SCALAR else sodium.crypto_scalarmult_ed25519_base_noclamp(n)


def _mul_subgroup(n: bytes, p: bytes) -> bytes:
    """n*P for a reduced scalar and P in the prime-order subgroup, P != identity."""
    return IDENTITY if n == _ZERO_SCALAR else sodium.crypto_scalarmult_ed25519_noclamp(n, p)


def _mul_any(n: int, point: _Point) -> bytes:
    """n*P for any curve point P, small-order component included."""
    p = point.encoded
    if point.prime_order:
        return _mul_subgroup(_scalar(n), p)
    # n*P = (n >> 3)*(8P) + (n & 7)*P, and 8P has lost the small-order part.
    p8 = _times_cofactor(p)
    high = IDENTITY if p8 == IDENTITY else _mul_subgroup(_scalar(n >> 3), p8)
    low = IDENTITY
    for bit in (4, 2, 1):
        low = _add(low, low)
        if n & bit:
            low = _add(low, p)
    return _add(high, low)


# --- RFC 9381 building blocks ---------------------------------------------------------------


def _expand_secret(secret_key: bytes) -> tuple[bytes, bytes]:
    """(x as a reduced scalar, the nonce prefix), as RFC 8032 5.1.5 derives them."""
    if not isinstance(secret_key, bytes) or len(secret_key) != SECRET_KEY_BYTES:
        raise InvalidSecretKey(f"secret key must be {SECRET_KEY_BYTES} bytes")
    digest = hashlib.sha512(secret_key).digest()
    clamped = bytearray(digest[:32])
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    x = sodium.crypto_core_ed25519_scalar_reduce(bytes(clamped) + bytes(32))
    return x, digest[32:]


def _encode_to_curve(salt: bytes, alpha: bytes) -> bytes:
    """RFC 9381 5.4.1.1 try-and-increment; the result is in the prime-order subgroup."""
    prefix = SUITE + b"\x01" + salt + alpha
    for ctr in range(256):
        candidate = hashlib.sha512(prefix + bytes([ctr]) + b"\x00").digest()[:32]
        if not _is_canonical(candidate):
            continue
        try:
            # The first doubling doubles as the on-curve check (no subgroup check: see top).
            h = _times_cofactor(candidate)
        except nacl_exceptions.RuntimeError:
            continue
        if h != IDENTITY:
            return h
    # Each try succeeds with probability about 1/2, so this is 2**-256 unlikely.
    raise VRFError("encode_to_curve found no point in 256 tries")


def _challenge(*points: bytes) -> bytes:
    """RFC 9381 5.4.3: the truncated hash of Y, H, Gamma, U, V (five points, final RFC)."""
    digest = hashlib.sha512(SUITE + b"\x02" + b"".join(points) + b"\x00").digest()
    return digest[:CHALLENGE_BYTES]


def _gamma_to_hash(gamma: bytes) -> bytes:
    return hashlib.sha512(SUITE + b"\x03" + _times_cofactor(gamma) + b"\x00").digest()


def _decode_proof(pi: bytes) -> tuple[_Point, bytes, int]:
    """(Gamma, c as 16 bytes, s) or MalformedProof, per RFC 9381 5.4.4."""
    if not isinstance(pi, bytes) or len(pi) != PROOF_BYTES:
        raise MalformedProof(f"proof must be {PROOF_BYTES} bytes")
    gamma = _decode_point(pi[:32])
    if gamma is None:
        raise MalformedProof("Gamma is not a canonical curve point")
    s = int.from_bytes(pi[48:], "little")
    if s >= GROUP_ORDER:
        raise MalformedProof("s is not reduced modulo the group order")
    return gamma, pi[32:48], s


# --- public API -----------------------------------------------------------------------------


def public_key(secret_key: bytes) -> bytes:
    """The 32-byte public key (the RFC 8032 Ed25519 public key of the same seed)."""
    x, _ = _expand_secret(secret_key)
    return _mul_base(x)


def _decode_public_key(pk: bytes) -> _Point:
    if not isinstance(pk, bytes) or len(pk) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKey(f"public key must be {PUBLIC_KEY_BYTES} bytes")
    point = _decode_point(pk)
    if point is None:
        raise InvalidPublicKey("public key is not a canonical curve point")
    if not point.prime_order and _times_cofactor(pk) == IDENTITY:
        raise InvalidPublicKey("public key has small order")
    return point


def validate_public_key(pk: bytes) -> None:
    """RFC 9381 ECVRF_validate_key: canonical, on the curve, not of small order."""
    _decode_public_key(pk)


def prove(secret_key: bytes, alpha: bytes) -> bytes:
    """RFC 9381 5.1: the 80-byte proof pi that `alpha` hashes to proof_to_hash(pi)."""
    x, nonce_prefix = _expand_secret(secret_key)
    pk = _mul_base(x)
    h = _encode_to_curve(pk, bytes(alpha))
    gamma = _mul_subgroup(x, h)
    k = sodium.crypto_core_ed25519_scalar_reduce(hashlib.sha512(nonce_prefix + h).digest())
    c = _challenge(pk, h, gamma, _mul_base(k), _mul_subgroup(k, h))
    cx = sodium.crypto_core_ed25519_scalar_mul(c + bytes(16), x)
    s = sodium.crypto_core_ed25519_scalar_add(k, cx)
    return gamma + c + s


def proof_to_hash(pi: bytes) -> bytes:
    """RFC 9381 5.2: the 64-byte output beta of a proof (call verify() first to trust it)."""
    gamma, _, _ = _decode_proof(pi)
    return _gamma_to_hash(gamma.encoded)


def verify(pk: bytes, alpha: bytes, pi: bytes) -> bytes:
    """RFC 9381 5.3 with validate_key: beta when pi is valid, else a VRFError subclass."""
    y = _decode_public_key(pk)
    gamma, c, s = _decode_proof(pi)
    h = _encode_to_curve(pk, bytes(alpha))
    c_int = int.from_bytes(c, "little")
    u = _sub(_mul_base(_scalar(s)), _mul_any(c_int, y))
    v = _sub(_mul_subgroup(_scalar(s), h), _mul_any(c_int, gamma))
    if _challenge(pk, h, gamma.encoded, u, v) != c:
        raise ProofMismatch("proof does not verify for this key and input")
    return _gamma_to_hash(gamma.encoded)
