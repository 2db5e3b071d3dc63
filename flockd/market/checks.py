"""Checks of what the chain and peers hand us, cheapest first.

A listing's strings come from whoever listed (bounded by the contract, hostile in
content); a model's bytes come from any peer. The bytes' size is checked against the
model's layout before they are parsed; they are parsed as safetensors only (no pickle,
no code), must be float32 and finite in the recipe's names and shapes, and must hash to
the listing's model hash before anything keeps or serves them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flockd.chain.client.market import MAX_DESCRIPTION_LEN, MAX_LICENCE_LEN, MAX_NAME_LEN, Listing
from flockd.fl.checkpoint import MAX_CHECKPOINT_BYTES, load_checkpoint_bytes
from flockd.fl.tensors import Tensors
from flockd.tasks.spec import SpecError, TaskSpec

if TYPE_CHECKING:
    from flockd.arena.spec import ArenaSpec

# A served model's id: what /v1/models shows and a client names in every request.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# The safetensors header (JSON: names, dtypes, shapes, offsets, metadata) around the data.
_HEADER_ALLOWANCE = 64 * 1024


class ListingError(ValueError):
    """A listing, or what is asked to be listed, cannot be used; the message says why."""


def check_listing_fields(name: str, description: str, licence: str) -> None:
    """What the contract bounds, checked before a transaction costs gas; and a name that is
    safe as a model id in URLs, pages and logs."""
    if not _usable_name(name):
        raise ListingError(f"name: 1..{MAX_NAME_LEN} of [A-Za-z0-9._-], starting with a letter or digit")
    for field, text, bound in (("description", description, MAX_DESCRIPTION_LEN), ("licence", licence, MAX_LICENCE_LEN)):
        if len(text.encode()) > bound:
            raise ListingError(f"{field}: at most {bound} bytes of UTF-8")


def spec_text(spec: TaskSpec) -> str:
    """The spec as listed: the canonical JSON whose keccak256 is the task's recipe hash."""
    return spec.canonical().decode()


class _Hashed(Protocol):
    @property
    def spec_hash(self) -> bytes: ...


_Spec = TypeVar("_Spec", bound=_Hashed)


def _parsed_spec(listing: Listing, from_json: Callable[[Any], _Spec], refused: type[Exception], what: str) -> _Spec:
    try:
        spec = from_json(json.loads(listing.spec))
    except (ValueError, TypeError, refused) as exc:
        raise ListingError(f"listing {listing.listing_id}: unusable {what}: {exc}") from None
    if spec.spec_hash != listing.recipe_hash:
        raise ListingError(f"listing {listing.listing_id}: its spec does not hash to its recipe hash")
    return spec


def listed_spec(listing: Listing) -> TaskSpec:
    """The spec a listing carries, parsed, and checked against its recipe hash."""
    return _parsed_spec(listing, TaskSpec.from_json, SpecError, "spec")


def arena_spec_text(spec: ArenaSpec) -> str:
    """A competition's spec as listed: the canonical JSON whose keccak256 is its recipe hash."""
    from flockd.fl.recipe import canonical_json

    return canonical_json(spec.to_json()).decode()


def listed_arena_spec(listing: Listing) -> ArenaSpec:
    """The competition spec a competition listing carries, parsed, and checked against its
    recipe hash (an ArenaSpec loads its recipe: run it in a worker thread when that costs)."""
    from flockd.arena.spec import ArenaSpec, ArenaSpecError

    return _parsed_spec(listing, ArenaSpec.from_json, ArenaSpecError, "competition spec")


def _usable_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and len(name) <= MAX_NAME_LEN


def check_listed_name(listing: Listing) -> None:
    if not _usable_name(listing.name):
        raise ListingError(f"listing {listing.listing_id}: its name is not a usable model id")


def check_model_size(spec: TaskSpec, base: Path | None = None) -> int:
    """The model's parameter count: a listed spec may ask for any size (digits-mlp with a
    hidden layer of 10^9), and a model no checkpoint can carry is refused before anything
    is allocated. Counted on the recipe's model built on torch's meta device (shapes only,
    no memory), or for a language model from its base's safetensors header (`base`: this
    node's own copy; from_pretrained cannot run on the meta device). Blocking (imports
    torch): run it in a worker thread."""
    import torch

    from flockd.fl.recipe import load_recipe

    try:
        if base is not None:
            parameters = _stored_parameters(base / "model.safetensors")
        else:
            with torch.device("meta"):
                model = load_recipe(spec.recipe, spec.config).build_model(spec.seed)
            parameters = sum(p.numel() for p in model.parameters())
    except Exception as exc:  # a recipe's own code: whatever it raises, the listing is unusable here
        raise ListingError(f"cannot size the model of this spec: {type(exc).__name__}: {exc}") from None
    if 4 * parameters > MAX_CHECKPOINT_BYTES:
        raise ListingError(f"the spec's model has {parameters:,} parameters: more than a checkpoint may carry "
                           f"({MAX_CHECKPOINT_BYTES // 4:,})")
    return parameters


def _stored_parameters(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as stored:  # reads the header only
        return sum(math.prod(stored.get_slice(name).get_shape()) for name in stored.keys())  # noqa: SIM118


def max_model_bytes(layout: Mapping[str, Sequence[int]]) -> int:
    """The largest checkpoint a model of this layout can be: float32 values and a header."""
    return 4 * sum(math.prod(shape) for shape in layout.values()) + _HEADER_ALLOWANCE


def check_model_bytes(data: bytes, layout: Mapping[str, tuple[int, ...]], model_hash: bytes) -> Tensors:
    """The model in `data`, or CheckpointError (FLError) saying what is wrong with it.
    Blocking (parses and hashes a whole model): run it in a worker thread."""
    return load_checkpoint_bytes(data, expected_shapes=layout, expected_hash=model_hash,
                                 max_bytes=max_model_bytes(layout))
