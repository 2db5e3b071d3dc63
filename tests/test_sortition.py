"""Round seed and stake-weighted sortition: the exact integer rule, its statistics, bad input."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd import sortition, vrf
from flockd.sortition import MAX_WEIGHT, ONE, Role, Stakes

VECTORS = json.loads(
    (Path(__file__).parent.parent / "protocol/vectors/ecvrf-sortition.json").read_text()
)


def stakes_of(case: dict) -> Stakes:
    return Stakes(
        int(case["stake"]),
        int(case["total_stake"]),
        int(case["stake_unit"]),
        int(case["expected_proposers"]),
    )


# --- vectors -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["seeds"], ids=lambda c: c["round"][:8])
def test_seed_vectors_with_an_independent_keccak(case):
    block_hash, task_id, r = (
        bytes.fromhex(case["block_hash"]),
        int(case["task_id"]),
        int(case["round"]),
    )
    seed = sortition.round_seed(block_hash, task_id, r)
    other = pycryptodome_keccak.new(digest_bits=256)
    other.update(block_hash + task_id.to_bytes(32, "big") + r.to_bytes(32, "big"))
    assert seed.hex() == case["seed"] == other.hexdigest()


@pytest.mark.parametrize("case", VECTORS["sortition"], ids=lambda c: c["note"][:30])
def test_sortition_vectors(case):
    stakes = stakes_of(case)
    assert stakes.threshold == int(case["threshold"])
    assert stakes.weight(int(case["x"])) == case["weight"]
    assert (int(case["x"]) >= stakes.threshold) == case["proposer"]


@pytest.mark.parametrize("case", VECTORS["elections"], ids=lambda c: c["stake"])
def test_election_vectors_end_to_end(case):
    stakes, seed = stakes_of(case), bytes.fromhex(case["seed"])
    mine = sortition.elect(bytes.fromhex(case["vrf_sk"]), seed, stakes)
    theirs = sortition.check_election(bytes.fromhex(case["vrf_pk"]), seed, mine.proof, stakes)
    assert mine == theirs
    assert (mine.proof.hex(), mine.output.hex(), mine.weight) == (
        case["pi"],
        case["beta"],
        case["weight"],
    )
    assert sortition.draw(mine.output) == int(case["x"])
    assert (mine.role is Role.PROPOSER) == case["proposer"]


# --- the rule, derived by hand and against exact arithmetic ---------------------------------


def test_hand_derived_thresholds_and_weights():
    # w = 2 units of W = 4, one expected: p = 1/4, Pr[0] = 9/16, Pr[<=1] = 15/16.
    stakes = Stakes(stake=2, total_stake=4, stake_unit=1, expected_proposers=1)
    sixteenth = ONE // 16
    assert stakes.threshold == 9 * sixteenth
    assert [stakes.weight(x) for x in (9 * sixteenth - 1, 9 * sixteenth)] == [0, 1]
    assert [stakes.weight(x) for x in (15 * sixteenth - 1, 15 * sixteenth, ONE - 1)] == [1, 2, 2]


def test_no_weight_means_voter_and_certainty_means_proposer():
    assert Stakes(9, 1000, 10, 5).threshold == ONE  # less than one unit
    assert Stakes(0, 0, 1, 5).weight(ONE - 1) == 0  # empty task
    assert Stakes(3, 4, 1, 4).threshold == 0  # p = 1
    assert Stakes(3, 4, 1, 4).weight(0) == 3
    assert Stakes(1000, 1000, 1, 1000).weight(0) == MAX_WEIGHT


def test_walk_is_bounded_when_the_threshold_floors_to_zero():
    stakes = Stakes(2**70, 2**71, 1, 2**70)  # (1/2) ** 2**70
    assert stakes.threshold == 0
    assert stakes.weight(ONE - 1) == MAX_WEIGHT


def test_per_unit_probability_floors_to_zero_on_vast_totals():
    stakes = Stakes(2**200, 2**201, 1, 2**100)  # p = 2**-101 is below one ulp
    assert stakes.unit_probability == 0
    assert stakes.weight(ONE - 1) == 0


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 5000),
    extra=st.integers(0, 20000),
    expected=st.integers(1, 40),
)
def test_threshold_is_the_floored_power_within_rounding(w, extra, expected):
    stakes = Stakes(w, w + extra, 1, expected)
    q = Fraction(ONE - stakes.unit_probability, ONE)
    exact = q**w * ONE
    # Every floor loses under one ulp and later products carry earlier losses along; measured
    # over random cases the total stays under 0.8 * w ulps (of 2**64). Never above exact.
    assert exact - w - 2 * w.bit_length() <= stakes.threshold <= exact


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 80),
    extra=st.integers(0, 400),
    expected=st.integers(1, 30),
    x=st.integers(0, ONE - 1),
)
def test_weight_is_the_binomial_quantile_away_from_boundaries(w, extra, expected, x):
    stakes = Stakes(w, w + extra, 1, expected)
    p = Fraction(stakes.unit_probability, ONE)
    cdf, boundaries = Fraction(0), []
    for k in range(min(w, MAX_WEIGHT) + 1):
        cdf += _binomial(w, k) * p**k * (1 - p) ** (w - k)
        boundaries.append(cdf * ONE)
    if any(abs(x - edge) < 2**20 for edge in boundaries):
        return  # within rounding of a boundary: either side is right
    exact = next((k for k, edge in enumerate(boundaries) if x < edge), min(w, MAX_WEIGHT))
    assert stakes.weight(x) == exact


def _binomial(n: int, k: int) -> int:
    result = 1
    for i in range(k):
        result = result * (n - i) // (i + 1)
    return result


def test_fixed_pow_square_and_multiply():
    half = ONE // 2
    assert sortition.fixed_pow(half, 0) == ONE
    assert sortition.fixed_pow(half, 3) == ONE // 8
    assert sortition.fixed_pow(ONE, 2**255) == ONE
    assert sortition.fixed_pow(0, 5) == 0


# --- statistics on deterministic pseudo-random draws ---------------------------------------


def test_election_rates_follow_stake():
    units = [1, 2, 3, 4, 5, 10, 15, 20, 20, 20]  # W = 100, 10 expected: p = 1/10
    total, rounds = sum(units), 3000
    chosen, weight_sum = [0] * len(units), 0
    for r in range(rounds):
        for i, w in enumerate(units):
            beta = hashlib.sha512(f"{r}/{i}".encode()).digest()
            j = Stakes(w, total, 1, 10).weight(sortition.draw(beta))
            chosen[i] += j > 0
            weight_sum += j
    rates = [c / rounds for c in chosen]
    for w, rate in zip(units, rates, strict=True):
        expected = 1 - 0.9**w
        sigma = (expected * (1 - expected) / rounds) ** 0.5
        assert abs(rate - expected) < 5 * sigma + 1e-9
    # Each unit is a Bernoulli(1/10) trial: the mean total weight is the expected count.
    mean_weight = weight_sum / rounds
    assert abs(mean_weight - 10) < 5 * (100 * 0.1 * 0.9 / rounds) ** 0.5
    assert rates[0] < rates[4] < rates[5] < rates[7]


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        dict(stake=-1),
        dict(total_stake=2**256),
        dict(stake_unit=0),
        dict(expected_proposers=1.5),
        dict(stake=True),
        dict(stake="10"),
    ],
)
def test_bad_stakes_are_rejected(fields):
    values = dict(stake=10, total_stake=100, stake_unit=1, expected_proposers=5) | fields
    with pytest.raises(sortition.InvalidStakes):
        Stakes(**values)


@pytest.mark.parametrize(
    "args",
    [
        (bytes(31), 0, 0),
        (bytes(33), 0, 0),
        ("00" * 32, 0, 0),
        (bytes(32), -1, 0),
        (bytes(32), 0, 2**256),
    ],
)
def test_bad_seed_inputs_are_rejected(args):
    with pytest.raises(sortition.InvalidSeedInput):
        sortition.round_seed(*args)


@pytest.mark.parametrize("beta", [bytes(63), bytes(65), b"", "00" * 64])
def test_draw_needs_a_64_byte_output(beta):
    with pytest.raises(sortition.InvalidOutput):
        sortition.draw(beta)


@pytest.mark.parametrize("x", [-1, ONE])
def test_weight_needs_a_draw_in_range(x):
    with pytest.raises(sortition.InvalidOutput):
        Stakes(1, 2, 1, 1).weight(x)


def test_forged_or_replayed_elections_are_rejected():
    sk = hashlib.sha256(b"node").digest()
    pk, stakes = vrf.public_key(sk), Stakes(5, 100, 1, 10)
    seed = sortition.round_seed(bytes(32), 1, 2)
    claim = sortition.elect(sk, seed, stakes)
    next_round = sortition.round_seed(bytes(32), 1, 3)
    with pytest.raises(vrf.ProofMismatch):  # a proof replayed into another round
        sortition.check_election(pk, next_round, claim.proof, stakes)
    other_pk = vrf.public_key(hashlib.sha256(b"other").digest())
    with pytest.raises(vrf.ProofMismatch):  # someone else's proof
        sortition.check_election(other_pk, seed, claim.proof, stakes)
    with pytest.raises(sortition.InvalidSeedInput):
        sortition.check_election(pk, seed + b"\x00", claim.proof, stakes)
