"""Built-in recipes on scikit-learn's bundled (offline) datasets, and their shared base.

``TorchClassifier`` does the torch work any small classifier needs — deterministic
minibatch SGD, accuracy and cross-entropy — so a recipe only says what its dataset,
preprocessing and model are. Inputs are always 2-D float32 feature rows; a model that
wants an image shape reshapes inside itself (see ``DigitsCNN``).
"""

from __future__ import annotations

import math
import threading
from abc import abstractmethod
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn
from torch.nn import functional as F

from flockd.fl.data import (
    DataError,
    DataSpec,
    Split,
    held_out_split,
    load_user_data,
    node_splits,
    root_sample,
    split_held_out,
)
from flockd.fl.recipe import BadRecipeConfig, Metrics, Recipe, TrainStats
from flockd.fl.vote_scoring import DEFAULT_ROOT_ROWS

# Local training per round, measured in docs/learning.md: 8 nodes x 10 rounds of these
# reach ~97% held-out digits accuracy (IID) at well under a second per round.
_TRAINING_KEYS: dict[str, Any] = {"epochs": 5, "lr": 0.1, "momentum": 0.9, "batch_size": 32}
_SEEDED_BUILD = threading.Lock()  # see TorchClassifier.build_model


class TorchClassifier(Recipe):
    """A classifier over fixed-width feature rows, trained with SGD + momentum."""

    num_features: ClassVar[int]
    num_classes: ClassVar[int]
    # Measured on digits under every partition (docs/benchmarks.md, "Root direction or the
    # voter's own split").
    root_rows_default = DEFAULT_ROOT_ROWS

    @abstractmethod
    def bundled(self) -> Split:
        """The recipe's whole bundled dataset, raw features."""

    @abstractmethod
    def make_model(self) -> nn.Module:
        """The model; called under a seeded RNG, so its initialisation is deterministic."""

    def preprocess(self, x: np.ndarray, spec: DataSpec) -> np.ndarray:
        """Map raw features to model inputs; must not depend on which node calls it."""
        return x.astype(np.float32)

    def validate_config(self) -> None:
        c = self.config
        for key in ("epochs", "batch_size"):
            if not (isinstance(c[key], int) and c[key] >= 1):
                raise BadRecipeConfig(f"{self.name}: {key} must be an integer >= 1")
        if not (c["lr"] > 0 and 0 <= c["momentum"] < 1):
            raise BadRecipeConfig(f"{self.name}: need lr > 0 and 0 <= momentum < 1")

    def build_model(self, seed: int) -> nn.Module:
        # fork_rng: seeding for the init must not disturb the caller's global RNG. The lock:
        # torch's global generator is one per process, and several nodes in one process
        # (the simulation, the adapter tests) build their models from worker threads; an
        # interleaved build would give each a different initial model.
        with _SEEDED_BUILD, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.make_model()

    def load_data(self, spec: DataSpec) -> tuple[Split, Split]:
        raw = self.bundled() if spec.path is None else load_user_data(spec.path, spec.label_column)
        self._check(raw)
        train, val = node_splits(raw, spec)
        return self._ready(train, spec), self._ready(val, spec)

    def load_test(self, spec: DataSpec) -> Split:
        return self._ready(held_out_split(self.bundled(), spec), spec)

    def load_root(self, spec: DataSpec, rows: int) -> Split | None:
        # A node on its own data: the bundled pool is not what the task learns, so it says
        # nothing about a proposal's direction (the vote falls back to the node's own split).
        if spec.path is not None:
            return None
        return self._ready(root_sample(self.bundled(), spec, rows), spec)

    def _check(self, data: Split) -> None:
        if data.x.ndim != 2 or data.x.shape[1] != self.num_features:
            raise DataError(f"{self.name} needs {self.num_features} features, got {data.x.shape}")
        if len(data) and not (data.y.min() >= 0 and data.y.max() < self.num_classes):
            raise DataError(f"{self.name} needs labels in [0, {self.num_classes})")

    def _ready(self, data: Split, spec: DataSpec) -> Split:
        x = np.ascontiguousarray(self.preprocess(data.x, spec), dtype=np.float32)
        return Split(x, data.y.astype(np.int64))

    def train(
        self,
        model: nn.Module,
        data: Split,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> TrainStats:
        if len(data) == 0:
            raise DataError("no training data")
        batch = self.config["batch_size"]
        per_epoch = math.ceil(len(data) / batch)
        total = steps if steps is not None else (epochs or self.config["epochs"]) * per_epoch
        step = _SGDMomentum(model, lr or self.config["lr"], self.config["momentum"])
        x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        order = torch.Generator().manual_seed(seed)
        model.train()
        taken, loss_sum = 0, 0.0
        while taken < total:
            perm = torch.randperm(len(data), generator=order)
            for start in range(0, len(data), batch):
                if taken == total:
                    break
                idx = perm[start : start + batch]
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                step()
                taken += 1
                loss_sum += loss.item()
        return TrainStats(samples=len(data), steps=taken, loss=loss_sum / max(taken, 1))

    def evaluate(self, model: nn.Module, data: Split) -> Metrics:
        if len(data) == 0:
            raise DataError("no evaluation data")
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(data.x))
            y = torch.from_numpy(data.y)
            loss = F.cross_entropy(logits, y)
            accuracy = (logits.argmax(dim=1) == y).double().mean()
        return Metrics(accuracy=float(accuracy), loss=float(loss))


