"""``lm-lora``: federated LoRA on any causal LM in Hugging Face format, loaded from the
local base store only.

The base directory is checked first (``flockd.lm.base``: required files, no code, no
pickles, the task's hash); then transformers reads it with ``local_files_only=True``,
``trust_remote_code=False`` and ``use_safetensors=True``, offline, in float32, and the
``tokenizers`` library reads ``tokenizer.json``. transformers is imported only here and
only when a base loads, so a daemon that never runs an LM task never imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flockd.lm.base import BaseModelError
from flockd.lm.recipe import CAUSAL_LORA_DEFAULTS, CausalLoraRecipe

if TYPE_CHECKING:
    import torch


class HFTokenizer:
    """``tokenizer.json`` through the tokenizers library; no special tokens added on
    encode (the recipe puts the bos itself)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = json.loads((path / "config.json").read_text())
        bos = config.get("bos_token_id")
        pad = config.get("pad_token_id", config.get("eos_token_id", bos))
        if not (isinstance(bos, int) and isinstance(pad, int)):
            raise BaseModelError(f"{path / 'config.json'} names no integer bos_token_id and pad_token_id")
        self.bos_id, self.pad_id = bos, pad

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def load_causal_lm(path: Path) -> torch.nn.Module:
    """The model of a checked base directory: float32, CPU, evaluation mode, no KV cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a hub
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype=torch.float32
    )
    model.config.use_cache = False
    model.eval()
    return model  # type: ignore[no-any-return]


def greedy_text(model: torch.nn.Module, tokenizer: HFTokenizer, prompt: str, new_tokens: int) -> str:
    """``prompt`` continued by ``new_tokens`` greedy tokens (deterministic), the new text only."""
    import torch

    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(prompt)]])
    model.eval()
    with torch.no_grad():
        for _ in range(new_tokens):
            out = model(ids)
            logits = getattr(out, "logits", out)
            ids = torch.cat([ids, logits[:, -1:, :].argmax(dim=-1)], dim=1)
    return tokenizer.decode(ids[0, -new_tokens:].tolist())


class LmLora(CausalLoraRecipe):
    """Federated LoRA on a causal LM from the base store (see ``flockd.lm.recipe``)."""

    name = "lm-lora"
    default_config: ClassVar[dict[str, Any]] = CAUSAL_LORA_DEFAULTS

    def load_base(self, path: Path) -> tuple[torch.nn.Module, HFTokenizer]:
        return load_causal_lm(path), HFTokenizer(path)
