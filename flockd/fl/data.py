"""Local datasets: the held-out test split, partitioning across nodes, a node's train/val.

Every node of a task derives the same partition from the task's seed, so node i of N
can take its own part without anyone shipping indices around:

1. A stratified TEST split (``test_fraction`` of every class) is set aside. It depends
   only on the seed and the fraction, never on N or the partition, and nobody trains on
   it: it measures the global model.
2. The rest (the pool) is cut into N disjoint parts, IID (a shuffled even split) or
   non-IID with per-class proportions drawn from Dirichlet(alpha) (smaller alpha, more
   skew), retried until every part has a minimum size.
3. Node i's part is split into train and validation; voters score proposals on
   validation.

A task may also name a ROOT set (``root_sample``): a small stratified sample of the pool
that every node derives alike, the public data the ``root-direction`` vote trains its
reference update on. It stands for data the task's creator publishes, so it is drawn from
the same pool without being taken out of anyone's part: the nodes' parts are the same
with or without it.

Each step draws from its own numpy ``Generator`` seeded with ``[seed, step, ...]``, so
the result is the same in every process. A node pointed at its own file (npz or CSV)
uses the whole file as its local data and skips steps 1-2.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flockd.fl.errors import FLError

# Each random step has its own stream, so changing one never shifts another.
_TEST_STREAM, _PARTITION_STREAM, _VALIDATION_STREAM, _ROOT_STREAM = 1, 2, 3, 4
MAX_ROOT_ROWS = 10_000
_DIRICHLET_TRIES = 1000
MAX_USER_FILE_BYTES = 1 << 30


class DataError(FLError):
    """A data spec, partition or local data file is unusable."""


@dataclass(frozen=True)
class Split:
    """Features ``x`` (float32, one row per sample) and integer labels ``y`` (int64)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.ndim < 1 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise DataError(f"x {self.x.shape} and y {self.y.shape} do not pair up")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class Partition:
    """``iid`` or ``dirichlet:ALPHA`` (the testnet's ``--partition`` syntax)."""

    kind: str
    alpha: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Partition:
        if text == "iid":
            return cls("iid")
        name, _, value = text.partition(":")
        if name == "dirichlet":
            try:
                alpha = float(value)
            except ValueError:
                raise DataError(f"bad dirichlet alpha {value!r}") from None
            if not (math.isfinite(alpha) and alpha > 0):
                raise DataError(f"dirichlet alpha must be > 0, got {value!r}")
            return cls("dirichlet", alpha)
        raise DataError(f"unknown partition {text!r} (iid | dirichlet:ALPHA)")

    def __str__(self) -> str:
        return "iid" if self.kind == "iid" else f"dirichlet:{self.alpha:g}"


@dataclass(frozen=True)
class DataSpec:
    """Which slice of which data one node trains and validates on."""

    node_index: int = 0
    num_nodes: int = 1
    partition: str = "iid"
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    # The node's own data instead of the recipe's bundled dataset: .npz (arrays X, y)
    # or .csv (header row, numeric columns, labels in `label_column`).
    path: str | None = None
    label_column: str = "label"

    def __post_init__(self) -> None:
        if not (0 <= self.node_index < self.num_nodes):
            raise DataError(f"node index {self.node_index} is not in [0, {self.num_nodes})")
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1):
            raise DataError("test_fraction and val_fraction must be in (0, 1)")
        if self.seed < 0:
            raise DataError("seed must be >= 0")
        Partition.parse(self.partition)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, *stream]))


