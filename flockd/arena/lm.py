"""Language-model competitions: the lm-lora recipe in the Arena.

What a submission is (the spec's ``submission``):
- ``"adapter"``: a LoRA adapter over the frozen base, in the recipe's delta layout
  (``layer.lora_A`` r x in, ``layer.lora_B`` out x r for every targeted linear layer);
  the model it stands for is the base with ``s * B A`` folded into each targeted weight,
  computed as the Alliance's global state is (``LoraRecipe.model_weights``: float64 sums
  in a fixed order, rounded once to float32), so every node gets the same bytes;
- ``"model"``: the full model's weights in the base model's layout.
A trainer trains a fresh adapter (A drawn from its seed) on its own text for its own
number of steps at its own learning rate; a ``"model"`` submission is that adapter folded.

The evaluation set is the creator's text file (``.jsonl`` of prompt/completion or chat
records, or ``.txt`` paragraphs, flockd.lm.text) carried in the safetensors envelope as
exactly one 1-D uint8 tensor named by the format (``jsonl`` or ``txt``) holding the file's
bytes. Its hash is ``keccak(b"flockd.arena.lm-eval.1" 0x00 format 0x00 bytes)``. A node
decodes it with strict bounds before any tokenising: the envelope's size, one tensor of the
right name and dtype, at most MAX_LM_EVAL_TEXT_BYTES bytes, strict UTF-8, at most
MAX_LM_EVAL_RECORDS records; then the recipe's reader and tokenizer.

The score: bits per character (the recipe's ``evaluate``, the code Alliance voters run:
flockd.lm.causal.score_text) mapped to the contract's higher-is-better integer by
``bpc_score``: ``max(0, 8_000_000 - round(bpc * 10**6))``. 8 bits per UTF-8 byte is what
the raw bytes cost, so a model worse than that (or diverged: infinite or NaN loss) scores
0; a millionth of a bit per character is one point.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from eth_utils import keccak
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from flockd.arena.spec import MAX_EVAL_BYTES, ArenaSpec, ArenaSpecError, TrainerSettings
from flockd.fl.data import DataError, DataSpec, check_file_size
from flockd.fl.recipe import canonical_json, limit_torch_threads, load_recipe
from flockd.fl.tensors import Shapes, Tensors, load_model_state, model_state, shapes
from flockd.lm.causal import TokenizedText, tokenize
from flockd.lm.text import Example, parse_examples

if TYPE_CHECKING:
    from flockd.lm.recipe import CausalLoraRecipe

LM_EVAL_FORMATS = ("jsonl", "txt")
MAX_LM_EVAL_TEXT_BYTES = 8 << 20
MAX_LM_EVAL_RECORDS = 20_000
MAX_LM_ENVELOPE_BYTES = MAX_LM_EVAL_TEXT_BYTES + 4096  # the text and safetensors' small header
EVAL_HASH_DOMAIN = b"flockd.arena.lm-eval.1"
BPC_SCALE = 10**6  # a point is a millionth of a bit per character
BPC_CEILING = 8  # bits per UTF-8 byte: no better than the raw bytes, score 0


def bpc_score(bpc: float) -> int:
    """The contract's integer for a bits-per-character figure: higher is better, monotone,
    0 for anything at or beyond 8 bits per character or not finite."""
    if not math.isfinite(bpc) or bpc < 0:
        return 0
    return max(0, BPC_CEILING * BPC_SCALE - round(bpc * BPC_SCALE))


@lru_cache(maxsize=4)
def _recipe(name: str, config_json: str) -> CausalLoraRecipe:
    import json

    from flockd.lm.recipe import CausalLoraRecipe

    recipe = load_recipe(name, json.loads(config_json))
    assert isinstance(recipe, CausalLoraRecipe)  # ArenaSpec checked it
    return recipe


def lm_recipe(spec: ArenaSpec) -> CausalLoraRecipe:
    """One recipe instance per spec (its base model and tokenizer load once)."""
    return _recipe(spec.recipe, canonical_json(spec.config).decode())


@lru_cache(maxsize=4)
def _base_weights(name: str, config_json: str, seed: int) -> Tensors:
    limit_torch_threads(1)
    return model_state(_recipe(name, config_json).build_model(seed))


def lm_base_weights(spec: ArenaSpec) -> Tensors:
    """The base model's weights (shared: callers copy before changing them)."""
    return _base_weights(spec.recipe, canonical_json(spec.config).decode(), spec.seed)


def lm_layout(spec: ArenaSpec) -> Shapes:
    base = shapes(lm_base_weights(spec))
    return lm_recipe(spec).delta_layout(base) if spec.submission == "adapter" else base


def lm_model_weights(spec: ArenaSpec, submission: Tensors) -> Tensors:
    """The full weights a submission stands for (an adapter folded into the base)."""
    if spec.submission == "model":
        return submission
    return lm_recipe(spec).model_weights({**lm_base_weights(spec), **submission})


