"""What a competition's members agree on off chain, and the CPU work on it.

The contract pins `recipe_hash` = keccak(canonical JSON of the ArenaSpec) and the base
model's hash (the recipe's model built from the spec's seed). Two kinds of recipe compete:

- a classifier over feature rows (flockd.fl.builtin.TorchClassifier): a submission is a
  full model of the base model's layout; its score is its accuracy on the evaluation set
  in millionths. The evaluation set travels as a safetensors checkpoint {"x": rows,
  "y": labels} (both float32, model inputs after the recipe's preprocessing), named by its
  model hash. This module.
- a causal language model with LoRA (the lm-lora recipe): a submission is an adapter or a
  full model, as the spec's `submission` says; its score is a monotone map of bits per
  character on the creator's text. flockd.arena.lm.

Every score is an integer, higher is better (as the contract ranks), computed by the same
code on every node so anyone can recompute it. The functions below the specs dispatch on
the recipe's kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from eth_utils import keccak

from flockd.fl.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    load_checkpoint_bytes,
    model_hash,
)
from flockd.fl.data import DataError, DataSpec, Split, load_user_data
from flockd.fl.recipe import canonical_json, limit_torch_threads, load_recipe
from flockd.fl.tensors import (
    Shapes,
    Tensors,
    layout_mismatch,
    load_model_state,
    model_state,
    shapes,
)

if TYPE_CHECKING:  # torch loads with a competition's recipe, not with the daemon
    from flockd.fl.builtin import TorchClassifier
    from flockd.lm.causal import TokenizedText
    from flockd.lm.recipe import CausalLoraRecipe

SCORE_SCALE = 10**6  # a classifier's score is accuracy in millionths
MAX_EVAL_BYTES = 64 * 2**20  # what a node accepts as an evaluation set (the p2p reply cap)
# What a submission is: "model", the full model in the base model's layout (the only kind
# for a classifier), or "adapter", a LoRA adapter over the frozen base (LM recipes only).
SUBMISSION_KINDS = ("model", "adapter")
DEFAULT_SUBMISSION = "model"
EvalSet = Union[Split, "TokenizedText"]  # what decode_eval_set gives score_model


class ArenaSpecError(ValueError):
    """A competition spec, an evaluation set or a submission is unusable; says why."""


@dataclass(frozen=True)
class ArenaSpec:
    recipe: str
    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # the base model's initialisation
    # Left out of the canonical JSON when "model", so a classifier competition's spec
    # hashes as it did before the field existed.
    submission: str = DEFAULT_SUBMISSION

    def __post_init__(self) -> None:
        if type(self.seed) is not int or not 0 <= self.seed < 2**63:
            raise ArenaSpecError("seed must be an integer in [0, 2**63)")
        if self.submission not in SUBMISSION_KINDS:
            raise ArenaSpecError(f"submission must be one of {list(SUBMISSION_KINDS)}, got {self.submission!r}")
        try:
            recipe = load_recipe(self.recipe, self.config)
        except Exception as exc:
            raise ArenaSpecError(f"bad arena spec: {exc}") from None
        from flockd.fl.builtin import TorchClassifier
        from flockd.lm.recipe import CausalLoraRecipe

        if isinstance(recipe, CausalLoraRecipe):
            return
        if not isinstance(recipe, TorchClassifier):
            raise ArenaSpecError(f"recipe {self.recipe!r}: the arena scores classifiers and LoRA language models only")
        if self.submission != "model":
            raise ArenaSpecError(f"recipe {self.recipe!r}: a classifier's submission is a full model")

    @property
    def is_lm(self) -> bool:
        from flockd.lm.recipe import CausalLoraRecipe

        return isinstance(load_recipe(self.recipe, self.config), CausalLoraRecipe)

    def _fields(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.submission == DEFAULT_SUBMISSION:
            del fields["submission"]
        return fields

    @property
    def spec_hash(self) -> bytes:
        return keccak(canonical_json(self._fields()))

    def to_json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(canonical_json(self._fields()))
        return loaded

    @classmethod
    def from_json(cls, data: Any) -> ArenaSpec:
        if not isinstance(data, dict) or "recipe" not in data:
            raise ArenaSpecError("an arena spec is a JSON object with a recipe")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ArenaSpecError(f"unknown arena spec keys {unknown}")
        if not isinstance(data["recipe"], str) or not isinstance(data.get("config", {}), dict):
            raise ArenaSpecError("recipe must be a string and config an object")
        if not isinstance(data.get("submission", DEFAULT_SUBMISSION), str):
            raise ArenaSpecError("submission must be a string")
        return cls(**data)

    def classifier(self) -> TorchClassifier:
        from flockd.fl.builtin import TorchClassifier

        recipe = load_recipe(self.recipe, self.config)
        if not isinstance(recipe, TorchClassifier):
            raise ArenaSpecError(f"recipe {self.recipe!r} is not a classifier")
        return recipe

    def lm(self) -> CausalLoraRecipe:
        """The LM recipe, one loaded instance per spec (its base loads once)."""
        from flockd.arena.lm import lm_recipe

        return lm_recipe(self)

    def base_model(self) -> Tensors:
        """The base model's full weights (its hash is the competition's base_model_hash)."""
        limit_torch_threads(1)  # several daemons share a few cores
        if self.is_lm:
            from flockd.arena.lm import lm_base_weights

            return dict(lm_base_weights(self))
        return model_state(self.classifier().build_model(self.seed))


@dataclass(frozen=True)
class TrainerSettings:
    """A trainer's own choices: its data and hyperparameters."""

    data_path: str | None = None  # .npz/.csv of raw features, .jsonl/.txt text; None: a part of the bundled data
    node_index: int = 0  # which part of the bundled data (with num_nodes); an LM: the demo corpus's domain
    num_nodes: int = 1
    epochs: int | None = None  # None: the recipe's (classifiers)
    steps: int | None = None  # None: the recipe's (optimiser steps)
    lr: float | None = None
    seed: int = 0  # minibatch order (an LM: also its fresh adapter's A)
    model_path: str | None = None  # a model or adapter trained elsewhere (safetensors): submitted as is


