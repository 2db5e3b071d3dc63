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
        def load_data(self, spec): ...              # -> (train, val) of one node
        def train(self, model, data, *, epochs=None, steps=None, lr=None, seed=0): ...
        def evaluate(self, model, data): ...        # -> {"accuracy": ..., "loss": ...}

A task names it either by a registered name (the entry point group ``flockd.recipes`` of
the package that ships it: ``my-recipe = mypkg.recipes:MyRecipe``) or, with no packaging
step, as ``module:attr`` (``mypkg.recipes:MyRecipe``, importable on every node; its
top-level package must be ``flockd`` or listed in ``$FLOCKD_RECIPE_MODULES``, comma
separated: a task spec arrives over RPC, and importing a module runs its code). Most
classifiers should subclass ``flockd.fl.builtin.TorchClassifier`` instead and only say
what the data and the model are.

Optional hooks, with defaults that fit a model trained whole:

- ``load_test``: the held-out test split, or None when the recipe bundles none (then a
  node measures the global model on its own validation split).
- ``load_root``: the task's public root set (``root_rows`` in the task spec), or None when
  the recipe has none to draw it from (the ``root-direction`` vote then falls back).
- ``build_model`` may load its weights from a local path named in the config (a base
  model); every node must then hold the same files, which the config's hash pins.
