"""LoRA adapters on any torch model's linear layers (through peft), and their exact aggregation.

A LoRA adapter on a linear layer ``X`` (weight ``W``, out x in) is two tensors,
``X.lora_A`` (r x in) and ``X.lora_B`` (out x r); the layer computes
``W x + s * B (A x)`` with ``s = alpha / r``. Only the adapter travels. Training runs on
peft's LoRA layers (``attached``: ``peft.LoraConfig``, ``get_peft_model``, its adapter
state dict); the wire layout above is peft's ``lora_A.weight`` / ``lora_B.weight`` under
flockd's names, so the codec and the delta layout do not depend on peft.

The trap: FedAvg on the factors (mean of the As times mean of the Bs, as FlowerTune,
OpenFedLLM and FLock's SDK do) is not the mean of the updates. flockd expands every
adapter to its update of ``W`` (``expand_update``) before any rule sees it, so FedAvg is
the exact mean of the updates (and the median, trimmed mean and Krum judge updates, not
factors). ``factor_mean`` is the naive way, kept to measure its error.

The global state carries one adapter across rounds (as FedEx-LoRA does), because a fresh
adapter each round restarts its random A and learns less at the same budget
(docs/lm.md): the state is the residual weights ``W`` plus the carried ``A``, ``B``, and
the model is ``W + s * B A`` (``model_weights``). Every node trains from the carried
adapter; its update is ``s * (B_i A_i - B A)``. After a round the carried adapter becomes
the task's rule applied to the accepted adapters' factors, and ``W`` takes the residual,
so the model moves by exactly the rule's aggregate of the updates (``next_state``).

Determinism: products sum the r outer products in a fixed order in float64 (each
product of two float32 values is exact in float64), never through BLAS, and every
addition is element-wise in float64 rounded once to float32, so every node gets the same
bytes. A fresh adapter's A is drawn from a numpy PCG64 stream (the same on every
platform); B starts at zero, so a fresh adapter changes nothing.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flockd.fl.aggregate import aggregate
from flockd.fl.codec import Delta
from flockd.fl.errors import FLError
from flockd.fl.recipe import BadRecipeConfig, LocalData, Recipe, TrainStats
from flockd.fl.tensors import Shapes, Tensors, load_model_state, shapes

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

A_SUFFIX, B_SUFFIX = ".lora_A", ".lora_B"
_INIT_STREAM = 7  # the PCG64 stream of a fresh adapter's A, beside the data's streams
# peft's adapter state dict names ``layer.lora_A`` as ``base_model.model.layer.lora_A.weight``.
_PEFT_PREFIX = "base_model.model."


class LoraError(FLError):
    """A LoRA configuration or adapter does not fit the model."""


@dataclass(frozen=True)
class LoraConfig:
    """``targets``: linear layers whose dotted name ends with one of these (``q_proj``
    matches ``model.layers.0.self_attn.q_proj``)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (isinstance(self.rank, int) and 1 <= self.rank <= 1024):
            raise LoraError(f"LoRA rank must be an integer in [1, 1024], got {self.rank!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise LoraError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise LoraError("LoRA needs at least one target module name")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def targeted(self, model_layout: Shapes) -> list[str]:
        """The targeted layers (names without ``.weight``), sorted; each a 2-D weight."""
        found = sorted(
            name.removesuffix(".weight")
            for name, shape in model_layout.items()
            if name.endswith(".weight") and len(shape) == 2
            and any(name.removesuffix(".weight").split(".")[-1] == t for t in self.targets)
        )
        if not found:
            raise LoraError(f"no linear layer of the model is named {list(self.targets)}")
        return found

    def adapter_layout(self, model_layout: Shapes) -> Shapes:
        """The names and shapes of an adapter for a model of ``model_layout``."""
        out: Shapes = {}
        for layer in self.targeted(model_layout):
            rows, cols = model_layout[layer + ".weight"]
            out[layer + A_SUFFIX] = (self.rank, cols)
            out[layer + B_SUFFIX] = (rows, self.rank)
        return dict(sorted(out.items()))


def fresh_adapter(config: LoraConfig, model_layout: Shapes, seed: int) -> Tensors:
    """A zero-effect adapter: A uniform in ±1/sqrt(in) (peft's default), B zero."""
    rng = np.random.Generator(np.random.PCG64([seed, _INIT_STREAM]))
    out: Tensors = {}
    for name, shape in config.adapter_layout(model_layout).items():
        if name.endswith(A_SUFFIX):
            bound = 1.0 / math.sqrt(shape[1])
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def products(adapter: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """Each adapted layer's ``scale * B @ A`` in float64, by weight name."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(adapter):
        if not name.endswith(A_SUFFIX):
            continue
        layer = name.removesuffix(A_SUFFIX)
        a = adapter[name].astype(np.float64)
        b = adapter[layer + B_SUFFIX].astype(np.float64)
        product = np.zeros((b.shape[0], a.shape[1]), np.float64)
        with np.errstate(over="ignore", invalid="ignore"):  # a hostile adapter: the norm bound refuses inf
            for k in range(a.shape[0]):  # fixed order, element-wise: the same bytes on every node
                product += np.multiply.outer(b[:, k], a[k, :])
            out[layer + ".weight"] = product * scale
    return out


def expand(adapter: Mapping[str, np.ndarray], scale: float) -> Tensors:
    """Each adapted layer's weight update ``scale * B @ A`` (float32), by weight name."""
    with np.errstate(over="ignore", invalid="ignore"):
        return {name: value.astype(np.float32) for name, value in products(adapter, scale).items()}


def split_state(state: Mapping[str, np.ndarray]) -> tuple[Tensors, Tensors]:
    """A LoRA global state's residual weights and its carried adapter (empty when the
    state carries none, e.g. a base model's own weights)."""
    weights: Tensors = {}
    adapter: Tensors = {}
    for name, value in state.items():
        (adapter if name.endswith((A_SUFFIX, B_SUFFIX)) else weights)[name] = value
    return weights, adapter


def factor_mean(adapters: Sequence[Mapping[str, np.ndarray]]) -> Tensors:
    """The naive aggregate: every factor averaged on its own (not the mean of updates)."""
    return {
        name: (np.sum([a[name].astype(np.float64) for a in adapters], axis=0) / len(adapters)).astype(np.float32)
        for name in sorted(adapters[0])
    }


@contextmanager
def attached(model: torch.nn.Module, config: LoraConfig, adapter: Tensors) -> Iterator[PeftModel]:
    """``model`` wrapped by peft (``get_peft_model``) with ``adapter`` loaded into LoRA
    layers on exactly the adapter's layers, every other parameter frozen; yields the
    ``PeftModel``. peft replaces the targeted linear layers in place, so ``model`` itself
    runs the adapter, and its trainable parameters are the adapter's alone: any training
    loop over ``model.parameters()`` trains the adapter. On exit peft's ``unload``
    puts the original layers back and ``requires_grad`` is restored: the model is exactly
    as before."""
    import peft
    import torch

    layers = sorted(name.removesuffix(A_SUFFIX) for name in adapter if name.endswith(A_SUFFIX))
    modules = dict(model.named_modules())
    for layer in layers:  # peft would adapt an embedding or a conv too, in another layout
        if not isinstance(modules.get(layer), torch.nn.Linear):
            raise LoraError(f"{layer} is not a linear layer of the model")
    # A regular expression peft full-matches: exactly the layers of our layout (a list would
    # also match any module whose name ends with one of them). No dropout. The LoRA layers
    # are created empty (low_cpu_mem_usage) and filled from ``adapter``, so peft's own
    # initialisation draws nothing from torch's global generator.
    peft_config = peft.LoraConfig(
        r=config.rank, lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft divides it by r: a float is fine
        target_modules="|".join(re.escape(layer) for layer in layers),
        lora_dropout=0.0, bias="none",
    )
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    # peft asks a transformers model the deprecated is_gradient_checkpointing: noise in every log.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    wrapped = peft.get_peft_model(model, peft_config, low_cpu_mem_usage=True)
    try:
        missing, unexpected = peft.set_peft_model_state_dict(  # type: ignore[attr-defined]  # torch's _IncompatibleKeys
            wrapped,
            {_PEFT_PREFIX + name + ".weight": torch.from_numpy(np.array(value, np.float32)) for name, value in adapter.items()},
            low_cpu_mem_usage=True,
        )
        if unexpected or any(".lora_" in key for key in missing):
            raise LoraError(f"the adapter does not fit the model: {unexpected or missing}")
        yield wrapped
    finally:
        wrapped.unload()
        for p, wanted in frozen:
            p.requires_grad_(wanted)


def adapter_values(wrapped: PeftModel) -> Tensors:
    """The trained adapter in the delta layout (``layer.lora_A``, ``layer.lora_B``), from
    peft's adapter state dict."""
    import peft

    out: Tensors = {}
    for key, value in peft.get_peft_model_state_dict(wrapped).items():
        if not (key.startswith(_PEFT_PREFIX) and key.endswith(".weight")):
            raise LoraError(f"peft's adapter state has an unexpected key {key!r}")
        out[key.removeprefix(_PEFT_PREFIX).removesuffix(".weight")] = value.detach().cpu().numpy().astype(np.float32, copy=True)
    return dict(sorted(out.items()))


class LoraRecipe(Recipe):
    """A recipe whose deltas are LoRA adapters (config keys ``lora_rank``, ``lora_alpha``,
    ``lora_targets``): each round a node trains the global state's carried adapter on its
    residual weights and sends it; the rules combine the expanded updates (see the module
    docstring). Put it before the model's recipe among the bases:
    ``class X(LoraRecipe, SomeRecipe)``."""

    def lora(self) -> LoraConfig:
        c = self.config
        targets = c["lora_targets"]
        if not isinstance(targets, list):
            raise LoraError("lora_targets must be a list of module names")
        return LoraConfig(rank=c["lora_rank"], alpha=float(c["lora_alpha"]), targets=tuple(targets))

    def validate_config(self) -> None:
        super().validate_config()
        try:
            self.lora()
        except (LoraError, TypeError, ValueError) as exc:
            raise BadRecipeConfig(f"{self.name}: {exc}") from None

    def delta_layout(self, model_layout: Shapes) -> Shapes:
        return self.lora().adapter_layout(model_layout)

    def local_update(
        self, model: torch.nn.Module, base: Tensors, data: LocalData, *, seed: int
    ) -> tuple[Tensors, TrainStats]:
        config = self.lora()
        weights, adapter = split_state(base)
        load_model_state(model, weights)
        with attached(model, config, adapter or fresh_adapter(config, shapes(weights), seed)) as wrapped:
            stats = self.train(model, data, seed=seed)
            return adapter_values(wrapped), stats

    def expand_update(self, base: Tensors, delta: Tensors) -> Tensors:
        """``s * (B_i A_i - B A)``: the change from the model ``base`` stands for to the
        proposer's, ``B A`` being ``base``'s carried adapter."""
        scale = self.lora().scale
        carried = products(split_state(base)[1], scale)
        with np.errstate(over="ignore", invalid="ignore"):
            return {
                name: (value - carried[name] if name in carried else value).astype(np.float32)
                for name, value in products(delta, scale).items()
            }

    def initial_state(self, weights: Tensors, seed: int) -> Tensors:
        return {**weights, **fresh_adapter(self.lora(), shapes(weights), seed)}

    def model_weights(self, state: Tensors) -> Tensors:
        weights, adapter = split_state(state)
        carried = products(adapter, self.lora().scale)
        return {
            name: (value.astype(np.float64) + carried[name]).astype(np.float32) if name in carried else value
            for name, value in weights.items()
        }

    def next_state(self, state: Tensors, update: Tensors, deltas: Sequence[Delta], rule: str) -> Tensors:
        """The carried adapter becomes ``rule`` over the accepted adapters' factors; the
        residual weights take ``update`` plus the old product less the new one."""
        scale = self.lora().scale
        weights, carried = split_state(state)
        adapter = aggregate(list(deltas), rule) if deltas else carried
        before, after = products(carried, scale), products(adapter, scale)
        out: Tensors = dict(adapter)
        for name, value in weights.items():
            moved = value.astype(np.float64) + update[name]
            if name in after:
                moved += before.get(name, 0.0) - after[name]
            out[name] = moved.astype(np.float32)
        return out


def lora_keys(rank: int, alpha: float, targets: Sequence[str]) -> dict[str, Any]:
    """The config keys of ``LoraRecipe`` with these defaults."""
    return {"lora_rank": rank, "lora_alpha": alpha, "lora_targets": list(targets)}