class _SGDMomentum:
    """SGD with heavy-ball momentum, the same update as ``torch.optim.SGD(momentum=m)``.

    Hand-rolled because constructing any ``torch.optim`` optimiser imports torch._dynamo
    and sympy (~800 modules, 1-3 s of CPU) in every process that trains.
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float) -> None:
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._buffers: list[torch.Tensor | None] = [None] * len(self._params)
        self._lr, self._momentum = lr, momentum

    @torch.no_grad()
    def __call__(self) -> None:
        for i, param in enumerate(self._params):
            if param.grad is None:
                continue
            buffer = self._buffers[i]
            if buffer is None:
                buffer = self._buffers[i] = param.grad.detach().clone()
            else:
                buffer.mul_(self._momentum).add_(param.grad)
            param.add_(buffer, alpha=-self._lr)


@lru_cache(maxsize=1)
def _digits() -> Split:
    bunch = load_digits()
    return Split(bunch.data.astype(np.float32), bunch.target.astype(np.int64))


@lru_cache(maxsize=1)
def _cancer() -> Split:
    bunch = load_breast_cancer()
    return Split(bunch.data.astype(np.float32), bunch.target.astype(np.int64))


class _Digits(TorchClassifier):
    """sklearn's 8x8 digits: 64 pixel intensities in 0..16, 10 classes."""

    num_features = 64
    num_classes = 10

    def bundled(self) -> Split:
        return _digits()

    def preprocess(self, x: np.ndarray, spec: DataSpec) -> np.ndarray:
        return (x / 16.0).astype(np.float32)


class DigitsMLP(_Digits):
    name = "digits-mlp"
    default_config: ClassVar[dict[str, Any]] = {"hidden": 128, **_TRAINING_KEYS, "batch_size": 16}

    def make_model(self) -> nn.Module:
        hidden = self.config["hidden"]
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


class DigitsCNN(_Digits):
    name = "digits-cnn"
    default_config: ClassVar[dict[str, Any]] = {"channels": 16, **_TRAINING_KEYS}

    def make_model(self) -> nn.Module:
        c = self.config["channels"]
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(2 * c * 4, 10),
        )


class CancerLogReg(TorchClassifier):
    """Logistic regression (a 2-way softmax) on sklearn's breast-cancer set, 30 features."""

    name = "cancer-logreg"
    num_features = 30
    num_classes = 2
    default_config: ClassVar[dict[str, Any]] = {**_TRAINING_KEYS}

    def bundled(self) -> Split:
        return _cancer()

    def preprocess(self, x: np.ndarray, spec: DataSpec) -> np.ndarray:
        # Standardise with the bundled pool's statistics (never the test split's): the
        # same public constants on every node, whatever its own part looks like.
        mean, std = _cancer_stats(spec.seed, spec.test_fraction)
        return ((x - mean) / std).astype(np.float32)

    def make_model(self) -> nn.Module:
        return nn.Linear(30, 2)


@lru_cache(maxsize=8)
def _cancer_stats(seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:

    data = _cancer()
    _, pool = split_held_out(data.y, test_fraction, seed)
    x = data.x[pool].astype(np.float64)
    return x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