def split_held_out(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified held-out split: (test indices, pool indices), both sorted."""
    rng = _rng(seed, _TEST_STREAM)
    test: list[np.ndarray] = []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test.append(members[: round(fraction * len(members))])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, np.int64)
    pool_idx = np.setdiff1d(np.arange(len(y)), test_idx, assume_unique=True)
    return test_idx, pool_idx


def partition_pool(
    pool: np.ndarray, y: np.ndarray, num_nodes: int, partition: Partition, seed: int
) -> list[np.ndarray]:
    """Cut ``pool`` (indices into ``y``) into ``num_nodes`` disjoint sorted parts."""
    if len(pool) < 2 * num_nodes:
        raise DataError(f"{len(pool)} samples cannot feed {num_nodes} nodes")
    rng = _rng(seed, _PARTITION_STREAM)
    if partition.kind == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(pool), num_nodes)]
    return _dirichlet(pool, y, num_nodes, partition.alpha, rng)


def _dirichlet(
    pool: np.ndarray, y: np.ndarray, num_nodes: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    # A node with (almost) nothing cannot train or validate; redraw until all can.
    min_size = 10 if len(pool) >= 20 * num_nodes else 2
    labels = y[pool]
    classes = np.unique(labels)
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for label in classes:
            members = rng.permutation(pool[labels == label])
            shares = rng.dirichlet(np.full(num_nodes, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise DataError(f"no Dirichlet({alpha}) partition gives every node {min_size} samples")


def split_validation(
    part: np.ndarray, fraction: float, seed: int, node_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of one node's part, both sorted and non-empty."""
    if len(part) < 2:
        raise DataError("a node needs at least 2 samples (1 train, 1 validation)")
    shuffled = _rng(seed, _VALIDATION_STREAM, node_index).permutation(part)
    n_val = min(max(1, round(fraction * len(part))), len(part) - 1)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def held_out_split(data: Split, spec: DataSpec) -> Split:
    """The held-out test split of a bundled dataset (the same for every node)."""
    test_idx, _ = split_held_out(data.y, spec.test_fraction, spec.seed)
    return data.take(test_idx)


def node_splits(data: Split, spec: DataSpec) -> tuple[Split, Split]:
    """This node's (train, validation) from a bundled dataset, or from its own file."""
    if spec.path is not None:
        part = np.arange(len(data))
    else:
        _, pool = split_held_out(data.y, spec.test_fraction, spec.seed)
        parts = partition_pool(
            pool, data.y, spec.num_nodes, Partition.parse(spec.partition), spec.seed
        )
        part = parts[spec.node_index]
    train_idx, val_idx = split_validation(part, spec.val_fraction, spec.seed, spec.node_index)
    return data.take(train_idx), data.take(val_idx)


def check_root_rows(rows: int) -> None:
    """DataError unless a root set of ``rows`` rows is within bounds (any recipe's)."""
    if not 1 <= rows <= MAX_ROOT_ROWS:
        raise DataError(f"a root set has 1 to {MAX_ROOT_ROWS} rows, not {rows}")


def root_sample(data: Split, spec: DataSpec, rows: int) -> Split:
    """The task's root set of a bundled dataset: ``rows`` rows of the pool (never of the
    test split), each class in its share of the pool, at least one of each; the same on
    every node for the same seed and fraction."""
    check_root_rows(rows)
    _, pool = split_held_out(data.y, spec.test_fraction, spec.seed)
    if rows > len(pool):
        raise DataError(f"a root set of {rows} rows from a pool of {len(pool)}")
    rng = _rng(spec.seed, _ROOT_STREAM)
    labels = data.y[pool]
    chosen: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(pool[labels == label])
        chosen.append(members[: max(1, round(rows * len(members) / len(pool)))])
    return data.take(np.sort(np.concatenate(chosen)))


def check_file_size(path: Path, limit: int) -> None:
    """DataError unless ``path`` can be stat'ed and holds at most ``limit`` bytes (checked
    before anything is read, so a huge file costs nothing)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if size > limit:
        raise DataError(f"{path} is larger than {limit} bytes")


def load_user_data(path: str | Path, label_column: str = "label") -> Split:
    """A node's own data: ``.npz`` with arrays ``X`` and ``y``, or ``.csv`` with a header."""
    path = Path(path)
    check_file_size(path, MAX_USER_FILE_BYTES)
    if path.suffix == ".npz":
        x, y = _read_npz(path)
    elif path.suffix == ".csv":
        x, y = _read_csv(path, label_column)
    else:
        raise DataError(f"{path}: expected a .npz or .csv file")
    return _checked(x, y, path)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        # allow_pickle=False: an object array in the file is refused, never unpickled.
        with np.load(path, allow_pickle=False) as archive:
            if "X" not in archive or "y" not in archive:
                raise DataError(f"{path}: npz needs arrays 'X' and 'y'")
            return archive["X"], archive["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if label_column not in header:
        raise DataError(f"{path}: no column {label_column!r}")
    if any(len(row) != len(header) for row in body):
        raise DataError(f"{path}: rows have different lengths")
    try:
        table = np.array(body, dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value ({exc})") from None
    label_at = header.index(label_column)
    return np.delete(table, label_at, axis=1), table[:, label_at]


def _checked(x: np.ndarray, y: np.ndarray, origin: Path) -> Split:
    if x.dtype.kind not in "iuf" or y.dtype.kind not in "iuf":
        raise DataError(f"{origin}: X and y must be numeric")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DataError(f"{origin}: X {x.shape} and y {y.shape} do not pair up")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{origin}: X has NaN or infinite values")
    if not (np.isfinite(y).all() and (y == np.round(y)).all() and (y >= 0).all()):
        raise DataError(f"{origin}: labels must be non-negative integers")
    return Split(x, y.astype(np.int64))
