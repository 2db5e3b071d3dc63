"""Federated LoRA fine-tuning of a causal language model: the recipe, less the loader.

``CausalLoraRecipe`` does everything but read a base directory into a model and a
tokenizer (``load_base``, a subclass's): the base is found by the hash in the config
(``flockd.lm.base``: refused when missing, carrying code or pickles, or hashing to
another value), a node's text is read and carved (``flockd.lm.text``), every round trains
a fresh LoRA adapter for ``steps`` Adam steps on the node's train split (``flockd.lm.lora``,
``flockd.lm.causal``), and a model is measured in bits per character on target text
(``Metrics``: ``loss`` = bits per character, ``accuracy`` = top-1 next-token accuracy on
target tokens). A voter's ``accepts`` therefore bounds the rise in bits per character.

Data: a node's own ``.jsonl`` / ``.txt`` file (``--data``), carved into train and
validation (no test split: the node measures on validation), or, with no file, the demo
corpus: domain ``domains[node_index % len(domains)]`` (``flockd.lm.corpus``), carved into
train / validation / test; the test split of the task is every domain's test part, and
its root set (``root_rows``, for the root votes) an equal share of every domain's
train and validation parts, the same on every node; a node's own text has none.
Everything runs on CPU in float32 with one torch thread, so scores and trained adapters
repeat exactly on a node (training may use CUDA and bfloat16 where a node asks:
``flockd.lm.accel``); the bytes every node must agree on (the aggregate) are
computed by ``flockd.fl.aggregate`` from the adapters, independent of torch.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from flockd.fl.data import DataSpec, check_root_rows
from flockd.fl.recipe import BadRecipeConfig, Metrics, TrainStats
from flockd.fl.vote_scoring import DEFAULT_ROOT_ROWS
from flockd.lm.accel import Accelerator
from flockd.lm.base import BaseModelError, parse_hash, resolve_base
from flockd.lm.causal import TokenizedText, Tokenizer, score_text, tokenize, train_steps
from flockd.lm.corpus import DOMAINS, domain_examples
from flockd.lm.lora import LoraRecipe, lora_keys
from flockd.lm.text import Example, carve, read_examples, stratified_draw
from flockd.logs import get_logger

if TYPE_CHECKING:
    import torch

log = get_logger("flockd.lm")

CAUSAL_LORA_DEFAULTS: dict[str, Any] = {
    "base_hash": None,  # 0x + 64 hex: flockd.lm.base.base_hash of the base directory
    "seq_len": 128,
    "batch_size": 16,
    "steps": 20,  # Adam steps per round
    "lr": 2e-3,
    "max_chars": 512,  # longer paragraphs are cut at whitespace
    "score_batch": 32,
    "domains": list(DOMAINS),
    "domain_chars": 250_000,  # each domain's text is cut to its first paragraphs within this many characters
    # A voter rejects a proposal that raises its validation bits per character by more than
    # this. Measured on the testnet's base (docs/lm.md): honest adapters from other domains
    # move a voter's bpc by -0.04 to +0.001, an adapter trained on garbage text by +0.06 to
    # +0.15, noise:1 by ~+0.9; the classifier's default (0.25, wider on small splits) passes
    # the garbage.
    "max_bpc_rise": 0.02,
    **lora_keys(8, 16.0, ["q_proj", "v_proj"]),
}


class CausalLoraRecipe(LoraRecipe):
    default_config: ClassVar[dict[str, Any]] = CAUSAL_LORA_DEFAULTS
    train_in_child = True  # many small torch calls a step: the daemon's GIL slowed it ~30% (docs/lm.md)
    # An adapter is judged by the proposer's model on the root set (every domain's text):
    # against the root update's direction a garbage-text adapter passed in 4 of 8 tries
    # (docs/lm.md, "The root set and the root votes").
    root_test = "model"
    root_rows_default = DEFAULT_ROOT_ROWS

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self._loaded: tuple[torch.nn.Module, Tokenizer] | None = None
        self._loading = threading.Lock()

    @abstractmethod
    def load_base(self, path: Path) -> tuple[torch.nn.Module, Tokenizer]:
        """The model (float32, CPU) and tokenizer of a checked base directory."""

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        try:
            parse_hash(c["base_hash"])
        except BaseModelError as exc:
            raise BadRecipeConfig(f"{self.name}: base_hash: {exc}") from None
        for key in ("seq_len", "batch_size", "steps", "max_chars", "score_batch", "domain_chars"):
            if not (isinstance(c[key], int) and c[key] >= (2 if key == "seq_len" else 1)):
                raise BadRecipeConfig(f"{self.name}: {key} must be a positive integer")
        for key in ("lr", "max_bpc_rise"):
            if not (isinstance(c[key], int | float) and math.isfinite(c[key]) and c[key] > 0):
                raise BadRecipeConfig(f"{self.name}: {key} must be > 0")
        domains = c["domains"]
        if not (isinstance(domains, list) and domains and all(isinstance(d, str) and d for d in domains)):
            raise BadRecipeConfig(f"{self.name}: domains must be a non-empty list of module names")

    def _base(self) -> tuple[torch.nn.Module, Tokenizer]:
        with self._loading:  # the worker's threads share a recipe: load once
            if self._loaded is None:
                self._loaded = self.load_base(resolve_base(parse_hash(self.config["base_hash"])))
            return self._loaded

    @property
    def max_loss_rise(self) -> float:
        """What the vote tolerates (``flockd.fl.score.Scorer.max_loss_rise``), in bits per character."""
        return float(self.config["max_bpc_rise"])

    @property
    def tokenizer(self) -> Tokenizer:
        return self._base()[1]

    def build_model(self, seed: int) -> torch.nn.Module:
        """The base model (the seed plays no part: the base is fixed by its hash)."""
        return copy.deepcopy(self._base()[0])

    def _tokenized(self, examples: list[Example]) -> TokenizedText:
        return tokenize(examples, self.tokenizer, self.config["seq_len"])

    def _carved(self, examples: list[Example], spec: DataSpec, with_test: bool) -> tuple[list[Example], ...]:
        return carve(examples, spec.seed, spec.val_fraction, spec.test_fraction if with_test else 0.0)

    def _domain(self, index: int) -> list[Example]:
        domains = self.config["domains"]
        examples = domain_examples(domains[index % len(domains)], self.config["max_chars"])
        kept: list[Example] = []
        total = 0
        for example in examples:
            total += len(example.text)
            if total > self.config["domain_chars"] and kept:
                break
            kept.append(example)
        return kept

    def load_data(self, spec: DataSpec) -> tuple[TokenizedText, TokenizedText]:
        if spec.path is not None:
            train, val, _ = self._carved(read_examples(spec.path, self.config["max_chars"]), spec, False)
        else:
            train, val, _ = self._carved(self._domain(spec.node_index), spec, True)
        return self._tokenized(train), self._tokenized(val)

    def load_test(self, spec: DataSpec) -> TokenizedText | None:
        if spec.path is not None:
            return None  # the node's own text has no task-wide test split
        test: list[Example] = []
        for index in range(len(self.config["domains"])):
            test += self._domain_test_examples(spec, index)
        return self._tokenized(test)

    def load_root(self, spec: DataSpec, rows: int) -> TokenizedText | None:
        """The demo task's root set (``root_examples``) tokenized like the training text. A
        node's own text has none: nothing public that every node holds stands beside it,
        so its voters vote as ``local-model``."""
        if spec.path is not None:
            return None
        return self._tokenized(self.root_examples(spec, rows))

    def root_examples(self, spec: DataSpec, rows: int) -> list[Example]:
        """``rows`` examples of the demo corpus, an equal share from each domain's train
        and validation text (never its test split), drawn by the task's seed: the same on
        every node. DataError when a domain holds fewer than its share."""
        check_root_rows(rows)
        pools: dict[str, list[Example]] = {}
        for index, domain in enumerate(self.config["domains"]):
            train, val, _ = self._carved(self._domain(index), spec, True)
            pools[domain] = train + val
        return stratified_draw(pools, rows, spec.seed)

    def domain_test(self, spec: DataSpec, index: int) -> TokenizedText:
        """The test split of the demo corpus's domain ``index`` alone (per-domain figures)."""
        return self._tokenized(self._domain_test_examples(spec, index))

    def _domain_test_examples(self, spec: DataSpec, index: int) -> list[Example]:
        return self._carved(self._domain(index), spec, True)[2]

    def train(
        self,
        model: torch.nn.Module,
        data: TokenizedText,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> TrainStats:
        c = self.config
        accel = Accelerator.from_env()
        started = time.perf_counter()
        with accel.training(model):
            taken, loss, tokens = train_steps(
                model, data, self.tokenizer.pad_id, steps=steps or c["steps"], lr=lr or c["lr"],
                batch_size=c["batch_size"], seed=seed, device=accel.device,
            )
        seconds = time.perf_counter() - started
        # Training speed in the log, so the daemon's can be set against a bare script's (docs/lm.md).
        log.info("lm trained", steps=taken, tokens=tokens, seconds=round(seconds, 3),
                 tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else None,
                 device=accel.device, dtype=accel.dtype)
        return TrainStats(samples=len(data), steps=taken, loss=loss)

    def evaluate(self, model: torch.nn.Module, data: TokenizedText) -> Metrics:
        score = score_text(model, data, self.tokenizer.pad_id, self.config["score_batch"])
        return Metrics(accuracy=score.token_accuracy, loss=score.bits_per_character)
