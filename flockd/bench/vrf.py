"""`scripts/bench vrf`: ECVRF prove/verify and sortition throughput, next to Ed25519.

Baseline: libsodium's own Ed25519 sign and verify on the same curve, measured in the same
run, so the figures say what the RFC 9381 construction and the Python around libsodium
cost on this machine rather than how fast the machine is.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

import nacl.signing

from flockd import sortition, vrf

REPEATS = 3


def _rate(label: str, count: int, step: Callable[[int], object]) -> float:
    # The fastest of a few passes: the machine is shared, and other load only slows a pass.
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        for i in range(count):
            step(i)
        best = min(best, time.perf_counter() - start)
    per_second = count / best
    print(f"  {label:<34} {per_second:>10,.0f} /s   {best / count * 1e6:>8.1f} us each")
    return per_second


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench vrf", description=__doc__)
    parser.add_argument("-n", type=int, default=1000, help="operations per pass (default 1000)")
    args = parser.parse_args(argv)
    n = max(1, args.n)

    secret = hashlib.sha256(b"flockd bench vrf").digest()
    public = vrf.public_key(secret)
    alphas = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
    signer = nacl.signing.SigningKey(secret)
    verifier = signer.verify_key

    print(
        f"ECVRF-EDWARDS25519-SHA512-TAI, 32-byte alpha; each figure is the best of {REPEATS} passes of {n}"
    )
    print("baseline (libsodium Ed25519, same curve):")
    sign_rate = _rate("ed25519 sign", n, lambda i: signer.sign(alphas[i]))
    signatures = [signer.sign(a) for a in alphas]
    check_rate = _rate("ed25519 verify", n, lambda i: verifier.verify(signatures[i]))

    print("flockd.vrf:")
    prove_rate = _rate("vrf prove", n, lambda i: vrf.prove(secret, alphas[i]))
    proofs = [vrf.prove(secret, a) for a in alphas]
    verify_rate = _rate("vrf verify", n, lambda i: vrf.verify(public, alphas[i], proofs[i]))
    _rate("vrf proof_to_hash", n, lambda i: vrf.proof_to_hash(proofs[i]))

    print("flockd.sortition (draw + threshold, 40 of 1000 units, 10 expected):")
    outputs = [vrf.proof_to_hash(p) for p in proofs]
    stakes = sortition.Stakes(stake=40, total_stake=1000, stake_unit=1, expected_proposers=10)
    _rate("sortition elects", n, lambda i: stakes.elects(sortition.draw(outputs[i])))
    _rate(
        "check_election (verify + elects)",
        n // 4 or 1,
        lambda i: sortition.check_election(public, alphas[i], proofs[i], stakes),
    )

    print(
        f"ratio: prove = {prove_rate / sign_rate:.2f} x ed25519 sign, "
        f"verify = {verify_rate / check_rate:.2f} x ed25519 verify"
    )
    return 0
