"""Aggregation rules: known answers on hand-made deltas, and the same bytes in any order."""

import numpy as np
import pytest

from flockd.fl.aggregate import (
    BadRule,
    MismatchedDeltas,
    NoDeltas,
    Rule,
    aggregate,
    apply,
    fedavg,
    krum,
    krum_select,
    median,
    multi_krum,
    trimmed_mean,
)
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import Delta, decode_delta, encode_delta


def delta(values, samples=1) -> Delta:
    """A decoded delta with one tensor ``w``, exactly as a peer's would arrive."""
    return decode_delta(encode_delta({"w": np.asarray(values, np.float32)}, samples=samples))


def w(tensors) -> list[float]:
    return tensors["w"].tolist()


def test_an_inflated_sample_count_buys_no_weight():
    honest = [delta([1.0], samples=140) for _ in range(3)]
    inflated = delta([-5.0], samples=2**32 - 1)
    for rule in ("fedavg", "multi-krum:0:4"):
        assert w(aggregate([*honest, inflated], rule)) == [-0.5], rule  # (3 - 5) / 4


def test_fedavg_is_the_plain_mean_of_the_accepted_deltas():
    out = fedavg([delta([1.0, 0.0], samples=1), delta([4.0, 8.0], samples=3)])
    assert w(out) == [2.5, 4.0]
    assert out["w"].dtype == np.float32


def test_fedavg_with_no_sample_counts_is_a_plain_mean():
    assert w(fedavg([delta([1.0], 0), delta([2.0], 0), delta([6.0], 0)])) == [3.0]


def test_median_odd_and_even():
    assert w(median([delta([1, 10]), delta([2, -5]), delta([100, 0])])) == [2.0, 0.0]
    assert w(median([delta([1.0]), delta([2.0]), delta([3.0]), delta([100.0])])) == [2.5]


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    deltas = [delta([1, -100]), delta([2, 1]), delta([3, 2]), delta([1000, 3])]
    assert w(trimmed_mean(deltas, 0.25)) == [2.5, 1.5]
    assert w(trimmed_mean(deltas, 0.0)) == w(fedavg([delta(d.tensors["w"], 1) for d in deltas]))


def test_krum_picks_from_the_honest_cluster():
    honest = [delta([1.0, 1.0]), delta([1.1, 0.9]), delta([0.9, 1.1]), delta([1.0, 1.05])]
    outlier = delta([50.0, -50.0])
    chosen = krum(honest + [outlier], f=1)
    assert w(chosen) in [w(d.tensors) for d in honest]
    picked = krum_select(honest + [outlier], f=1, m=3)
    assert outlier.hash not in {d.hash for d in picked} and len(picked) == 3


def test_multi_krum_averages_the_best_m():
    deltas = [delta([1.0]), delta([1.2]), delta([0.8]), delta([1.1]), delta([-40.0])]
    assert abs(w(multi_krum(deltas, f=1, m=3))[0] - 1.1) < 1e-6  # mean of 1.0, 1.2, 1.1


def test_krum_with_tiny_rounds_still_chooses():
    one = delta([3.0])
    assert w(krum([one], f=1)) == [3.0]
    assert w(krum([delta([1.0]), delta([2.0])], f=1)) in ([1.0], [2.0])


@pytest.mark.parametrize(
    "rule", ["fedavg", "median", "trimmed-mean:0.2", "krum:1", "multi-krum:1:3"]
)
def test_same_bytes_whatever_the_order(rule):
    rng = np.random.default_rng(3)
    deltas = [
        decode_delta(
            encode_delta(
                {
                    "a": rng.normal(size=(5, 4)).astype(np.float32),
                    "b": rng.normal(size=7).astype(np.float32),
                },
                samples=int(rng.integers(1, 100)),
            )
        )
        for _ in range(6)
    ]
    first = encode_delta(aggregate(deltas, rule))
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(deltas))
        assert encode_delta(aggregate([deltas[i] for i in order], rule)) == first
    assert encode_delta(aggregate(list(reversed(deltas)), Rule.parse(rule))) == first


def test_apply_adds_in_float32_and_hash_is_reproducible():
    base = {"w": np.array([1.0, 2.0], np.float32)}
    new = apply(base, {"w": np.array([0.5, -2.0], np.float32)})
    assert w(new) == [1.5, 0.0] and new["w"].dtype == np.float32
    assert model_hash(new) == model_hash({"w": np.array([1.5, 0.0], np.float32)})
    with pytest.raises(MismatchedDeltas):
        apply(base, {"w": np.zeros(3, np.float32)})


def test_bad_inputs():
    with pytest.raises(NoDeltas):
        fedavg([])
    with pytest.raises(MismatchedDeltas):
        median([delta([1.0]), delta([1.0, 2.0])])
    for text in ["mean", "krum", "trimmed-mean:0.5", "multi-krum:1", "krum:x", "krum:-1"]:
        with pytest.raises(BadRule):
            Rule.parse(text)
    assert str(Rule.parse("multi-krum:1:3")) == "multi-krum:1:3"
