"""``flockd lm build-base``: a small Llama base model built here, with no download.

1. A byte-level BPE tokenizer (the ``tokenizers`` library) is trained on
   ``pydoc_data.topics`` (the standard library's language reference topics).
2. A ``LlamaForCausalLM`` of a few million parameters (tied embeddings) is initialised
   from a seed and pretrained for ``steps`` Adam steps on the same text, in float32 on
   CPU with a fixed number of torch threads.
3. ``save_pretrained`` writes the Hugging Face directory (config.json,
   generation_config.json, model.safetensors) beside tokenizer.json, and the directory is
   imported into the local base store under its hash.

The fine-tuning domains (``flockd.lm.corpus.DOMAINS``: package docstrings) are not in the
pretraining text, so their test splits are never seen before the federation trains.

Cached: the store keeps, per build parameters and library versions, the hash it built
(``<store>/.builds/<key>``); asking again returns that base without training. A rebuild
with the same parameters, versions and thread count on this machine gives the same bytes
(``tests/test_lm_hf.py`` builds twice); on another CPU, float rounding inside torch's
kernels may differ, so a task's nodes share the built directory (``flockd lm
import-base``) rather than each building their own: the hash on chain refuses a mismatch.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Nothing heavy at import: the command line builds its options from BaseBuild.

SPECIAL_TOKENS = ("<|bos|>", "<|pad|>", "<|end|>")  # ids 0, 1, 2
_BATCH_STREAM = 17


@dataclass(frozen=True)
class BaseBuild:
    vocab: int = 4096
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 768
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 300
    lr: float = 3e-3
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class BuiltBase:
    base_hash: bytes
    path: Path
    parameters: int
    held_out_bpc: float | None  # bits per character on held-out pydoc text (None: cached)
    cached: bool


def build_key(build: BaseBuild) -> str:
    import tokenizers
    import torch
    import transformers
    from eth_utils import keccak

    from flockd.fl.recipe import canonical_json

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    return keccak(canonical_json({"build": asdict(build), "versions": versions})).hex()


def build_base(build: BaseBuild = BaseBuild()) -> BuiltBase:
    """The base of ``build`` from the store, built and imported there first if missing."""
    from flockd.lm.base import bases_dir, import_base, resolve_base

    record = bases_dir() / ".builds" / build_key(build)
    if record.is_file():
        digest = bytes.fromhex(record.read_text().strip())
        path = resolve_base(digest)
        return BuiltBase(digest, path, _parameter_count(path), None, cached=True)
    with tempfile.TemporaryDirectory(prefix="flockd-base-") as work:
        out = Path(work) / "base"
        bpc = _train(build, out)
        digest, path = import_base(out)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(digest.hex())
    return BuiltBase(digest, path, _parameter_count(path), bpc, cached=False)


def _train(build: BaseBuild, out: Path) -> float:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from flockd.lm.causal import Adam, batch_tensors, score_text, target_losses, tokenize
    from flockd.lm.corpus import pydoc_topics
    from flockd.lm.hf import HFTokenizer
    from flockd.lm.text import carve, paragraphs

    hf_logging.disable_progress_bar()

    examples = paragraphs(pydoc_topics(), 4 * build.seq_len)
    train_text, held_out, _ = carve(examples, build.seed, 0.05, 0.0)
    out.mkdir(parents=True)
    tokenizer_file = _train_tokenizer(build, [e.text for e in train_text])
    config = LlamaConfig(
        vocab_size=build.vocab, hidden_size=build.hidden, intermediate_size=build.ffn,
        num_hidden_layers=build.layers, num_attention_heads=build.heads, num_key_value_heads=build.heads,
        max_position_embeddings=max(2048, build.seq_len), tie_word_embeddings=True,
        bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(build.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(build.seed)
            model = LlamaForCausalLM(config)
        model.config.use_cache = False
        model.save_pretrained(out, safe_serialization=True)  # config first: the tokenizer reads ids from it
        shutil.copyfile(tokenizer_file, out / "tokenizer.json")
        tokenizer = HFTokenizer(out)
        text = tokenize(train_text, tokenizer, build.seq_len)
        optimiser = Adam([p for p in model.parameters() if p.requires_grad], build.lr)
        rng = np.random.Generator(np.random.PCG64([build.seed, _BATCH_STREAM]))
        model.train()
        for step in range(build.steps):
            optimiser.lr = build.lr * _schedule(step, build.steps)
            chosen = rng.choice(len(text), size=min(build.batch_size, len(text)), replace=False)
            ids, mask = batch_tensors([text.windows[i] for i in sorted(chosen)], tokenizer.pad_id)
            losses, _ = target_losses(model, ids, mask)
            model.zero_grad(set_to_none=True)
            losses.mean().backward()
            optimiser.step()
        model.eval()
        model.save_pretrained(out, safe_serialization=True)
        return score_text(model, tokenize(held_out, tokenizer, build.seq_len), tokenizer.pad_id, 32).bits_per_character
    finally:
        torch.set_num_threads(threads)
        Path(tokenizer_file).unlink(missing_ok=True)


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to a tenth."""
    warm = max(1, steps // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _train_tokenizer(build: BaseBuild, texts: list[str]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=build.vocab, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    handle, name = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    tokenizer.save(name)
    return name


def _parameter_count(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="numpy") as handle:
        return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
