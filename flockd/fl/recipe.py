"""The recipe plugin interface: what a task trains, on what data, and how.

A recipe is a class with a ``name`` and a declared ``default_config`` (every key it
accepts, JSON values only). A task names a recipe and its config on chain as
``(name, config_hash)``, where ``config_hash = keccak256(canonical JSON of the config)``,
so every node of the task builds the same model and trains it the same way.

Writing one (Flower-like: a model factory, a data loader, a train pass, an evaluation)::

    class MyRecipe(Recipe):
        name = "my-recipe"
        default_config = {"hidden": 32, "epochs": 1, "lr": 0.1}

        def build_model(self, seed): ...            # -> torch.nn.Module, float32 state
        def load_data(self, spec): ...              # -> (train, val) Splits of one node
        def load_test(self, spec): ...              # -> the held-out test Split
        def train(self, model, data, *, epochs=None, steps=None, lr=None, seed=0): ...
        def evaluate(self, model, data): ...        # -> {"accuracy": ..., "loss": ...}

and register it under the entry point group ``flockd.recipes`` in the package that
ships it (``my-recipe = mypkg.recipes:MyRecipe``). Most classifiers should subclass
``flockd.fl.builtin.TorchClassifier`` instead and only say what the data and the model are.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from eth_utils import keccak

from flockd.fl.data import DataSpec, Split
from flockd.fl.errors import FLError

if TYPE_CHECKING:  # torch loads with a recipe's model, not with the spec (light daemons)
    import torch

ENTRY_POINT_GROUP = "flockd.recipes"

# Built-ins resolve in-tree first, so a plugin cannot take over a built-in name.
BUILTIN_RECIPES: dict[str, str] = {
    "digits-mlp": "flockd.fl.builtin:DigitsMLP",
    "digits-cnn": "flockd.fl.builtin:DigitsCNN",
    "cancer-logreg": "flockd.fl.builtin:CancerLogReg",
}


class RecipeError(FLError):
    """A recipe cannot be found, loaded or configured."""


class UnknownRecipe(RecipeError): ...


class BadRecipeConfig(RecipeError): ...


class Metrics(TypedDict):
    accuracy: float
    loss: float


class TrainStats(TypedDict):
    samples: int  # training samples seen per epoch (FedAvg weights by this)
    steps: int  # optimiser steps taken
    loss: float  # mean training loss over those steps


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity: one byte string per value."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise BadRecipeConfig(f"config is not canonical JSON: {exc}") from None


class Recipe(ABC):
    """One trainable task definition; see the module docstring."""

    name: ClassVar[str]
    default_config: ClassVar[Mapping[str, Any]]

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        overrides = dict(config or {})
        unknown = sorted(set(overrides) - set(self.default_config))
        if unknown:
            raise BadRecipeConfig(f"{self.name}: unknown config keys {unknown}")
        merged = {**self.default_config, **overrides}
        # Round-trip through canonical JSON: rejects non-JSON values, freezes a copy.
        self.config: dict[str, Any] = json.loads(canonical_json(merged))
        self.validate_config()

    def validate_config(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Raise BadRecipeConfig for out-of-range values (override to check yours)."""

    @property
    def config_hash(self) -> bytes:
        return keccak(canonical_json(self.config))

    @abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """A fresh model, initialised deterministically from ``seed``."""

    @abstractmethod
    def load_data(self, spec: DataSpec) -> tuple[Split, Split]:
        """This node's local (train, validation) splits."""

    @abstractmethod
    def load_test(self, spec: DataSpec) -> Split:
        """The held-out test split (never trained on) that measures the global model."""

    @abstractmethod
    def train(
        self,
        model: torch.nn.Module,
        data: Split,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> TrainStats:
        """One local pass from the current global model, in place; deterministic in seed.

        ``steps`` (optimiser steps) replaces ``epochs`` when given; both default to config.
        """

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, data: Split) -> Metrics:
        """Accuracy and mean loss of ``model`` on ``data``; deterministic."""


def limit_torch_threads(threads: int = 1) -> None:
    """Pin torch's intra-op threads (process-wide): several daemons share a few cores."""
    import torch

    torch.set_num_threads(threads)


def training_seed(task_seed: int, round_index: int, node_index: int) -> int:
    """The seed of one node's local training in one round: distinct per (round, node),
    reproducible by anyone who knows the three numbers."""
    digest = keccak(canonical_json([task_seed, round_index, node_index]))
    return int.from_bytes(digest[:8], "big") >> 1  # torch seeds are < 2**63


def recipe_class(name: str) -> type[Recipe]:
    target = BUILTIN_RECIPES.get(name)
    if target is None:
        found = entry_points(group=ENTRY_POINT_GROUP).select(name=name)
        if not found:
            raise UnknownRecipe(f"no recipe {name!r} (known: {', '.join(recipe_names())})")
        target = next(iter(found)).value
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"recipe {name!r} ({target}) does not load: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Recipe)) or cls.name != name:
        raise RecipeError(f"{target} is not a Recipe named {name!r}")
    return cls


def load_recipe(name: str, config: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe called ``name`` with ``config`` overriding its defaults."""
    return recipe_class(name)(config)


def recipe_names() -> list[str]:
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(plugins | set(BUILTIN_RECIPES))