- Which parameters travel: ``delta_layout`` (the names and shapes a delta holds),
  ``local_update`` (train from the global state, return that delta) and ``expand_update``
  (the delta as a change of the model's own tensors). The default sends the whole state's
  difference; a LoRA recipe sends only its adapter and expands it to ``s * B @ A``.
  Aggregation rules then combine expanded updates, so their mean is the mean of the
  updates themselves, not of their factors.
- What the global state holds between rounds: ``initial_state``, ``model_weights`` and
  ``next_state``. The default holds the model's own tensors; a LoRA recipe also carries
  the round's adapter, so nodes keep training one adapter across rounds while the
  weights take the exact mean of the updates.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypedDict

from eth_utils import keccak

from flockd.fl.codec import Delta
from flockd.fl.data import DataSpec
from flockd.fl.errors import FLError
from flockd.fl.tensors import Shapes, Tensors

if TYPE_CHECKING:  # torch loads with a recipe's model, not with the spec (light daemons)
    import torch

ENTRY_POINT_GROUP = "flockd.recipes"
RECIPE_MODULES_ENV = "FLOCKD_RECIPE_MODULES"
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# Built-ins resolve in-tree first, so a plugin cannot take over a built-in name.
BUILTIN_RECIPES: dict[str, str] = {
    "digits-mlp": "flockd.fl.builtin:DigitsMLP",
    "digits-cnn": "flockd.fl.builtin:DigitsCNN",
    "cancer-logreg": "flockd.fl.builtin:CancerLogReg",
    "lm-lora": "flockd.lm.hf:LmLora",  # needs a base: config {"base_hash": ...} (docs/lm.md)
}


RootTest = Literal["direction", "model"]


class RecipeError(FLError):
    """A recipe cannot be found, loaded or configured."""


class UnknownRecipe(RecipeError): ...


class BadRecipeConfig(RecipeError): ...


# A recipe's local data: a ``flockd.fl.data.Split`` for the built-ins, anything sized for
# others (an LM recipe's token sequences). Only the recipe reads inside it.
LocalData = Any


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
    # Train in a child process of the daemon's (flockd.tasks.trainer): for recipes whose
    # training loop is Python-heavy enough to suffer from sharing the daemon's GIL.
    train_in_child: ClassVar[bool] = False
    # The root set a task of this recipe gets when its creator names none (TaskSpec
    # root_rows): 0 unless the root votes were measured to judge this recipe's updates.
    root_rows_default: ClassVar[int] = 0
    # How the default vote (root-or-local-model) judges a proposal on the root set: by its
    # update's direction against one trained there ("direction", flockd.fl.root_vote), or
    # by the proposer's model there, as local-model judges on a validation split ("model").
    root_test: ClassVar[RootTest] = "direction"

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
    def load_data(self, spec: DataSpec) -> tuple[LocalData, LocalData]:
        """This node's local (train, validation) splits."""

    def load_test(self, spec: DataSpec) -> LocalData | None:
        """The held-out test split (never trained on) that measures the global model, or
        None when the recipe bundles none."""
        return None

    def load_root(self, spec: DataSpec, rows: int) -> LocalData | None:
        """The task's root set of ``rows`` rows: public data every node derives alike, on
        which the ``root-direction`` vote trains its reference update; None when the recipe
        has no bundled data to draw it from, or the node learns from its own data
        (``spec.path``), which the bundled data does not stand for."""
        return None

    @abstractmethod
    def train(
        self,
        model: torch.nn.Module,
        data: LocalData,
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
    def evaluate(self, model: torch.nn.Module, data: LocalData) -> Metrics:
        """Accuracy and mean loss of ``model`` on ``data``; deterministic."""

    # -- which parameters travel (defaults: the whole state) ------------------------------

    def delta_layout(self, model_layout: Shapes) -> Shapes:
        """The names and shapes of a delta for a model of ``model_layout``; a peer's delta
        is decoded against exactly this layout."""
        return dict(model_layout)

    def local_update(
        self, model: torch.nn.Module, base: Tensors, data: LocalData, *, seed: int
    ) -> tuple[Tensors, TrainStats]:
        """Train from the global state ``base`` (loaded into ``model`` here) and return
        the delta to send, in ``delta_layout``, with the training stats."""
        from flockd.fl.tensors import load_model_state, model_state, subtract

        load_model_state(model, base)
        stats = self.train(model, data, seed=seed)
        return subtract(model_state(model), base), stats

    def expand_update(self, base: Tensors, delta: Tensors) -> Tensors:
        """``delta`` as a change of the model's own tensors: names and shapes of
        ``model_weights(base)`` (a subset of them; the rest do not change). Deterministic element-wise float
        arithmetic only: every node must get the same bytes. The default: the delta is
        already one."""
        return delta

    # -- what the global state holds (defaults: the model's own tensors) ------------------

    def initial_state(self, weights: Tensors, seed: int) -> Tensors:
        """The task's global state before round 0, from the built model's tensors (the
        model hash on chain covers it). Deterministic from ``seed``."""
        return weights

    def model_weights(self, state: Tensors) -> Tensors:
        """The model's own tensors (what ``load_model_state`` takes) of a global state."""
        return state

    def next_state(self, state: Tensors, update: Tensors, deltas: Sequence[Delta], rule: str) -> Tensors:
        """The global state after a round: ``state``'s model moved by ``update`` (the
        task's ``rule`` over the expanded deltas, in ``model_weights``' layout), given the
        accepted usable ``deltas`` as sent (not expanded). Element-wise float arithmetic
        only, like ``expand_update``. The default: ``state + update``."""
        from flockd.fl.aggregate import apply

        return apply(state, update)


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
    """The class a task's recipe name denotes: a built-in, an entry point of the
    ``flockd.recipes`` group, or ``module:attr`` (any importable Recipe subclass)."""
    target = BUILTIN_RECIPES.get(name)
    if target is None and ":" in name:
        module_name, _ = _module_attr(name)
        allowed = {"flockd", *filter(None, os.environ.get(RECIPE_MODULES_ENV, "").split(","))}
        if module_name.split(".")[0] not in allowed:
            raise RecipeError(f"recipe {name!r}: its package is not in ${RECIPE_MODULES_ENV} ({', '.join(sorted(allowed))})")
        return _recipe_at(name)
    if target is None:
        found = entry_points(group=ENTRY_POINT_GROUP).select(name=name)
        if not found:
            raise UnknownRecipe(f"no recipe {name!r} (known: {', '.join(recipe_names())})")
        target = next(iter(found)).value
    cls = _recipe_at(target)
    if cls.name != name:
        raise RecipeError(f"{target} is not a Recipe named {name!r}")
    return cls


def _module_attr(target: str) -> tuple[str, str]:
    module_name, _, attr = target.partition(":")
    if not (_DOTTED.fullmatch(module_name) and attr.isidentifier()):
        raise UnknownRecipe(f"recipe {target!r} is not module:attr")
    return module_name, attr


def _recipe_at(target: str) -> type[Recipe]:
    module_name, attr = _module_attr(target)
    try:
        cls = getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"recipe {target!r} does not load: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Recipe)) or inspect.isabstract(cls):
        raise RecipeError(f"{target} is not a concrete Recipe subclass")
    return cls


def load_recipe(name: str, config: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe called ``name`` with ``config`` overriding its defaults."""
    return recipe_class(name)(config)


def recipe_names() -> list[str]:
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(plugins | set(BUILTIN_RECIPES))
