"""Model states and deltas as plain numpy: ``Tensors`` = name -> float32 array.

The FL core (codec, checkpoints, aggregation) works on numpy float32 arrays in canonical
name order (sorted by name), not on torch modules: numpy's element-wise float32/float64
arithmetic is IEEE-exact, so every node that does the same operations in the same order
gets the same bytes. Recipes' models therefore keep float32-only state dicts (no integer
buffers such as BatchNorm's ``num_batches_tracked``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from flockd.fl.errors import FLError

if TYPE_CHECKING:  # torch loads when a model is built, not with the codec (light daemons)
    import torch

Tensors = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]


class StateError(FLError):
    """Two states (or a state and a model) do not have the same names, shapes or dtype."""


def canonical(tensors: Mapping[str, np.ndarray]) -> Tensors:
    """Sorted by name, float32, C-contiguous, little-endian; refuses other dtypes."""
    out: Tensors = {}
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype.kind != "f":
            raise StateError(f"{name}: dtype {array.dtype} is not floating point")
        out[name] = np.asarray(array, dtype="<f4", order="C")  # keeps 0-d arrays 0-d
    return out


def shapes(tensors: Mapping[str, np.ndarray]) -> Shapes:
    return {name: tuple(tensors[name].shape) for name in sorted(tensors)}


def layout_mismatch(expected: Mapping[str, tuple[int, ...]], got: Shapes) -> str | None:
    """Why ``got`` does not have exactly the names and shapes of ``expected``, or None."""
    if set(expected) != set(got):
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        return f"missing tensors {missing}, unexpected {extra}"
    for name, shape in got.items():
        if tuple(expected[name]) != tuple(shape):
            return f"{name} has shape {tuple(shape)}, expected {tuple(expected[name])}"
    return None


def require_same_layout(expected: Mapping[str, tuple[int, ...]], got: Shapes, what: str) -> None:
    problem = layout_mismatch(expected, got)
    if problem is not None:
        raise StateError(f"{what}: {problem}")


def model_state(model: torch.nn.Module) -> Tensors:
    """A copy of the model's state dict as canonical float32 numpy arrays."""
    import torch

    state = model.state_dict()
    for name, tensor in state.items():
        if tensor.dtype != torch.float32:
            raise StateError(f"{name}: model tensors must be float32, got {tensor.dtype}")
    return canonical({name: t.detach().cpu().numpy().copy() for name, t in state.items()})


def load_model_state(model: torch.nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Load ``tensors`` into ``model`` in place; names and shapes must match exactly."""
    import torch

    require_same_layout(shapes(model_state(model)), shapes(tensors), "model state")
    model.load_state_dict(
        {name: torch.from_numpy(np.array(a, dtype=np.float32)) for name, a in tensors.items()},
        strict=True,
    )


def subtract(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> Tensors:
    """``new - base`` per tensor, in float32 (the delta a proposer sends)."""
    require_same_layout(shapes(base), shapes(new), "delta")
    return {name: np.subtract(new[name], base[name], dtype=np.float32) for name in sorted(new)}


def add(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Tensors:
    """``base + delta`` per tensor, in float32 (applying an aggregated delta)."""
    require_same_layout(shapes(base), shapes(delta), "delta")
    return {name: np.add(base[name], delta[name], dtype=np.float32) for name in sorted(base)}


def flat(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The tensors as one float64 vector, in name order."""
    if not tensors:
        return np.zeros(0, np.float64)
    return np.concatenate([np.asarray(tensors[name], np.float64).reshape(-1) for name in sorted(tensors)])


def squared_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The sum of squares of every value, exactly rounded (float64 squares of float32
    values are exact, ``math.fsum`` rounds once), so every node gets the same number."""
    return math.fsum(
        itertools.chain.from_iterable(
            np.square(tensors[name], dtype=np.float64).ravel().tolist() for name in sorted(tensors)
        )
    )
