"""Malicious behaviours: the spec grammar, what each attack does to labels, deltas and
votes, and that the choice of malicious nodes is deterministic."""

import subprocess
import sys

import numpy as np
import pytest

from flockd.fl.attacks import (
    HONEST,
    Behaviour,
    DeltaAttack,
    assign_behaviours,
    attack_rng,
    cast_votes,
    describe,
    flip_labels,
    parse_behaviour,
    poison_delta,
    poison_wire,
    training_split,
)
from flockd.fl.codec import DeltaError, decode_delta, encode_delta
from flockd.fl.data import Split

A, B, C, D = (bytes([n]) * 20 for n in (0xA, 0xB, 0xC, 0xD))


def rng() -> np.random.Generator:
    return np.random.default_rng(7)


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected", "canonical"),
    [
        ("honest", HONEST, "honest"),
        ("label-flip", Behaviour(label_flip=True), "label-flip"),
        ("noise", Behaviour(delta=DeltaAttack("noise", 1.0)), "noise:1"),
        ("noise:0.25", Behaviour(delta=DeltaAttack("noise", 0.25)), "noise:0.25"),
        ("sign-flip", Behaviour(delta=DeltaAttack("sign-flip", 1.0)), "sign-flip:1"),
        ("sign-flip:4", Behaviour(delta=DeltaAttack("sign-flip", 4.0)), "sign-flip:4"),
        ("random-vote", Behaviour(vote="random"), "random-vote"),
        ("accept-all", Behaviour(vote="accept-all"), "accept-all"),
        ("collude", Behaviour(label_flip=True, vote="collude"), "collude"),
        ("label-flip+collude", Behaviour(label_flip=True, vote="collude"), "collude"),
        (
            "collude+sign-flip:4",
            Behaviour(delta=DeltaAttack("sign-flip", 4.0), vote="collude"),
            "sign-flip:4+collude",
        ),
        (
            "collude + noise:2 + label-flip",
            Behaviour(label_flip=True, delta=DeltaAttack("noise", 2.0), vote="collude"),
            "label-flip+noise:2+collude",
        ),
        (
            "accept-all+label-flip+sign-flip:0.5",
            Behaviour(label_flip=True, delta=DeltaAttack("sign-flip", 0.5), vote="accept-all"),
            "label-flip+sign-flip:0.5+accept-all",
        ),
        ("noise:1e-3", Behaviour(delta=DeltaAttack("noise", 0.001)), "noise:0.001"),
        ("garbage", Behaviour(delta=DeltaAttack("garbage", 1.0)), "garbage:1"),
        ("garbage:0.5", Behaviour(delta=DeltaAttack("garbage", 0.5)), "garbage:0.5"),
        (
            "collude+garbage",
            Behaviour(delta=DeltaAttack("garbage", 1.0), vote="collude"),
            "garbage:1+collude",
        ),
    ],
)
def test_parse_gives_the_behaviour_and_str_gives_back_the_canonical_spec(spec, expected, canonical):
    parsed = parse_behaviour(spec)
    assert parsed == expected
    assert str(parsed) == canonical
    assert parse_behaviour(canonical) == parsed


def test_delta_attack_reads_as_a_kind_amount_pair():
    assert parse_behaviour("sign-flip:4").delta == ("sign-flip", 4.0)
    assert parse_behaviour("noise:0.5").delta.amount == 0.5


def test_amounts_that_do_not_fit_in_g_format_round_trip_exactly():
    b = Behaviour(delta=DeltaAttack("noise", 0.1234567891))
    assert parse_behaviour(str(b)) == b