def train_submission(spec: ArenaSpec, settings: TrainerSettings) -> Tensors:
    """A submission trained from the base model on the trainer's data, or the trainer's
    own checkpoint when it names one (in the submission layout: base_layout)."""
    if settings.model_path is not None:
        try:
            return load_checkpoint(settings.model_path, expected_shapes=base_layout(spec))
        except (CheckpointError, OSError) as exc:
            raise ArenaSpecError(f"model_path: {exc}") from None
    if spec.is_lm:
        from flockd.arena.lm import train_lm

        return train_lm(spec, settings)
    recipe = spec.classifier()
    limit_torch_threads(1)
    model = recipe.build_model(spec.seed)
    data = DataSpec(node_index=settings.node_index, num_nodes=settings.num_nodes, seed=spec.seed, path=settings.data_path)
    train, _ = recipe.load_data(data)
    recipe.train(model, train, epochs=settings.epochs, steps=settings.steps, lr=settings.lr, seed=settings.seed)
    return model_state(model)


def creator_eval_set(spec: ArenaSpec, eval_path: str | None) -> tuple[bytes, bytes]:
    """(the evaluation set's bytes as it travels, its hash), from the creator's file."""
    if spec.is_lm:
        from flockd.arena.lm import creator_lm_eval

        return creator_lm_eval(spec, eval_path)
    return encode_eval_set(creator_eval_split(spec, eval_path))


def creator_eval_split(spec: ArenaSpec, eval_path: str | None) -> Split:
    """The creator's evaluation set: its own file, else the recipe's bundled held-out
    split (public data: fine for a demonstration, overfittable in a real competition)."""
    recipe = spec.classifier()
    if eval_path is None:
        split: Split = recipe.load_test(DataSpec(seed=spec.seed))
        return split
    raw = load_user_data(eval_path)
    x = np.ascontiguousarray(recipe.preprocess(raw.x, DataSpec()), dtype=np.float32)
    return Split(x, raw.y.astype(np.int64))


