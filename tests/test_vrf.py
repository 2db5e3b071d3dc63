"""flockd.vrf against RFC 9381 B.3, constructed edge vectors, and an independent reference.

The reference below is slow affine edwards25519 arithmetic in plain integers, written from
RFC 8032/9381 without libsodium, so a shared bug cannot hide in both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd import vrf

VECTORS = json.loads(
    (
        Path(__file__).parent.parent / "protocol/vectors/ecvrf-edwards25519-sha512-tai.json"
    ).read_text()
)
RFC = VECTORS["rfc9381"]

# --- independent reference (affine coordinates, RFC 8032 decoding) -------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, -1, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENT = (0, 1)
Point = tuple[int, int]


def ref_decode(s: bytes) -> Point | None:
    if len(s) != 32:
        return None
    n = int.from_bytes(s, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    if x2 == 0:
        return None if sign else (0, y)
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return (P - x, y) if x & 1 != sign else (x, y)


def ref_encode(pt: Point) -> bytes:
    return (pt[1] | ((pt[0] & 1) << 255)).to_bytes(32, "little")


def ref_add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P,
    )


def ref_neg(a: Point) -> Point:
    return ((-a[0]) % P, a[1])


def ref_mul(n: int, a: Point) -> Point:
    result = IDENT
    for bit in bin(n)[2:]:
        result = ref_add(result, result)
        if bit == "1":
            result = ref_add(result, a)
    return result


def ref_point(encoded: bytes) -> Point:
    decoded = ref_decode(encoded)
    assert decoded is not None
    return decoded


BASE = ref_point(bytes.fromhex("58" + "66" * 31))


def ref_hash_to_curve(pk: bytes, alpha: bytes) -> tuple[Point, int]:
    for ctr in range(256):
        digest = hashlib.sha512(b"\x03\x01" + pk + alpha + bytes([ctr, 0])).digest()
        candidate = ref_decode(digest[:32])
        if candidate is not None and ref_mul(8, candidate) != IDENT:
            return ref_mul(8, candidate), ctr
    raise AssertionError("unreachable")


def ref_challenge(*points: Point) -> bytes:
    return hashlib.sha512(b"\x03\x02" + b"".join(map(ref_encode, points)) + b"\x00").digest()[:16]


def ref_verify(pk: bytes, alpha: bytes, pi: bytes) -> bytes | None:
    y = ref_decode(pk)
    if y is None or ref_mul(8, y) == IDENT or len(pi) != 80:
        return None
    gamma = ref_decode(pi[:32])
    c, s = int.from_bytes(pi[32:48], "little"), int.from_bytes(pi[48:], "little")
    if gamma is None or s >= L:
        return None
    h, _ = ref_hash_to_curve(pk, alpha)
    u = ref_add(ref_mul(s, BASE), ref_neg(ref_mul(c, y)))
    v = ref_add(ref_mul(s, h), ref_neg(ref_mul(c, gamma)))
    if ref_challenge(y, h, gamma, u, v) != pi[32:48]:
        return None
    return hashlib.sha512(b"\x03\x03" + ref_encode(ref_mul(8, gamma)) + b"\x00").digest()


def b(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


# --- RFC 9381 Appendix B.3 -----------------------------------------------------------------


@pytest.mark.parametrize("case", RFC, ids=[c["name"] for c in RFC])
def test_rfc_vector_byte_for_byte(case):
    sk, pk, alpha = b(case["sk"]), b(case["pk"]), b(case["alpha"])
    assert vrf.public_key(sk) == pk
    assert vrf.prove(sk, alpha) == b(case["pi"])
    assert vrf.proof_to_hash(b(case["pi"])) == b(case["beta"])
    assert vrf.verify(pk, alpha, b(case["pi"])) == b(case["beta"])


@pytest.mark.parametrize("case", RFC, ids=[c["name"] for c in RFC])
def test_reference_reproduces_rfc_intermediates(case):
    # Pins the reference itself to the RFC before it is trusted on the constructed vectors.
    pk, alpha = b(case["pk"]), b(case["alpha"])
    x = int.from_bytes(b(case["x"]), "little")
    k = int.from_bytes(b(case["k"]), "little") % L
    h, ctr = ref_hash_to_curve(pk, alpha)
    assert (ref_encode(h), ctr) == (b(case["h"]), case["ctr"])
    assert ref_encode(ref_mul(x, BASE)) == pk
    assert ref_encode(ref_mul(k, BASE)) == b(case["u"])
    assert ref_encode(ref_mul(k, h)) == b(case["v"])
    assert ref_verify(pk, alpha, b(case["pi"])) == b(case["beta"])


def test_public_key_is_the_ed25519_key_of_the_same_seed():
    seed = hashlib.sha256(b"seed").digest()
    assert vrf.public_key(seed) == bytes(nacl.signing.SigningKey(seed).verify_key)


# --- constructed vectors: small-order components and rejections ----------------------------


@pytest.mark.parametrize("case", VECTORS["constructed_valid"], ids=lambda c: c["name"])
def test_small_order_components_verify_as_the_rfc_says(case):
    pk, alpha, pi = b(case["pk"]), b(case["alpha"]), b(case["pi"])
    assert vrf.verify(pk, alpha, pi) == b(case["beta"])
    assert ref_verify(pk, alpha, pi) == b(case["beta"])


def test_torsion_on_gamma_does_not_change_beta():
    # proof_to_hash clears the cofactor, so a prover cannot steer beta through Gamma.
    sk = b(RFC[0]["sk"])
    (case,) = (c for c in VECTORS["constructed_valid"] if c["pk"] == RFC[0]["pk"])
    honest = vrf.prove(sk, b(case["alpha"]))
    assert b(case["pi"])[:32] != honest[:32]
    assert vrf.proof_to_hash(honest) == b(case["beta"])


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vectors_raise_their_specific_error(case):
    pk, alpha, pi = b(case["pk"]), b(case["alpha"]), b(case["pi"])
    with pytest.raises(getattr(vrf, case["error"])):
        vrf.verify(pk, alpha, pi)
    assert ref_verify(pk, alpha, pi) is None


def test_draft_proof_shares_gamma_but_not_the_challenge():
    draft = next(c for c in VECTORS["invalid"] if "draft" in c["name"])
    assert vrf.proof_to_hash(b(draft["pi"])) == b(RFC[0]["beta"])  # same Gamma
    with pytest.raises(vrf.ProofMismatch):
        vrf.verify(b(draft["pk"]), b"", b(draft["pi"]))


def test_decoding_matches_reference_on_edge_encodings():
    encodings = [(P + i).to_bytes(32, "little") for i in range(19)]  # y >= p
    encodings += [(P + i + (1 << 255)).to_bytes(32, "little") for i in range(19)]
    encodings += [(1 << 255 | y).to_bytes(32, "little") for y in (0, 1, P - 1)]  # x = 0, sign 1
    encodings += [hashlib.sha256(bytes([i])).digest() for i in range(64)]
    for enc in encodings:
        ref = ref_decode(enc)
        mine = vrf._decode_point(enc)
        assert (None if mine is None else mine.encoded) == (
            None if ref is None else ref_encode(ref)
        )
        if ref is not None and mine is not None:
            assert mine.prime_order == (ref_mul(L, ref) == IDENT and ref != IDENT)


def test_scalar_multiple_of_points_with_small_order_part():
    (order8,) = (c["pk"] for c in VECTORS["invalid"] if c["name"] == "public key has order 8")
    torsion = ref_point(b(order8))
    assert ref_mul(8, torsion) == IDENT
    point = ref_mul(12345, BASE)
    for offset in range(8):
        mixed = ref_add(point, ref_mul(offset, torsion))
        for n in (0, 1, 7, 8, 2**128 - 1, L - 1, L + 3):
            decoded = vrf._decode_point(ref_encode(mixed))
            assert decoded is not None and decoded.prime_order == (offset == 0)
            assert vrf._mul_any(n, decoded) == ref_encode(ref_mul(n, mixed))


# --- properties and bad input --------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(sk=st.binary(min_size=32, max_size=32), alpha=st.binary(max_size=64))
def test_prove_then_verify_and_bind_to_alpha(sk, alpha):
    pk = vrf.public_key(sk)
    pi = vrf.prove(sk, alpha)
    assert vrf.verify(pk, alpha, pi) == vrf.proof_to_hash(pi)
    with pytest.raises(vrf.ProofMismatch):
        vrf.verify(pk, alpha + b"\x00", pi)


@settings(max_examples=150, deadline=None)
@given(pi=st.binary(min_size=0, max_size=100))
def test_random_proofs_are_rejected_with_a_vrf_error(pi):
    with pytest.raises(vrf.VRFError):
        vrf.verify(b(RFC[0]["pk"]), b"", pi)


@settings(max_examples=100, deadline=None)
@given(pk=st.binary(min_size=32, max_size=32))
def test_random_public_keys_are_rejected_with_a_vrf_error(pk):
    with pytest.raises(vrf.VRFError):
        vrf.verify(pk, b"", b(RFC[0]["pi"]))


@pytest.mark.parametrize("sk", [b"", bytes(31), bytes(33), "0" * 32])
def test_bad_secret_keys(sk):
    with pytest.raises(vrf.InvalidSecretKey):
        vrf.prove(sk, b"alpha")


@pytest.mark.parametrize(
    "pi", [bytes(79), "x" * 80, bytes(32) + bytes(16) + L.to_bytes(32, "little")]
)
def test_proof_to_hash_rejects_malformed_proofs(pi):
    with pytest.raises(vrf.MalformedProof):
        vrf.proof_to_hash(pi)


def test_well_formed_is_not_valid():
    # All zeros decodes (Gamma is the order-4 point y = 0, s = 0) but proves nothing:
    # proof_to_hash answers, verify refuses.
    assert len(vrf.proof_to_hash(bytes(80))) == vrf.OUTPUT_BYTES
    with pytest.raises(vrf.ProofMismatch):
        vrf.verify(b(RFC[0]["pk"]), b"", bytes(80))


def test_validate_public_key_rejects_non_bytes():
    with pytest.raises(vrf.InvalidPublicKey):
        vrf.validate_public_key("d7" * 16)  # type: ignore[arg-type]


def test_benchmark_runs(capsys):
    from flockd.bench import vrf as bench

    assert bench.main(["-n", "4"]) == 0
    assert "vrf verify" in capsys.readouterr().out
