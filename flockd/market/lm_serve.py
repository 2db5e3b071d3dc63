"""A listed language model made servable: its checkpoint (an lm-lora global state, the
residual weights and the carried LoRA adapter) folded into plain model weights and
written, over the base it was trained from, as a Hugging Face directory the LM server
loads (flockd.serve.lm).

The base comes from this node's own base store by the spec's `base_hash` (checked files,
no remote code, no pickles); a node without it refuses the listing and says which base to
build or copy. The directory is written afresh from the hash-checked checkpoint on every
load (into a staging directory, then moved in whole), so a directory left on disk is
never trusted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flockd.market.checks import ListingError
from flockd.serve.lm import ServedLM
from flockd.tasks.spec import TaskSpec


def is_language_model(recipe_name: str, config: dict[str, Any]) -> bool:
    from flockd.fl.recipe import load_recipe
    from flockd.lm.recipe import CausalLoraRecipe

    return isinstance(load_recipe(recipe_name, config), CausalLoraRecipe)


def held_base(spec: TaskSpec) -> Path | None:
    """The checked base directory a language model's spec names (None for other recipes);
    ListingError when this node does not hold that base."""
    from flockd.lm.base import BaseModelError, parse_hash, resolve_base

    if not is_language_model(spec.recipe, spec.config):
        return None
    wanted = spec.config.get("base_hash")
    try:
        return resolve_base(parse_hash(wanted))
    except BaseModelError as exc:
        raise ListingError(f"this node lacks the base model {wanted} the listed model was trained from: {exc}") from None


def export_listed_lm(record: dict[str, Any], checkpoint: Path, exports: Path) -> Path:
    """`exports/<model hash>`: the record's model as a Hugging Face directory. Blocking
    (loads the base and the checkpoint): run it in a worker thread."""
    from flockd.fl.checkpoint import load_checkpoint
    from flockd.fl.recipe import load_recipe
    from flockd.fl.tensors import model_state, shapes
    from flockd.lm.base import export_model_dir
    from flockd.lm.recipe import CausalLoraRecipe

    spec = TaskSpec.from_json(record["spec"])
    recipe = load_recipe(spec.recipe, spec.config)
    base = held_base(spec)
    if base is None or not isinstance(recipe, CausalLoraRecipe):
        raise ListingError(f"listing {record['listing_id']}: {spec.recipe} is not a language model recipe")
    digest = bytes.fromhex(record["model_hash"][2:])
    layout = shapes(recipe.initial_state(model_state(recipe.build_model(spec.seed)), spec.seed))
    state = load_checkpoint(checkpoint, expected_shapes=layout, expected_hash=digest)
    exports.mkdir(parents=True, exist_ok=True)
    out = exports / digest.hex()
    staging = exports / f".{digest.hex()}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    export_model_dir(base, recipe.model_weights(state), staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def served_listed_lm(record: dict[str, Any], checkpoint: Path, exports: Path) -> ServedLM:
    """The record's language model for /v1/completions and /v1/chat/completions, under its
    listed name. Blocking: run it in a worker thread."""
    from flockd.market.held import listing_of

    model = ServedLM(record["name"], export_listed_lm(record, checkpoint, exports))
    model.listing = listing_of(record)
    return model