def test_is_honest_only_without_any_attack():
    assert HONEST.is_honest
    for spec in ("label-flip", "noise", "sign-flip", "garbage", "random-vote", "accept-all", "collude"):
        assert not parse_behaviour(spec).is_honest, spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("flip", "unknown part 'flip'"),
        ("honest+label-flip", "cannot be combined"),
        ("noise+sign-flip", "at most one delta attack"),
        ("garbage+noise", "at most one delta attack"),
        ("garbage:65", "at most 64"),
        ("garbage:0", "> 0"),
        ("random-vote+accept-all", "at most one vote attack"),
        ("collude+random-vote", "at most one vote attack"),
        ("label-flip+label-flip", "given twice"),
        ("noise:1+noise:2", "given twice"),
        ("noise:abc", "not a number"),
        ("noise:0", "> 0"),
        ("sign-flip:-2", "> 0"),
        ("noise:nan", "> 0"),
        ("sign-flip:inf", "> 0"),
        ("label-flip:3", "takes no argument"),
        ("collude:1", "takes no argument"),
        ("label-flip+", "unknown part ''"),
    ],
)
def test_bad_specs_are_a_value_error_naming_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_behaviour(spec)


def test_behaviour_rejects_fields_the_grammar_cannot_express():
    with pytest.raises(ValueError, match="> 0"):
        Behaviour(delta=DeltaAttack("noise", 0.0))
    with pytest.raises(ValueError, match="unknown delta attack"):
        Behaviour(delta=DeltaAttack("scale", 2.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown vote"):
        Behaviour(vote="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proposer too"):
        Behaviour(vote="collude")


# --- training and delta attacks --------------------------------------------------------


def test_flip_labels_mirrors_the_classes_and_keeps_the_dtype():
    y = np.array([0, 1, 2, 9, 5], dtype=np.int64)
    flipped = flip_labels(y, 10)
    assert flipped.tolist() == [9, 8, 7, 0, 4]
    assert flipped.dtype == np.int64
    assert y.tolist() == [0, 1, 2, 9, 5]  # the node's own data is untouched
    assert flip_labels(np.array([0, 1, 1]), 2).tolist() == [1, 0, 0]


def test_flip_labels_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        flip_labels(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        flip_labels(np.array([0]), 1)


def test_training_split_flips_labels_by_the_recipes_class_count():
    class TenClasses:
        name = "ten"
        num_classes = 10

    split = Split(np.zeros((3, 2), np.float32), np.array([0, 4, 9]))
    flipped = training_split(parse_behaviour("collude"), split, TenClasses())
    assert flipped.y.tolist() == [9, 5, 0]
    assert flipped.x is split.x
    assert training_split(parse_behaviour("sign-flip"), split, TenClasses()) is split


def test_training_split_needs_a_class_count_to_flip():
    class Regression:
        name = "regression"

    split = Split(np.zeros((1, 2), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="regression declares no num_classes"):
        training_split(parse_behaviour("label-flip"), split, Regression())
    assert training_split(HONEST, split, Regression()) is split


def honest_delta() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5,
        "b": np.array([0.5, -1.0], dtype=np.float64),
    }


def test_honest_and_label_flip_send_the_delta_unchanged():
    for b in (HONEST, parse_behaviour("label-flip"), parse_behaviour("random-vote")):
        out = poison_delta(b, honest_delta(), rng())
        for name, t in honest_delta().items():
            np.testing.assert_array_equal(out[name], t)


def test_sign_flip_sends_minus_scale_times_the_delta_in_its_dtypes():
    out = poison_delta(parse_behaviour("sign-flip:4"), honest_delta(), rng())
    for name, t in honest_delta().items():
        np.testing.assert_array_equal(out[name], -4 * t)
        assert out[name].dtype == t.dtype


def test_noise_replaces_the_delta_with_gaussian_noise_of_the_given_sigma():
    big = {"w": np.ones((200, 250), dtype=np.float32), "b": np.zeros(3, dtype=np.float64)}
    out = poison_delta(parse_behaviour("noise:0.5"), big, rng())
    assert set(out) == {"w", "b"}
    assert out["w"].shape == (200, 250) and out["w"].dtype == np.float32
    assert out["b"].shape == (3,) and out["b"].dtype == np.float64
    assert abs(float(out["w"].mean())) < 0.01  # the honest ones are gone, not shifted
    assert abs(float(out["w"].std()) - 0.5) < 0.01


def test_noise_is_fixed_by_the_generator():
    b = parse_behaviour("noise")
    first = poison_delta(b, honest_delta(), attack_rng(5, 2, 3, "delta"))
    again = poison_delta(b, honest_delta(), attack_rng(5, 2, 3, "delta"))
    other_round = poison_delta(b, honest_delta(), attack_rng(5, 3, 3, "delta"))
    np.testing.assert_array_equal(first["w"], again["w"])
    assert not np.array_equal(first["w"], other_round["w"])


def test_garbage_sends_random_bytes_of_the_chosen_size_in_place_of_the_encoding():
    wire = encode_delta(honest_delta(), samples=3)
    b = parse_behaviour("garbage")
    np.testing.assert_array_equal(poison_delta(b, honest_delta(), rng())["w"], honest_delta()["w"])
    junk = poison_wire(b, wire, attack_rng(5, 2, 3, "delta"))
    assert len(junk) == len(wire) and junk != wire
    assert junk == poison_wire(b, wire, attack_rng(5, 2, 3, "delta"))
    assert junk != poison_wire(b, wire, attack_rng(5, 3, 3, "delta"))
    with pytest.raises(DeltaError):
        decode_delta(junk)
    assert len(poison_wire(parse_behaviour("garbage:2.5"), wire, rng())) == round(2.5 * len(wire))
    assert len(poison_wire(parse_behaviour("garbage:1e-9"), wire, rng())) == 1
    for honest_wire in (HONEST, parse_behaviour("sign-flip:4"), parse_behaviour("collude")):
        assert poison_wire(honest_wire, wire, rng()) == wire


def test_attack_rng_streams_differ_by_node_and_purpose():
    draws = {
        key: attack_rng(*key).integers(0, 2**62)
        for key in [
            (1, 1, 1, "delta"),
            (1, 1, 1, "vote"),
            (1, 1, 2, "delta"),
            (2**200, 1, 1, "delta"),
        ]
    }
    assert len(set(draws.values())) == len(draws)


# --- votes -----------------------------------------------------------------------------


def test_honest_voter_submits_what_it_scored():
    assert cast_votes(HONEST, (1, -1, 1), [A, B, C], frozenset(), rng(), False) == (1, -1, 1)
    assert cast_votes(HONEST, (-1,), [A, B], frozenset(), rng(), True) == (-1,)
    # delta attacks do not change the vote
    signer = parse_behaviour("sign-flip:4")
    assert cast_votes(signer, (1, -1), [A, B], frozenset(), rng(), False) == (1, -1)


def test_accept_all_accepts_everything_in_both_modes():
    b = parse_behaviour("accept-all")
    assert cast_votes(b, (-1, -1, 1), [A, B, C], frozenset(), rng(), False) == (1, 1, 1)
    assert cast_votes(b, (-1,), [A], frozenset(), rng(), True) == (1,)


def test_random_votes_are_uniform_and_fixed_by_the_generator():
    b = parse_behaviour("random-vote")
    proposers = [A] * 2000
    votes = cast_votes(b, (1,) * 2000, proposers, frozenset(), rng(), False)
    assert set(votes) == {-1, 1}
    assert 900 < votes.count(1) < 1100
    assert votes == cast_votes(b, (1,) * 2000, proposers, frozenset(), rng(), False)
    scores = [
        cast_votes(b, (1,), [A], frozenset(), np.random.default_rng(s), True)[0] for s in range(200)
    ]
    assert set(scores) == {-1, 1}  # whole-round votes are +-1 too, never a weighted score
    assert 60 < scores.count(1) < 140


def test_colluders_accept_each_other_and_reject_the_honest_per_proposal():
    b = parse_behaviour("collude")
    colluders = frozenset({B, D})
    # the honest scorer would accept A and C and reject B and D
    votes = cast_votes(b, (1, -1, 1, -1), [A, B, C, D], colluders, rng(), False)
    assert votes == (-1, 1, -1, 1)


def test_colluders_in_whole_round_mode_back_any_round_with_a_colluder_in_it():
    b = parse_behaviour("collude+sign-flip:4")
    colluders = frozenset({B})
    assert cast_votes(b, (-1,), [A, B], colluders, rng(), True) == (1,)
    assert cast_votes(b, (1,), [A, C], colluders, rng(), True) == (-1,)
    assert cast_votes(b, (1,), [], colluders, rng(), True) == (-1,)


def test_votes_must_match_the_proposals():
    with pytest.raises(ValueError, match="2 honest votes for 3"):
        cast_votes(HONEST, (1, 1), [A, B, C], frozenset(), rng(), False)
    with pytest.raises(ValueError, match="2 honest votes for 1"):
        cast_votes(HONEST, (1, 1), [A, B], frozenset(), rng(), True)


# --- who is malicious ------------------------------------------------------------------


def test_assign_behaviours_picks_round_fraction_nodes_never_node_0():
    chosen = assign_behaviours(6, 0.34, "collude", seed=3)
    assert len(chosen) == 2  # round(2.04)
    assert 0 not in chosen
    assert all(b == parse_behaviour("collude") for b in chosen.values())
    assert list(chosen) == sorted(chosen)
    for seed in range(30):
        picked = assign_behaviours(10, 0.5, "sign-flip:4", seed)
        assert len(picked) == 5 and 0 not in picked and set(picked) <= set(range(1, 10))


def test_assign_behaviours_is_deterministic_in_the_seed():
    assert assign_behaviours(20, 0.3, "noise", 11) == assign_behaviours(20, 0.3, "noise", 11)
    picks = {tuple(assign_behaviours(20, 0.3, "noise", seed)) for seed in range(10)}
    assert len(picks) > 1


def test_assign_behaviours_rounds_half_to_even():
    assert len(assign_behaviours(5, 0.5, "collude", 0)) == 2  # round(2.5) == 2
    assert len(assign_behaviours(7, 0.5, "collude", 0)) == 4  # round(3.5) == 4
    assert len(assign_behaviours(10, 0.04, "collude", 0)) == 0  # round(0.4)


def test_assign_behaviours_with_nothing_to_assign():
    assert assign_behaviours(4, 0.0, "collude", 0) == {}
    assert assign_behaviours(4, 0.5, "honest", 0) == {}


def test_assign_behaviours_rejects_bad_input():
    with pytest.raises(ValueError, match="include node 0"):
        assign_behaviours(2, 1.0, "collude", 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        assign_behaviours(4, -0.1, "collude", 0)
    with pytest.raises(ValueError, match="unknown part"):
        assign_behaviours(4, 0.25, "bogus", 0)
    with pytest.raises(ValueError, match="at least one node"):
        assign_behaviours(0, 0.0, "collude", 0)


def test_describe_says_what_the_node_will_do():
    assert describe(HONEST) == "behave honestly"
    assert describe(parse_behaviour("collude+sign-flip:4")) == (
        "send -4 x its delta, vote for its colluders' proposals and against all others"
    )
    assert describe(parse_behaviour("label-flip+noise:0.5")) == (
        "train on flipped labels, send Gaussian noise (sigma 0.5) as its delta"
    )
    assert describe(parse_behaviour("random-vote")) == "vote at random"
    assert describe(parse_behaviour("garbage+collude")) == (
        "send random bytes (1 x the size of its delta) as its delta, "
        "vote for its colluders' proposals and against all others"
    )


def test_the_module_imports_no_torch():
    # Config validation imports it (flockd init, flockd run before any task): no torch there.
    code = "import sys, flockd.fl.attacks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
