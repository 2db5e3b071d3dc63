"""A task whose initial model is not its recipe's: the spec's `start` names a model by
its hash (a listed model, flockd.market.start; an Arena winner goes by the spec's
`competition` instead, flockd.arena.handoff), and every node takes that model from its
store, checked against the hash, instead of building the recipe's.

The registry's `model_init_hash` of such a task is the start model's hash, so the rounds'
lineage continues from it; what it continues from (a listing, its task) is recorded in
`start` beside the hash and is pinned on chain with the rest of the spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flockd.fl.tensors import Tensors
    from flockd.store import Store
    from flockd.tasks.abc import TaskWork

_HASH = re.compile(r"0x[0-9a-f]{64}")
MAX_START_KEYS = 8


def check_start(start: Mapping[str, Any]) -> None:
    """{} or a small JSON object with the start model's `model_hash` (0x + 64 lowercase hex)."""
    from flockd.tasks.spec import SpecError

    if not isinstance(start, Mapping):
        raise SpecError("start must be a JSON object")
    if start and not (isinstance(start.get("model_hash"), str) and _HASH.fullmatch(start["model_hash"])):
        raise SpecError("start: model_hash must be 0x and 64 lowercase hex digits")
    if len(start) > MAX_START_KEYS or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in start.values()):
        raise SpecError(f"start: at most {MAX_START_KEYS} keys, each a string or an integer")


def start_hash(start: Mapping[str, Any]) -> bytes | None:
    return bytes.fromhex(start["model_hash"][2:]) if start else None


def initial_state(worker: TaskWork, store: Store, start: Mapping[str, Any]) -> Tensors:
    """The task's model before round 0: the start model from the store (hash- and
    layout-checked) when the spec's `start` names one, else the worker's own. Blocking:
    run it in a worker thread. StoreError when the start model is not held (market_fetch it first)."""
    from flockd.fl.checkpoint import load_checkpoint_bytes
    from flockd.fl.tensors import shapes
    from flockd.store import StoreError

    digest = start_hash(start)
    recipes = worker.initial_model()
    if digest is None:
        return recipes
    data = store.get_model_bytes(digest)
    if data is None:
        raise StoreError(f"this node does not hold the task's start model 0x{digest.hex()} "
                         f"({dict(start)}): fetch it first (market_fetch)")
    return load_checkpoint_bytes(data, expected_shapes=shapes(recipes), expected_hash=digest)
