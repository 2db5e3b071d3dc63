"""A causal language model served from a Hugging Face-format directory.

The directory is checked first as a base is (``flockd.lm.base.check_base_dir``: the
required files, no remote code, no pickles), then loaded with ``local_files_only=True``
and never ``trust_remote_code`` (``flockd.lm.hf.load_causal_lm``). Generation is a plain
token loop with the model's KV cache, run in a worker thread: between two tokens it asks
``cancelled()`` and stops when the client is gone, and it hands each new piece of text to
``on_text`` (the stream).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flockd.serve.errors import bad_request
from flockd.serve.requests import Sampling

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from flockd.lm.hf import HFTokenizer

DEFAULT_CONTEXT = 2048  # when config.json names no max_position_embeddings


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of text or a stop sequence), "length", "cancelled"


class ServedLM:
    kind = "causal-lm"

    def __init__(self, name: str, path: str | Path) -> None:
        from flockd.lm.base import check_base_dir
        from flockd.lm.hf import HFTokenizer, load_causal_lm

        self.name = name
        self.path = Path(path)
        self.files_hash = check_base_dir(self.path)  # before transformers reads anything
        self.model = load_causal_lm(self.path)
        self.tokenizer: HFTokenizer = HFTokenizer(self.path)
        self._prompt_tokenizer = _literal_tokenizer(self.path)
        config = json.loads((self.path / "config.json").read_text())
        context = config.get("max_position_embeddings", DEFAULT_CONTEXT)
        self.context = context if isinstance(context, int) and context > 1 else DEFAULT_CONTEXT
        eos = config.get("eos_token_id")
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else [])
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.listing: dict[str, Any] | None = None  # a market model's listing and verified lineage
        self._lock = threading.Lock()  # one generation at a time on this model

    def encode_prompt(self, prompt: str) -> list[int]:
        """bos, then the prompt's text: a special token's name in it ("<|end|>", from a
        client or a retrieved document) is text, never that token."""
        return [self.tokenizer.bos_id, *self._prompt_tokenizer.encode(prompt, add_special_tokens=False).ids]

    def budget(self, prompt_ids: list[int], sampling: Sampling, default: int) -> int:
        """How many tokens to generate; refuses what cannot fit in the model's context."""
        if len(prompt_ids) >= self.context:
            raise bad_request(
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.context}",
                "messages", "context_length_exceeded",
            )
        room = self.context - len(prompt_ids)
        if sampling.max_tokens is None:
            return min(default, room)
        if sampling.max_tokens > room:
            raise bad_request(
                f"max_tokens is {sampling.max_tokens}, but the prompt ({len(prompt_ids)} tokens) leaves room for "
                f"{room} in this model's context of {self.context}",
                "max_tokens", "context_length_exceeded",
            )
        return sampling.max_tokens

    def generate(
        self,
        prompt_ids: list[int],
        max_new: int,
        sampling: Sampling,
        *,
        cancelled: Callable[[], bool] = lambda: False,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Blocking: run it in a worker thread."""
        import torch

        with self._lock, torch.no_grad():
            generator = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else _fresh_seed())
            new: list[int] = []
            sent = final = ""
            finish = "length"
            ids = torch.tensor([prompt_ids])
            past = None
            while len(new) < max_new:
                if cancelled():
                    finish = "cancelled"
                    break
                out = self.model(ids, cache=past, use_cache=True, logits_to_keep=1)
                past = out.cache
                token = _pick(out.logits[0, -1], sampling, generator)
                if token in self.eos_ids and not sampling.ignore_eos:
                    finish = "stop"
                    break
                new.append(token)
                ids = torch.tensor([[token]])
                text = self.tokenizer.decode(new)
                cut = _stop_at(text, sampling.stop)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                elif text.endswith("\ufffd"):
                    continue  # half a UTF-8 character: wait for the rest
                # Hold back what could be the start of a stop sequence, so none is streamed.
                ready = text if finish == "stop" else text[: max(len(sent), len(text) - _held_back(sampling))]
                if on_text is not None and len(ready) > len(sent):
                    on_text(ready[len(sent):])
                sent = ready
                final = text
                if finish == "stop":
                    break
            if on_text is not None and len(final) > len(sent):
                on_text(final[len(sent):])
            return Generation(final, len(prompt_ids), len(new), finish)


def _literal_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.encode_special_tokens = True
    return tokenizer


def _pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    import torch

    if sampling.temperature == 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < sampling.top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _held_back(sampling: Sampling) -> int:
    return max((len(s) - 1 for s in sampling.stop), default=0)


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _fresh_seed() -> int:
    import secrets

    return secrets.randbits(63)
