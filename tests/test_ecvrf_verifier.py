"""contracts/EcvrfVerifier.vy (RFC 9381 ECVRF in EVM code) on a scratch py-evm chain: the
RFC and flockd vectors, proofs from flockd.vrf, rejections, and a TaskRegistry that checks
proposals with it instead of the precompile.

Every accepted or mismatching proof runs ~1.2M gas of EVM code (about half a second in
py-evm), so the expensive calls are counted: about 23 in this file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak
from nacl import exceptions as nacl_exceptions

from flockd import sortition, vrf
from flockd.chain.client.artifacts import ECVRF_VERIFIER, STAKE_TOKEN, TASK_REGISTRY, load
from flockd.chain.node.deploy import ScratchChain, TxFailed, TxResult
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS

VERIFIER = load(ECVRF_VERIFIER)
TOKEN = load(STAKE_TOKEN)
REGISTRY = load(TASK_REGISTRY)
VECTORS = json.loads(
    (
        Path(__file__).parent.parent / "protocol/vectors/ecvrf-edwards25519-sha512-tai.json"
    ).read_text()
)
MAX_ALPHA = 128  # the contract's bound on alpha
OWNER = PrivateKey(keccak(b"ecvrf verifier owner"))

# flockd.vrf's rejection -> the contract's revert reasons for the same decision
REASONS = {
    "InvalidPublicKey": {
        "public key not a curve point",
        "public key of small order",
        "input length",
    },
    "MalformedProof": {"gamma not a curve point", "s not reduced", "input length"},
    "ProofMismatch": {"proof mismatch"},
}


def b(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


class Verifier:
    """The verifier deployed on its own scratch chain; `beta` is an eth_call."""

    def __init__(self) -> None:
        self.chain = ScratchChain(funded=[OWNER.public_key.to_canonical_address()])
        self.address = self.chain.deploy(OWNER, VERIFIER)

    def beta(self, pk: bytes, alpha: bytes, pi: bytes) -> bytes:
        return self.chain.call(self.address, pk + pi + alpha)

    def rejection(self, pk: bytes, alpha: bytes, pi: bytes) -> str:
        with pytest.raises(TxFailed) as info:
            self.beta(pk, alpha, pi)
        return info.value.reason


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier()


def tai_counter(pk: bytes, alpha: bytes) -> int:
    """The try-and-increment counter at which RFC 9381 hash-to-curve stops for (pk, alpha)."""
    h = vrf._encode_to_curve(pk, alpha)
    for ctr in range(256):
        candidate = hashlib.sha512(b"\x03\x01" + pk + alpha + bytes([ctr, 0])).digest()[:32]
        try:
            if vrf._times_cofactor(candidate) == h:
                return ctr
        except nacl_exceptions.RuntimeError:
            continue
    raise AssertionError("no counter")


# --- accepted proofs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", VECTORS["rfc9381"] + VECTORS["constructed_valid"], ids=lambda c: c["name"]
)
def test_vectors_give_their_beta(verifier: Verifier, case: dict[str, str]) -> None:
    # B.3 examples 16-18, and a public key / a Gamma carrying an order-8 component
    assert verifier.beta(b(case["pk"]), b(case["alpha"]), b(case["pi"])) == b(case["beta"])


def _alpha_with_late_counter(pk: bytes, length: int) -> bytes:
    """An alpha of `length` bytes whose hash-to-curve needs a third try or later."""
    for i in range(64):
        alpha = keccak(b"alpha %d" % i)[:length]
        if tai_counter(pk, alpha) >= 2:
            return alpha
    raise AssertionError("no late counter in 64 alphas")


# alpha lengths: empty, a 32-byte round seed (what the registry sends), the first length
# whose hash-to-curve input takes two SHA-512 blocks, the maximum
@pytest.mark.parametrize("seed,length", [(0, 0), (1, 32), (2, 76), (3, MAX_ALPHA)])
def test_flockd_proofs_verify_with_the_same_beta(
    verifier: Verifier, seed: int, length: int
) -> None:
    sk = keccak(b"vrf key %d" % seed)
    pk = vrf.public_key(sk)
    alpha = (keccak(b"alpha %d" % seed) * 4)[:length]
    if length == 32:
        # each try rewrites the counter byte of one message: a later try must not see an
        # earlier counter (RFC example 17 stops at 1, where a leftover 0 is invisible)
        alpha = _alpha_with_late_counter(pk, length)
    pi = vrf.prove(sk, alpha)
    assert verifier.beta(pk, alpha, pi) == vrf.verify(pk, alpha, pi)


# --- rejected input ------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_vectors_revert(verifier: Verifier, case: dict[str, str]) -> None:
    pk, alpha, pi = b(case["pk"]), b(case["alpha"]), b(case["pi"])
    with pytest.raises(vrf.VRFError):
        vrf.verify(pk, alpha, pi)
    if len(pk) == 32 and len(pi) > 80:
        # raw calldata cannot tell pk || pi(81) || alpha from pk || pi(80) || alpha':
        # the contract reads a proof of the right length and another alpha, which fails
        assert verifier.rejection(pk, alpha, pi) == "proof mismatch"
        return
    assert verifier.rejection(pk, alpha, pi) in REASONS[case["error"]]


RFC16 = VECTORS["rfc9381"][0]
PK16, PI16 = b(RFC16["pk"]), b(RFC16["pi"])
SEED = keccak(b"round seed")
SEED_SK = keccak(b"vrf key seeded")
SEED_PK, SEED_PI = vrf.public_key(SEED_SK), vrf.prove(SEED_SK, SEED)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize(
    "name,pk,alpha,pi",
    [
        ("alpha bit", SEED_PK, _flip(SEED, 77), SEED_PI),
        ("pk bit", _flip(SEED_PK, 3), SEED, SEED_PI),
        ("gamma bit", SEED_PK, SEED, _flip(SEED_PI, 200)),
        ("s top bit", SEED_PK, SEED, _flip(SEED_PI, 639)),
    ],
)
def test_flipped_bits_revert(
    verifier: Verifier, name: str, pk: bytes, alpha: bytes, pi: bytes
) -> None:
    with pytest.raises(vrf.VRFError):
        vrf.verify(pk, alpha, pi)
    verifier.rejection(pk, alpha, pi)


def test_non_canonical_encodings_and_unreduced_s_revert(verifier: Verifier) -> None:
    p, order = 2**255 - 19, vrf.GROUP_ORDER
    y_is_p_plus_1 = (p + 1).to_bytes(32, "little")  # the identity's y, not reduced
    assert verifier.rejection(y_is_p_plus_1, b"", PI16) == "public key not a curve point"
    assert verifier.rejection(PK16, b"", y_is_p_plus_1 + PI16[32:]) == "gamma not a curve point"
    minus_one_signed = ((p - 1) | 1 << 255).to_bytes(32, "little")  # x = 0 with the sign bit
    assert verifier.rejection(PK16, b"", minus_one_signed + PI16[32:]) == "gamma not a curve point"
    s = int.from_bytes(PI16[48:], "little")
    for big_s in (order, s + order, 2**256 - 1):
        pi = PI16[:48] + big_s.to_bytes(32, "little")
        assert verifier.rejection(PK16, b"", pi) == "s not reduced"


@pytest.mark.parametrize("size", [0, 31, 111, 112 + MAX_ALPHA + 1, 400])
def test_wrong_input_length_reverts(verifier: Verifier, size: int) -> None:
    data = (SEED_PK + SEED_PI + SEED * 20)[:size]
    with pytest.raises(TxFailed) as info:
        verifier.chain.call(verifier.address, data)
    assert info.value.reason == "input length"


# --- TaskRegistry with the verifier contract ------------------------------------------------

E18 = 10**18


@dataclass
class ProposeWindow:
    """A TaskRegistry that verifies with the contract, task 1 in the propose phase of round 0:
    6 participants of one stake unit, 3 expected proposers (each elected with p = 1/2)."""

    chain: ScratchChain
    keys: list[PrivateKey]
    registry: bytes
    proofs: list[bytes]  # each participant's proof on the round seed
    elected: list[bool]

    def propose(self, who: int, proof: bytes) -> TxResult:
        data = REGISTRY.encode_call("propose", 1, 0, keccak(b"delta %d" % who), proof)
        return self.chain.transact(self.keys[who], self.registry, data)


def open_propose_window() -> ProposeWindow:
    keys = [PrivateKey(keccak(b"participant %d" % i)) for i in range(6)]
    vrf_keys = [keccak(b"participant vrf %d" % i) for i in range(6)]
    addrs = [k.public_key.to_canonical_address() for k in keys]
    chain = ScratchChain(funded=addrs)
    verifier = chain.deploy(keys[0], VERIFIER)
    token = chain.deploy(keys[0], TOKEN, "Stake", "STK", addrs, [10**6 * E18] * 6)
    registry = chain.deploy(keys[0], REGISTRY, token, verifier)
    assert chain.call(registry, REGISTRY.encode_call("vrf_verifier"))[12:] == verifier
    for k in keys:
        chain.send(k, token, TOKEN.encode_call("approve", registry, 2**256 - 1))
    task = dict(  # TaskParams, in field order
        recipe="mnist-mlp", recipe_hash=keccak(b"recipe"), model_init_hash=keccak(b"model 0"),
        rounds=1, min_participants=2, min_stake=100 * E18, stake_unit=100 * E18,
        expected_proposers=3, max_proposals=16, propose_blocks=12, commit_blocks=12,
        reveal_blocks=12, reward_pool=1000 * E18, vote_mode=0, slash_bps=1000,
        proposer_share_bps=6000,
    )  # fmt: skip
    chain.send(keys[0], registry, REGISTRY.encode_call("create_task", tuple(task.values())))
    for key, sk in zip(keys, vrf_keys, strict=True):
        chain.send(key, registry, REGISTRY.encode_call("join", 1, 100 * E18, vrf.public_key(sk)))
    assert all(r.ok for r in chain.mine())
    chain.transact(keys[0], registry, REGISTRY.encode_call("start_task", 1)).check()
    seed = sortition.round_seed(chain.block_hash(chain.block_number), 1, 0)
    proofs = [vrf.prove(sk, seed) for sk in vrf_keys]
    stakes = sortition.Stakes(100 * E18, 600 * E18, 100 * E18, 3)
    elected = [stakes.elects(sortition.draw(vrf.proof_to_hash(pi))) for pi in proofs]
    return ProposeWindow(chain, keys, registry, proofs, elected)


def test_registry_checks_proposals_with_the_verifier_contract() -> None:
    window = open_propose_window()
    assert True in window.elected and False in window.elected, "seed elects all or none"
    winner, loser = window.elected.index(True), window.elected.index(False)

    result = window.propose(winner, window.proofs[winner]).check()
    (seed_fixed, proposed) = [
        REGISTRY.decode_log(topics, data)
        for addr, topics, data in result.logs()
        if addr == window.registry
    ]
    assert seed_fixed is not None and proposed is not None and proposed[0] == "Proposed"
    assert proposed[1]["proposer"] == "0x" + window.keys[winner].public_key.to_address()[2:]
    # a valid proof whose beta loses the draw: the registry used the verifier's beta
    with pytest.raises(TxFailed, match="not elected"):
        window.propose(loser, window.proofs[loser]).check()
    # forged: the winner's proof claimed under another key, and a proof with c altered
    with pytest.raises(TxFailed, match="vrf proof rejected"):
        window.propose(loser, window.proofs[winner]).check()
    with pytest.raises(TxFailed, match="vrf proof rejected"):
        window.propose(loser, _flip(window.proofs[loser], 300)).check()


# --- gas figures (docs/benchmarks.md) ---------------------------------------------------


def gas_rows() -> list[tuple[str, int, str]]:
    """Whole-transaction gas of verifications, the precompile in the same run as baseline."""
    verifier = Verifier()
    chain = verifier.chain

    def gas(to: bytes, data: bytes) -> int:
        return chain.transact(OWNER, to, data, gas=29_000_000).gas_used

    rows = [("EcvrfVerifier constructor", gas(b"", VERIFIER.deploy_data()), "deploy")]
    sk = keccak(b"gas key")
    pk = vrf.public_key(sk)
    by_counter: dict[int, bytes] = {}
    for i in range(64):
        alpha = keccak(b"gas seed %d" % i)
        by_counter.setdefault(tai_counter(pk, alpha), alpha)
    for ctr in (0, 1, 2):
        alpha = by_counter[ctr]
        data = pk + vrf.prove(sk, alpha) + alpha
        what = f"32-byte alpha, hash-to-curve counter {ctr}"
        rows.append(("verify (valid)", gas(verifier.address, data), what))
        if ctr == 0:
            rows.append(("precompile 0x0F10 (baseline)", gas(VRF_PRECOMPILE_ADDRESS, data), what))
            rows.append(("verify (forged c)", gas(verifier.address, _flip(data, 300)), what))
    for length in (0, MAX_ALPHA):
        alpha = bytes(range(length))
        data = pk + vrf.prove(sk, alpha) + alpha
        rows.append(("verify (valid)", gas(verifier.address, data), f"{length}-byte alpha"))
    bad_pk = (2).to_bytes(32, "little")  # y = 2 has no x on the curve
    rows.append(
        ("verify (bad key)", gas(verifier.address, bad_pk + bytes(80 + 32)), "early revert")
    )
    window = open_propose_window()
    winner = window.elected.index(True)
    rows.append(("TaskRegistry.propose", window.propose(winner, window.proofs[winner]).check().gas_used,
                 "first of the round, verified by EcvrfVerifier"))  # fmt: skip
    return rows


if __name__ == "__main__":
    print("| call | gas | case |\n| --- | ---: | --- |")
    for name, used, what in gas_rows():
        print(f"| {name} | {used:,} | {what} |")