def train_lm(spec: ArenaSpec, settings: TrainerSettings) -> Tensors:
    """A fresh adapter trained on the trainer's text (its file, else its domain of the demo
    corpus), folded into the base for a "model" submission."""
    from flockd.lm.lora import adapter_values, attached, fresh_adapter

    if settings.epochs is not None:
        raise ArenaSpecError("a language model trains for steps, not epochs")
    recipe = lm_recipe(spec)
    limit_torch_threads(1)
    weights = lm_base_weights(spec)
    model = recipe.build_model(spec.seed)
    try:
        train, _ = recipe.load_data(DataSpec(node_index=settings.node_index, num_nodes=settings.num_nodes,
                                             seed=spec.seed, path=settings.data_path))
    except DataError as exc:
        raise ArenaSpecError(f"training text: {exc}") from None
    config = recipe.lora()
    with attached(model, config, fresh_adapter(config, shapes(weights), settings.seed)) as wrapped:
        recipe.train(model, train, steps=settings.steps, lr=settings.lr, seed=settings.seed)
        adapter = adapter_values(wrapped)
    return adapter if spec.submission == "adapter" else recipe.model_weights({**weights, **adapter})


# -- the evaluation set -------------------------------------------------------------------

def lm_eval_hash(fmt: str, text: bytes) -> bytes:
    return keccak(EVAL_HASH_DOMAIN + b"\x00" + fmt.encode() + b"\x00" + text)


def encode_lm_eval(fmt: str, text: bytes) -> tuple[bytes, bytes]:
    """(the envelope, the set's hash) of a text file's bytes in format ``fmt``."""
    return st_save({fmt: np.frombuffer(text, dtype=np.uint8)}), lm_eval_hash(fmt, text)


def decode_lm_eval_text(data: bytes, max_chars: int) -> tuple[list[Example], bytes]:
    """The records of an evaluation-set envelope and its hash; every bound is checked
    before the text is parsed, and nothing is tokenised here."""
    if len(data) > min(MAX_LM_ENVELOPE_BYTES, MAX_EVAL_BYTES):
        raise ArenaSpecError(f"evaluation set: {len(data)} bytes, more than {MAX_LM_ENVELOPE_BYTES}")
    try:
        loaded = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise ArenaSpecError(f"evaluation set: not a safetensors file: {exc}") from None
    if len(loaded) != 1 or next(iter(loaded)) not in LM_EVAL_FORMATS:
        raise ArenaSpecError(f"evaluation set: expected one tensor named one of {list(LM_EVAL_FORMATS)}")
    ((fmt, array),) = loaded.items()
    if array.dtype != np.uint8 or array.ndim != 1 or not 0 < array.size <= MAX_LM_EVAL_TEXT_BYTES:
        raise ArenaSpecError(f"evaluation set: {fmt} must be 1 to {MAX_LM_EVAL_TEXT_BYTES} bytes (uint8)")
    raw = array.tobytes()
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ArenaSpecError("evaluation set: not UTF-8 text") from None
    if fmt == "jsonl" and sum(1 for line in text.splitlines() if line.strip()) > MAX_LM_EVAL_RECORDS:
        raise ArenaSpecError(f"evaluation set: more than {MAX_LM_EVAL_RECORDS} records")  # before parsing any
    try:
        examples = parse_examples(text, fmt, max_chars, "evaluation set", max_records=MAX_LM_EVAL_RECORDS)
    except DataError as exc:
        raise ArenaSpecError(str(exc)) from None
    return examples, lm_eval_hash(fmt, raw)


def decode_lm_eval(data: bytes, spec: ArenaSpec) -> tuple[TokenizedText, bytes]:
    """The evaluation set as the recipe scores it: checked, parsed, then tokenised."""
    recipe = lm_recipe(spec)
    examples, digest = decode_lm_eval_text(data, recipe.config["max_chars"])
    try:
        return tokenize(examples, recipe.tokenizer, recipe.config["seq_len"]), digest
    except DataError as exc:
        raise ArenaSpecError(f"evaluation set: {exc}") from None


def creator_lm_eval(spec: ArenaSpec, eval_path: str | None) -> tuple[bytes, bytes]:
    """The creator's text file as an envelope, checked as every validator will; with no
    file, the demo corpus's test split written as .txt paragraphs (public text: fine to
    try the flow, overfittable in a real competition)."""
    recipe = lm_recipe(spec)
    if eval_path is None:
        examples: list[Example] = []
        for index in range(len(recipe.config["domains"])):
            examples += recipe._domain_test_examples(DataSpec(seed=spec.seed), index)  # load_test's, untokenised
        fmt, text = "txt", "\n\n".join(e.text for e in examples).encode()
    else:
        path = Path(eval_path)
        fmt = path.suffix.removeprefix(".")
        if fmt not in LM_EVAL_FORMATS:
            raise ArenaSpecError(f"eval_path: expected a .jsonl or .txt file, not {path.name}")
        try:
            check_file_size(path, MAX_LM_EVAL_TEXT_BYTES)
            text = path.read_bytes()
        except (DataError, OSError) as exc:
            raise ArenaSpecError(f"eval_path: {exc}") from None
    envelope, digest = encode_lm_eval(fmt, text)
    decode_lm_eval(envelope, spec)  # refused here, not by every validator later
    return envelope, digest


# -- scoring ------------------------------------------------------------------------------

def score_lm(spec: ArenaSpec, submission: Tensors, eval_set: TokenizedText) -> int:
    """bpc_score of the submission's model on the evaluation text (the recipe's evaluate)."""
    recipe = lm_recipe(spec)
    limit_torch_threads(1)
    model = recipe.build_model(spec.seed)
    load_model_state(model, lm_model_weights(spec, submission))
    return bpc_score(recipe.evaluate(model, eval_set)["loss"])
