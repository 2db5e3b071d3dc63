"""A Worker facing hostile deltas: whatever bytes a proposer commits to, the voter scores
every other proposal and gives the bad one -1; aggregation leaves unusable deltas out."""

import struct

import msgpack
import numpy as np
import pytest

from flockd.fl.aggregate import MAX_UPDATE_RATIO
from flockd.fl.attacks import parse_behaviour
from flockd.fl.codec import MAX_DELTA_VALUE, decode_delta, encode_delta, max_delta_size
from flockd.fl.data import Split
from flockd.fl.tensors import Tensors, shapes
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

SPEC = TaskSpec("cancer-logreg", num_nodes=4, seed=3)
A, B, C = (bytes([n]) * 20 for n in (1, 2, 3))


@pytest.fixture(scope="module")
def voter() -> Worker:
    return Worker(SPEC, 1)


@pytest.fixture(scope="module")
def base(voter: Worker) -> Tensors:
    return voter.initial_model()


@pytest.fixture(scope="module")
def good(base: Tensors) -> bytes:
    return Worker(SPEC, 2).train(base, 1)


def with_body(data: bytes, fill: float) -> bytes:
    """``data`` with every value replaced by ``fill``: a well-formed header, a hostile body."""
    (header_len,) = struct.unpack_from("<I", data, 4)
    body_len = len(data) - 8 - header_len
    return data[: 8 + header_len] + struct.pack(f"<{body_len // 4}f", *[fill] * (body_len // 4))


def other_layout(data: bytes) -> bytes:
    tensors = decode_delta(data).tensors
    name = sorted(tensors)[0]
    return encode_delta({**tensors, name: np.zeros(tensors[name].size + 1, np.float32)}, samples=1)


def garbage(good: bytes) -> bytes:
    return np.random.default_rng(0).bytes(len(good))


def hostile(good: bytes, base: Tensors) -> dict[str, bytes]:
    huge = float(np.float32(MAX_DELTA_VALUE) * 2)
    # Every value within the per-value bound, the whole update far beyond the norm bound.
    norm = np.sqrt(sum(float(np.square(a.astype(np.float64)).sum()) for a in base.values()))
    size = sum(a.size for a in base.values())
    too_far = min(MAX_DELTA_VALUE, 2 * MAX_UPDATE_RATIO * max(norm, 1.0) / np.sqrt(size))
    return {
        "random bytes": garbage(good),
        "empty": b"",
        "header only": good[: 8 + struct.unpack_from("<I", good, 4)[0]],
        "other layout": other_layout(good),
        "NaN": with_body(good, float("nan")),
        "Inf": with_body(good, float("inf")),
        "value out of bounds": with_body(good, huge),
        "update too large": with_body(good, too_far),
        "longer than any delta": good + bytes(max_delta_size(shapes(base))),
        "state, not delta": b"FLKD" + good[4:8] + good[8:].replace(b"\xa5delta", b"\xa5model", 1),
        "header not a map": b"FLKD" + struct.pack("<I", 3) + msgpack.packb([[[]]]),
    }


def test_hostile_deltas_get_minus_one_and_the_honest_ones_are_still_scored(voter, base, good):
    for what, bad in hostile(good, base).items():
        votes = voter.score(base, [good, bad, good, None], [A, B, C, A], False, 1)
        assert votes == (1, -1, 1, -1), what


def test_a_colluding_voter_still_votes_when_a_delta_is_garbage(base, good):
    colluder = Worker(SPEC, 1, behaviour=parse_behaviour("collude"), colluders=frozenset({B}))
    assert colluder.score(base, [good, garbage(good)], [A, B], False, 1) == (-1, 1)


def test_whole_round_votes_are_plus_or_minus_one(voter, base, good):
    assert voter.score(base, [good], [A], True, 1) == (1,)
    wrecked = encode_delta({k: -20 * v for k, v in decode_delta(good).tensors.items()}, samples=1)
    assert voter.score(base, [wrecked], [A], True, 1) == (-1,)


def test_whole_round_leaves_malformed_deltas_out_of_the_aggregate_it_scores(voter, base, good):
    for what, bad in hostile(good, base).items():
        assert voter.score(base, [bad, good], [A, B], True, 1) == (1,), what
        assert voter.score(base, [bad, None], [A, B], True, 1) == (-1,), what  # nothing usable


def test_aggregate_leaves_unusable_deltas_out(voter, base, good):
    alone = voter.aggregate(base, [good])
    for what, bad in hostile(good, base).items():
        mixed = voter.aggregate(base, [bad, good])
        assert all((mixed[k] == alone[k]).all() for k in alone), what
        unchanged = voter.aggregate(base, [bad])
        assert all((unchanged[k] == base[k]).all() for k in base), what


# --- issue 12 prototype: a vote on a proposal's contribution ----------------------------


def only(split: Split, keep) -> Split:
    mask = keep(split.y)
    return Split(split.x[mask], split.y[mask])


def test_contribution_scoring_accepts_honest_work_on_labels_the_voter_never_sees():
    """The voter validates on digits 0-4 only; one honest proposer trains on 5-9 only. Its
    own model forgets 0-4, so the default vote rejects it; within the round's aggregate
    (leave-one-out) it costs the voter little, so the contribution vote accepts it."""
    spec = TaskSpec("digits-mlp", num_nodes=4, seed=0)
    nodes = [Worker(spec, i) for i in range(4)]
    base = nodes[0].initial_model()
    for r in range(2):  # a model worth protecting first
        base = nodes[0].aggregate(base, [n.train(base, r) for n in nodes])
    skewed = Worker(spec, 1)
    skewed.train_split = only(skewed.train_split, lambda y: y >= 5)
    deltas = [skewed.train(base, 5)] + [n.train(base, 5) for n in nodes[1:]]
    proposers = [A, B, C, A]
    local, contribution = (
        Worker(spec, 0, scoring=scoring) for scoring in ("local-model", "contribution")
    )
    for voter in (local, contribution):
        voter.val_split = only(voter.val_split, lambda y: y < 5)
    assert local.score(base, deltas, proposers, False, 5) == (-1, 1, 1, 1)
    assert contribution.score(base, deltas, proposers, False, 5) == (1, 1, 1, 1)
    # Still -1 for what cannot count and for a label flipper among the same honest three.
    flipper = Worker(spec, 1, behaviour=parse_behaviour("label-flip")).train(base, 5)
    votes = contribution.score(base, [garbage(deltas[1]), flipper, *deltas[1:]], [A] * 5, False, 5)
    assert votes == (-1, -1, 1, 1, 1)


# --- issue 12: the guarded contribution vote -------------------------------------------
# The same round as above: a model after two IID rounds, three honest IID proposals, and a
# fourth that is honest but trained on digits 5-9 only, or an attack. The voter validates
# on its IID split (attacks) or on digits 0-4 only (the foreign honest proposal).

GUARDED = "guarded-contribution"


def a_digits_round(spec: TaskSpec):
    """(spec, base, three honest IID deltas, one honest delta of digits 5-9 only)."""
    nodes = [Worker(spec, i) for i in range(4)]
    base = nodes[0].initial_model()
    for r in range(2):
        base = nodes[0].aggregate(base, [n.train(base, r) for n in nodes])
    honest = [n.train(base, 5) for n in nodes[1:]]
    skewed = Worker(spec, 1)
    skewed.train_split = only(skewed.train_split, lambda y: y >= 5)
    return spec, base, honest, skewed.train(base, 5)


@pytest.fixture(scope="module")
def digits_round():
    return a_digits_round(TaskSpec("digits-mlp", num_nodes=4, seed=0))


def attack_delta(spec: TaskSpec, base: Tensors, attack: str) -> bytes:
    if attack == "scaled:4":  # model replacement: the honest delta boosted, not flipped
        honest = decode_delta(Worker(spec, 1).train(base, 5))
        return encode_delta({k: 4 * v for k, v in honest.tensors.items()}, samples=honest.samples)
    return Worker(spec, 1, behaviour=parse_behaviour(attack)).train(base, 5)


def test_guarded_contribution_accepts_honest_work_on_labels_the_voter_never_sees(digits_round):
    spec, base, honest, skewed = digits_round
    local, guarded = (Worker(spec, 0, scoring=scoring) for scoring in ("local-model", GUARDED))
    for voter in (local, guarded):
        voter.val_split = only(voter.val_split, lambda y: y < 5)
    deltas, proposers = [skewed, *honest], [A, B, C, A]
    assert local.score(base, deltas, proposers, False, 5) == (-1, 1, 1, 1)
    assert guarded.score(base, deltas, proposers, False, 5) == (1, 1, 1, 1)


# Every delta attack of the per-attack table (collude proposes label-flipped deltas), a
# smaller noise, and a boosted (not flipped) delta. sign-flip:1 is left out: at this
# round both the default and this vote accept it (docs/learning.md, "Voter scoring").
ATTACKS = ("label-flip", "noise:1", "noise:0.2", "sign-flip:4", "scaled:4")


@pytest.mark.parametrize("attack", ATTACKS)
def test_guarded_contribution_rejects_an_attack_among_honest_proposals(digits_round, attack):
    spec, base, honest, _ = digits_round
    voter = Worker(spec, 0, scoring=GUARDED)
    bad = attack_delta(spec, base, attack)
    assert voter.score(base, [bad, *honest], [A, B, C, A], False, 5) == (-1, 1, 1, 1)
    assert voter.score(base, [*honest, bad], [A, B, C, A], False, 5) == (1, 1, 1, -1)  # any order


def test_guarded_contribution_rejects_an_attack_among_foreign_honest_work(digits_round):
    """The voter sees digits 0-4 only: the foreign honest proposal passes, a label flipper
    beside it does not, and neither does a malformed delta."""
    spec, base, honest, skewed = digits_round
    voter = Worker(spec, 0, scoring=GUARDED)
    voter.val_split = only(voter.val_split, lambda y: y < 5)
    flipper = attack_delta(spec, base, "label-flip")
    votes = voter.score(base, [garbage(honest[0]), flipper, skewed, *honest], [A] * 6, False, 5)
    assert votes == (-1, -1, 1, 1, 1, 1)


def test_guarded_contribution_gives_hostile_deltas_minus_one(base, good):
    voter = Worker(SPEC, 1, scoring=GUARDED)
    for what, bad in hostile(good, base).items():
        votes = voter.score(base, [good, bad, good, None], [A, B, C, A], False, 1)
        assert votes == (1, -1, 1, -1), what


def test_guarded_contribution_cannot_be_steered_by_tiny_deltas(digits_round):
    """Proposers choose the norms the guard compares: three near-zero deltas make the
    median tiny, so every honest delta is a norm outlier. An outlier is judged as the
    default vote judges it, so honest work still passes."""
    spec, base, honest, _ = digits_round
    voter = Worker(spec, 0, scoring=GUARDED)
    tensors = decode_delta(honest[0]).tensors
    tiny = [encode_delta({k: v * s for k, v in tensors.items()}, samples=1) for s in (1e-3, 2e-3, 3e-3)]
    votes = voter.score(base, [*honest[:2], *tiny], [A, B, C, A, B], False, 5)
    assert votes[:2] == (1, 1)