def encode_eval_set(split: Split) -> tuple[bytes, bytes]:
    """(the checkpoint bytes, the evaluation set's hash)."""
    state = {"x": split.x.astype(np.float32), "y": split.y.astype(np.float32)}
    return checkpoint_bytes(state), model_hash(state)


def decode_eval_set(data: bytes, spec: ArenaSpec) -> tuple[EvalSet, bytes]:
    """The evaluation set in `data` and its hash, checked against the recipe (the caller
    checks the hash against the chain)."""
    if spec.is_lm:
        from flockd.arena.lm import decode_lm_eval

        return decode_lm_eval(data, spec)
    try:
        state = load_checkpoint_bytes(data, max_bytes=MAX_EVAL_BYTES)
    except CheckpointError as exc:
        raise ArenaSpecError(f"evaluation set: {exc}") from None
    recipe = spec.classifier()
    if set(state) != {"x", "y"}:
        raise ArenaSpecError("evaluation set: expected exactly the tensors x and y")
    x, y = state["x"], state["y"]
    if x.ndim != 2 or x.shape[1] != recipe.num_features or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ArenaSpecError(f"evaluation set: x {x.shape} and y {y.shape} do not fit {recipe.name}")
    if not (np.all(y == np.round(y)) and y.min() >= 0 and y.max() < recipe.num_classes):
        raise ArenaSpecError(f"evaluation set: labels must be integers in [0, {recipe.num_classes})")
    return Split(x, y.astype(np.int64)), model_hash(state)


def load_submission(data: bytes, model_hash_: bytes, layout: Shapes) -> Tensors:
    """A submitted model or adapter from a peer, checked against its on-chain hash and the
    submission layout."""
    try:
        return load_checkpoint_bytes(data, expected_shapes=layout, expected_hash=model_hash_)
    except CheckpointError as exc:
        raise ArenaSpecError(f"submission: {exc}") from None


def read_submission(data: bytes, model_hash_: bytes, layout: Shapes) -> Tensors | None:
    """A submission's tensors from a peer; None when the bytes are the committed model
    (they hash to it) but not in the submission layout, which scores 0 for certain;
    ArenaSpecError when they are not the committed model (garbage, or another model)."""
    try:
        state = load_checkpoint_bytes(data, expected_hash=model_hash_)
    except CheckpointError as exc:
        raise ArenaSpecError(f"submission: {exc}") from None
    return None if layout_mismatch(layout, shapes(state)) is not None else state


def score_model(spec: ArenaSpec, state: Tensors, eval_set: EvalSet) -> int:
    """The score a validator reveals: a classifier's accuracy in millionths, an LM's
    flockd.arena.lm.bpc_score."""
    if spec.is_lm:
        from flockd.arena.lm import score_lm
        from flockd.lm.causal import TokenizedText

        assert isinstance(eval_set, TokenizedText)
        return score_lm(spec, state, eval_set)
    assert isinstance(eval_set, Split)
    recipe = spec.classifier()
    limit_torch_threads(1)
    model = recipe.build_model(spec.seed)
    load_model_state(model, state)
    try:
        accuracy = recipe.evaluate(model, eval_set)["accuracy"]
    except DataError as exc:
        raise ArenaSpecError(f"evaluation: {exc}") from None
    return round(accuracy * SCORE_SCALE)


def base_layout(spec: ArenaSpec) -> Shapes:
    """The names and shapes a submission holds: the base model's, or its adapter's."""
    if spec.is_lm:
        from flockd.arena.lm import lm_layout

        return lm_layout(spec)
    return shapes(spec.base_model())


def submission_weights(spec: ArenaSpec, state: Tensors) -> Tensors:
    """The full model weights a submission stands for: itself, or for an adapter the base
    with the adapter folded in (flockd.arena.lm.lm_model_weights)."""
    if spec.is_lm:
        from flockd.arena.lm import lm_model_weights

        return lm_model_weights(spec, state)
    return state
