"""Global-model checkpoints as safetensors, and the model hash recorded on chain.

``model_hash(state) = keccak256(encode_state(state))``: the delta codec's canonical
encoding of the full state (kind ``model``, float32, names ascending). It depends only on
names, shapes and float32 values, so every node and process derives the same hash,
whatever file format or library version stored the weights. The safetensors file is
just transport and storage; loading it re-derives the hash.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from flockd.fl.codec import encode_state
from flockd.fl.errors import FLError
from flockd.fl.tensors import Tensors, canonical, layout_mismatch, shapes

MAX_CHECKPOINT_BYTES = 256 << 20


class CheckpointError(FLError):
    """A checkpoint was rejected; each reason has a subclass."""


class CheckpointTooLarge(CheckpointError): ...


class MalformedCheckpoint(CheckpointError): ...


class CheckpointMismatch(CheckpointError):
    """Names, shapes or dtypes differ from the model the checkpoint is meant for."""


class CheckpointHashMismatch(CheckpointError): ...


def model_hash(state: Mapping[str, np.ndarray]) -> bytes:
    return keccak(encode_state(state))


def checkpoint_bytes(
    state: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """The state as safetensors bytes; ``model_hash`` goes in the (informative) metadata."""
    tensors = canonical(state)
    meta = {**(metadata or {}), "model_hash": model_hash(tensors).hex()}
    return st_save(tensors, metadata=meta)


def load_checkpoint_bytes(
    data: bytes,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_hash: bytes | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> Tensors:
    """Parse and check a checkpoint; the hash is recomputed, never read from metadata."""
    if len(data) > max_bytes:
        raise CheckpointTooLarge(f"{len(data)} bytes > {max_bytes}")
    try:
        loaded = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise MalformedCheckpoint(f"not a safetensors file: {exc}") from None
    for name, array in loaded.items():
        if array.dtype != np.float32:
            raise CheckpointMismatch(f"{name}: dtype {array.dtype}, expected float32")
        if not np.isfinite(array).all():
            raise MalformedCheckpoint(f"{name} has NaN or infinite values")
    state = canonical(loaded)
    if expected_shapes is not None:
        problem = layout_mismatch(expected_shapes, shapes(state))
        if problem is not None:
            raise CheckpointMismatch(problem)
    if expected_hash is not None and model_hash(state) != expected_hash:
        raise CheckpointHashMismatch("the checkpoint does not hash to the expected model hash")
    return state


def save_checkpoint(
    path: str | Path, state: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Write atomically (temp file + rename) and return the model hash."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(checkpoint_bytes(state, metadata))
    os.replace(tmp, path)
    return model_hash(state)


def load_checkpoint(
    path: str | Path,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_hash: bytes | None = None,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> Tensors:
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise CheckpointTooLarge(f"{path} is larger than {max_bytes} bytes")
    return load_checkpoint_bytes(
        path.read_bytes(),
        expected_shapes=expected_shapes,
        expected_hash=expected_hash,
        max_bytes=max_bytes,
    )
