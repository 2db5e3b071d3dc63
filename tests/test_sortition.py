"""Round seed and stake-weighted sortition: the exact integer rule, its statistics, bad input."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path

import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flockd import sortition, vrf
from flockd.sortition import ONE, Role, Stakes

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
    assert stakes.elects(int(case["x"])) == case["proposer"]


@pytest.mark.parametrize("case", VECTORS["elections"], ids=lambda c: c["stake"])
def test_election_vectors_end_to_end(case):
    stakes, seed = stakes_of(case), bytes.fromhex(case["seed"])
    mine = sortition.elect(bytes.fromhex(case["vrf_sk"]), seed, stakes)
    theirs = sortition.check_election(bytes.fromhex(case["vrf_pk"]), seed, mine.proof, stakes)
    assert mine == theirs
    assert (mine.proof.hex(), mine.output.hex()) == (case["pi"], case["beta"])
    assert sortition.draw(mine.output) == int(case["x"])
    assert (mine.role is Role.PROPOSER) == case["proposer"]


# --- the rule, derived by hand and against exact arithmetic ---------------------------------


def test_hand_derived_thresholds():
    # w = 2 units of W = 4, one expected: p = 1/4 a unit, a chance of 2/4.
    stakes = Stakes(stake=2, total_stake=4, stake_unit=1, expected_proposers=1)
    assert stakes.threshold == ONE // 2
    assert [stakes.elects(x) for x in (ONE // 2 - 1, ONE // 2, ONE - 1)] == [False, True, True]


def test_no_units_means_voter_and_certainty_means_proposer():
    assert Stakes(9, 1000, 10, 5).threshold == ONE  # less than one unit
    assert not Stakes(0, 0, 1, 5).elects(ONE - 1)  # empty task
    assert Stakes(3, 4, 1, 4).threshold == 0  # p = 1
    assert Stakes(3, 10, 1, 5).elects(0)  # w * p = 3/2, capped at 1


def test_per_unit_probability_floors_to_zero_on_vast_totals():
    stakes = Stakes(2**200, 2**201, 1, 2**100)  # p = 2**-101 is below one ulp
    assert stakes.unit_probability == 0
    assert not stakes.elects(ONE - 1)


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 5000),
    extra=st.integers(0, 20000),
    expected=st.integers(1, 40),
)
def test_threshold_is_one_minus_the_linear_chance_within_rounding(w, extra, expected):
    stakes = Stakes(w, w + extra, 1, expected)
    exact = max(0, 1 - Fraction(w * expected, w + extra)) * ONE
    # p floors by under one ulp, and w * p carries that loss w times. Never below exact.
    assert exact <= stakes.threshold <= exact + w


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 200),
    others=st.integers(0, 5000),
    expected=st.integers(1, 16),
    parts=st.integers(2, 5),
)
def test_splitting_a_stake_earns_no_more_expected_proposals(w, others, expected, parts):
    total = w * parts + others
    whole = Stakes(w * parts, total, 1, expected).chance
    assume(whole < ONE)  # a certain proposer proposes once: past that, splitting pays
    split = parts * Stakes(w, total, 1, expected).chance
    # Linear, so the parts' expected proposals equal the whole's, exactly.
    assert split == whole


# --- statistics on deterministic pseudo-random draws ---------------------------------------


def test_election_rates_follow_stake():
    units = [1, 2, 3, 4, 5, 10, 15, 20, 20, 20]  # W = 100, 4 expected: p = 1/25 a unit
    total, rounds = sum(units), 3000
    chosen = [0] * len(units)
    for r in range(rounds):
        for i, w in enumerate(units):
            beta = hashlib.sha512(f"{r}/{i}".encode()).digest()
            chosen[i] += Stakes(w, total, 1, 4).elects(sortition.draw(beta))
    rates = [c / rounds for c in chosen]
    for w, rate in zip(units, rates, strict=True):
        expected = min(1.0, w / 25)
        sigma = (expected * (1 - expected) / rounds) ** 0.5
        assert abs(rate - expected) < 5 * sigma + 1e-9
    # Linear in stake: the mean number of proposers is the expected count.
    mean = sum(chosen) / rounds
    variance = sum(min(1.0, w / 25) * (1 - min(1.0, w / 25)) for w in units)
    assert abs(mean - 4) < 5 * (variance / rounds) ** 0.5
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
def test_a_draw_must_be_in_range(x):
    with pytest.raises(sortition.InvalidOutput):
        Stakes(1, 2, 1, 1).elects(x)


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
