"""Partitioning: deterministic, disjoint, covering, test split held out, Dirichlet skews."""

import subprocess
import sys

import numpy as np
import pytest

from flockd.fl.data import (
    DataError,
    DataSpec,
    Partition,
    Split,
    load_user_data,
    node_splits,
    partition_pool,
    split_held_out,
)

LABELS = np.repeat(np.arange(10), 60)  # 600 samples, 10 balanced classes
DATA = Split(np.arange(600, dtype=np.float32).reshape(600, 1), LABELS)


def all_parts(partition: str, nodes: int = 8, seed: int = 5) -> list[np.ndarray]:
    _, pool = split_held_out(LABELS, 0.2, seed)
    return partition_pool(pool, LABELS, nodes, Partition.parse(partition), seed)


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5"])
def test_parts_are_disjoint_and_cover_the_pool_but_never_the_test_split(partition):
    test, pool = split_held_out(LABELS, 0.2, 5)
    parts = all_parts(partition)
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == len(pool)
    assert set(joined.tolist()) == set(pool.tolist())
    assert not set(test.tolist()) & set(joined.tolist())
    assert len(test) + len(pool) == len(LABELS)


def test_test_split_is_stratified_and_independent_of_the_partition():
    test, _ = split_held_out(LABELS, 0.2, 5)
    assert np.bincount(LABELS[test]).tolist() == [12] * 10
    spec_a = DataSpec(0, 4, "iid", seed=5)
    spec_b = DataSpec(2, 8, "dirichlet:0.3", seed=5)
    assert split_held_out(LABELS, spec_a.test_fraction, spec_a.seed)[0].tolist() == (
        split_held_out(LABELS, spec_b.test_fraction, spec_b.seed)[0].tolist()
    )


def test_node_train_and_validation_are_disjoint_slices_of_its_part():
    spec = DataSpec(3, 8, "iid", seed=5)
    train, val = node_splits(DATA, spec)
    part = all_parts("iid")[3]
    got = np.concatenate([train.x[:, 0], val.x[:, 0]]).astype(int)
    assert sorted(got.tolist()) == sorted(part.tolist())
    assert len(val) == round(0.2 * len(part))


def test_deterministic_within_and_across_processes():
    assert [p.tolist() for p in all_parts("dirichlet:0.5")] == [
        p.tolist() for p in all_parts("dirichlet:0.5")
    ]
    code = (
        "import numpy as np;"
        "from flockd.fl.data import Partition, partition_pool, split_held_out;"
        "y = np.repeat(np.arange(10), 60); _, pool = split_held_out(y, 0.2, 5);"
        "parts = partition_pool(pool, y, 8, Partition.parse('dirichlet:0.5'), 5);"
        "print([p.tolist() for p in parts])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([p.tolist() for p in all_parts("dirichlet:0.5")])


def test_different_seeds_give_different_partitions():
    assert all_parts("iid", seed=1)[0].tolist() != all_parts("iid", seed=2)[0].tolist()


def test_dirichlet_skews_labels_and_iid_does_not():
    def skew(parts):  # mean over nodes of the largest class share
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts])

    assert skew(all_parts("iid")) < 0.2
    assert skew(all_parts("dirichlet:0.1")) > skew(all_parts("dirichlet:0.5")) > 0.25
    assert min(len(p) for p in all_parts("dirichlet:0.1")) >= 10


def test_bad_specs():
    for text in ["dirichlet", "dirichlet:0", "dirichlet:nan", "shards"]:
        with pytest.raises(DataError):
            Partition.parse(text)
    with pytest.raises(DataError):
        DataSpec(8, 8)
    with pytest.raises(DataError):
        partition_pool(np.arange(5), np.zeros(5, np.int64), 4, Partition("iid"), 0)


def test_user_data_npz_and_csv(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "mine.npz", X=x, y=np.array([0, 1, 1, 0]))
    loaded = load_user_data(tmp_path / "mine.npz")
    assert loaded.x.dtype == np.float32 and loaded.y.tolist() == [0, 1, 1, 0]
    (tmp_path / "mine.csv").write_text("a,label,b\n1,0,2\n3,1,4\n5,1,6\n")
    loaded = load_user_data(tmp_path / "mine.csv")
    assert loaded.x.tolist() == [[1, 2], [3, 4], [5, 6]] and loaded.y.tolist() == [0, 1, 1]
    train, val = node_splits(loaded, DataSpec(path=str(tmp_path / "mine.csv")))
    assert len(train) + len(val) == 3 and len(val) == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.csv", "a,b\n1,2\n"),  # no label column
        ("bad2.csv", "a,label\n1,x\n"),
        ("bad3.csv", "a,label\n1,0.5\n"),  # fractional label
        ("bad4.csv", "a,label\nnan,1\n"),
        ("bad.txt", "whatever"),
    ],
)
def test_bad_user_files(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError):
        load_user_data(tmp_path / name)


def test_npz_with_objects_is_refused_not_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", X=np.array([object()], dtype=object), y=np.array([0]))
    with pytest.raises(DataError):
        load_user_data(tmp_path / "evil.npz")
