"""Causal language modelling on Examples: tokenized windows, masked training, and scoring
in bits per character.

Every Example becomes ``[bos] + ids of each segment`` with a flag per position: is it a
target token. A model predicts position j from positions < j, so position 0 (bos) is
never predicted and every target token is. An example longer than ``seq_len`` tokens is
cut into windows of at most ``seq_len`` that overlap by one token (each window's first
token is context, already predicted by the window before), so every target token is
predicted exactly once whatever the length.

Bits per character (FLock's validator's measure): the sum of the target tokens' losses
(nats) / ln 2 / the UTF-8 bytes of the target text. Summed, not averaged per sample (a
per-sample mean over-weights short samples), and divided by bytes of text, not tokens,
so a tokenizer that cuts text into fewer, harder tokens cannot look better.

A model is any ``torch.nn.Module`` mapping token ids ``(batch, length)`` to logits
``(batch, length, vocab)`` or to an object with ``.logits`` (Hugging Face's output).
Padding goes on the right and is never a target; under causal attention no real token
sees it, so no attention mask is passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from flockd.fl.data import DataError
from flockd.lm.text import Example

if TYPE_CHECKING:
    import torch

LN2 = math.log(2.0)


class Tokenizer(Protocol):
    bos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class Window:
    ids: tuple[int, ...]
    targets: tuple[bool, ...]  # targets[j]: position j is trained on and scored (never j = 0)


@dataclass(frozen=True)
class TokenizedText:
    """One split, ready for the model."""

    windows: tuple[Window, ...]
    target_bytes: int  # UTF-8 bytes of all its target text

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def target_tokens(self) -> int:
        return sum(sum(w.targets) for w in self.windows)


def tokenize(examples: Sequence[Example], tokenizer: Tokenizer, seq_len: int) -> TokenizedText:
    if seq_len < 2:
        raise DataError("seq_len must be at least 2")
    windows: list[Window] = []
    target_bytes = 0
    for example in examples:
        ids, targets = [tokenizer.bos_id], [False]
        for text, is_target in example.segments:
            piece = tokenizer.encode(text)
            ids += piece
            targets += [is_target] * len(piece)
        if not any(targets):
            continue  # target text that encodes to nothing: nothing to learn or score
        target_bytes += example.target_bytes
        start = 0
        while True:
            end = min(start + seq_len, len(ids))
            window_targets = (False, *targets[start + 1 : end])
            if any(window_targets):
                windows.append(Window(tuple(ids[start:end]), window_targets))
            if end == len(ids):
                break
            start = end - 1
    if not windows:
        raise DataError("no target text to train or score on")
    return TokenizedText(tuple(windows), target_bytes)


def batch_tensors(windows: Sequence[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, target mask), both (batch, longest window), right-padded."""
    import torch

    length = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.bool)
    for row, window in enumerate(windows):
        ids[row, : len(window.ids)] = torch.tensor(window.ids, dtype=torch.long)
        mask[row, : len(window.ids)] = torch.tensor(window.targets, dtype=torch.bool)
    return ids, mask


def target_losses(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses in nats, top-1 hits) of the target positions, in row-major order."""
    from torch.nn import functional as F

    out = model(ids)
    logits = getattr(out, "logits", out)[:, :-1, :]
    keep = mask[:, 1:]
    chosen, labels = logits[keep], ids[:, 1:][keep]  # padding and context never reach the loss
    losses = F.cross_entropy(chosen, labels, reduction="none")
    return losses, chosen.argmax(dim=-1) == labels


@dataclass(frozen=True)
class TextScore:
    nats: float  # summed over every target token
    tokens: int
    correct: int  # target tokens predicted top-1
    target_bytes: int

    @property
    def bits_per_character(self) -> float:
        return bits_per_character(self.nats, self.target_bytes)

    @property
    def token_accuracy(self) -> float:
        return self.correct / self.tokens


def bits_per_character(nats: float, target_bytes: int) -> float:
    if target_bytes <= 0:
        raise DataError("no target bytes to score")
    return nats / LN2 / target_bytes


def score_text(model: torch.nn.Module, text: TokenizedText, pad_id: int, batch_size: int) -> TextScore:
    """Deterministic: fixed batches in window order, the losses summed exactly (fsum) in float64."""
    import torch

    model.eval()
    losses: list[float] = []
    correct = 0
    with torch.no_grad():
        for start in range(0, len(text), batch_size):
            ids, mask = batch_tensors(text.windows[start : start + batch_size], pad_id)
            batch_losses, hits = target_losses(model, ids, mask)
            losses += batch_losses.double().tolist()
            correct += int(hits.sum())
    nats = math.fsum(losses)
    if not math.isfinite(nats):
        nats = math.inf  # a diverged model: the worst score, never NaN
    return TextScore(nats, len(losses), correct, text.target_bytes)


class Adam:
    """Adam (Kingma & Ba) over the trainable parameters, no weight decay: the update of
    ``torch.optim.Adam``, hand-rolled as ``flockd.fl.builtin``'s SGD is (constructing a
    torch.optim optimiser imports torch._dynamo in every process that trains)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        import torch

        self._params = list(params)
        self._m = [torch.zeros_like(p) for p in self._params]
        self._v = [torch.zeros_like(p) for p in self._params]
        self.lr, (self._b1, self._b2), self._eps, self._t = lr, betas, eps, 0  # lr: a schedule may change it

    def step(self) -> None:
        import torch

        self._t += 1
        c1, c2 = 1 - self._b1**self._t, 1 - self._b2**self._t
        with torch.no_grad():
            for p, m, v in zip(self._params, self._m, self._v, strict=True):
                if p.grad is None:
                    continue
                m.mul_(self._b1).add_(p.grad, alpha=1 - self._b1)
                v.mul_(self._b2).addcmul_(p.grad, p.grad, value=1 - self._b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self._eps), value=-self.lr)


def train_steps(
    model: torch.nn.Module, text: TokenizedText, pad_id: int, *, steps: int, lr: float, batch_size: int, seed: int,
    device: str = "cpu",
) -> tuple[int, float, int]:
    """``steps`` Adam steps on the trainable parameters, batches drawn by a seeded
    permutation of the windows; the loss of a batch is the mean over its target tokens.
    Returns (steps taken, mean training loss in nats per target token, token positions
    the model ran on, padding included)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DataError("the model has no trainable parameters")
    optimiser = Adam(params, lr)
    rng = np.random.Generator(np.random.PCG64([seed, 13]))
    order: list[int] = []
    losses: list[float] = []
    positions = 0
    model.train()
    for _ in range(steps):
        while len(order) < min(batch_size, len(text)):
            order += rng.permutation(len(text)).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        ids, mask = batch_tensors([text.windows[i] for i in chosen], pad_id)
        positions += ids.numel()
        if device != "cpu":
            ids, mask = ids.to(device), mask.to(device)
        batch_losses, _ = target_losses(model, ids, mask)
        loss = batch_losses.mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    return steps, (math.fsum(losses) / len(losses)) if losses else 0.0, positions
