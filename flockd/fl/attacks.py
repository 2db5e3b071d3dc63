"""Malicious behaviours a node can be told to adopt, for measuring the defence.

A behaviour is written as a spec string, parts joined by ``+``:

==================  ======================================================================
``honest``          no attack (alone only)
``label-flip``      train on flipped labels, ``y -> n_classes - 1 - y``
``noise[:SIGMA]``   send N(0, SIGMA^2) per coordinate instead of the delta (SIGMA 1.0)
``sign-flip[:K]``   send ``-K`` times the honest delta (K 1.0)
``garbage[:SIZE]``  send random bytes, SIZE times as long as its honest encoding (SIZE
                    1.0, at most 64), committing to their hash like any proposer: bytes
                    that pass the hash check and nothing else
``random-vote``     vote uniformly at random (+1/-1 per proposal, or once whole-round)
``accept-all``      vote to accept everything (+1 each; whole round +1)
``collude``         act with the other colluders: vote +1 for colluders' proposals and -1
                    for honest ones (whole round: +1 if a colluder proposed, else -1),
                    and as a proposer flip labels unless another training or delta
                    attack is given (``collude+sign-flip:4``)
==================  ======================================================================

At most one training attack (label-flip), one delta attack (noise, sign-flip, garbage) and one
vote attack (random-vote, accept-all, collude). Everything here is numpy only and
deterministic given the caller's ``np.random.Generator``, so the daemon, the in-process
simulation and the benchmarks share one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple, get_args

import numpy as np

from flockd.fl.data import Split

if TYPE_CHECKING:
    from flockd.fl.recipe import Recipe  # imports torch

DeltaKind = Literal["noise", "sign-flip", "garbage"]
VoteAttack = Literal["honest", "random", "accept-all", "collude"]
AttackPurpose = Literal["delta", "vote"]

_DEFAULT_AMOUNT = 1.0  # sigma of noise, scale of sign-flip, size of garbage, when omitted
_MAX_GARBAGE_SIZE = 64.0  # times the honest encoding: a typo must not allocate terabytes
_DELTA_BY_WORD: dict[str, DeltaKind] = {kind: kind for kind in get_args(DeltaKind)}
# The spec word for each vote attack (the field value "random" reads badly alone in a spec).
_VOTE_WORDS: dict[VoteAttack, str] = {
    "random": "random-vote",
    "accept-all": "accept-all",
    "collude": "collude",
}
_VOTE_BY_WORD = {word: vote for vote, word in _VOTE_WORDS.items()}


class DeltaAttack(NamedTuple):
    """What replaces the honest delta: ``("noise", sigma)``, ``("sign-flip", scale)`` or
    ``("garbage", size relative to the honest encoding)``."""

    kind: DeltaKind
    amount: float


@dataclass(frozen=True)
class Behaviour:
    label_flip: bool = False
    delta: DeltaAttack | None = None
    vote: VoteAttack = "honest"

    def __post_init__(self) -> None:
        if self.delta is not None:
            if self.delta.kind not in get_args(DeltaKind):
                raise ValueError(f"unknown delta attack {self.delta.kind!r}")
            if not (math.isfinite(self.delta.amount) and self.delta.amount > 0):
                raise ValueError(
                    f"{self.delta.kind} needs a finite amount > 0, got {self.delta.amount}"
                )
            if self.delta.kind == "garbage" and self.delta.amount > _MAX_GARBAGE_SIZE:
                raise ValueError(f"garbage size must be at most {_MAX_GARBAGE_SIZE:g}")
        if self.vote not in get_args(VoteAttack):
            raise ValueError(f"unknown vote behaviour {self.vote!r}")
        if self.vote == "collude" and not self.label_flip and self.delta is None:
            # The spec grammar cannot say this (``collude`` alone flips labels), so refusing
            # it keeps ``parse_behaviour(str(b)) == b`` true for every Behaviour.
            raise ValueError(
                "a colluder attacks as a proposer too: give it label_flip or a delta attack"
            )

    @property
    def is_honest(self) -> bool:
        return not self.label_flip and self.delta is None and self.vote == "honest"

    def __str__(self) -> str:
        """The canonical spec: training, delta, vote attack, in that order."""
        if self.is_honest:
            return "honest"
        parts = []
        label_flip_implied = self.vote == "collude" and self.delta is None
        if self.label_flip and not label_flip_implied:
            parts.append("label-flip")
        if self.delta is not None:
            parts.append(f"{self.delta.kind}:{_format_amount(self.delta.amount)}")
        if self.vote != "honest":
            parts.append(_VOTE_WORDS[self.vote])
        return "+".join(parts)


HONEST = Behaviour()


def describe(b: Behaviour) -> str:
    """What the behaviour does, in words (for warnings and reports)."""
    if b.is_honest:
        return "behave honestly"
    doings = []
    if b.label_flip:
        doings.append("train on flipped labels")
    if b.delta is not None and b.delta.kind == "noise":
        doings.append(f"send Gaussian noise (sigma {_format_amount(b.delta.amount)}) as its delta")
    elif b.delta is not None and b.delta.kind == "garbage":
        size = _format_amount(b.delta.amount)
        doings.append(f"send random bytes ({size} x the size of its delta) as its delta")
    elif b.delta is not None:
        doings.append(f"send -{_format_amount(b.delta.amount)} x its delta")
    doings.append(_VOTE_DOINGS[b.vote])
    return ", ".join(d for d in doings if d)


_VOTE_DOINGS: dict[VoteAttack, str] = {
    "honest": "",
    "random": "vote at random",
    "accept-all": "vote to accept every proposal",
    "collude": "vote for its colluders' proposals and against all others",
}


def _format_amount(x: float) -> str:
    short = format(x, "g")
    return short if float(short) == x else repr(x)


def _parse_amount(part: str, word: str, text: str) -> float:
    if ":" not in part:
        return _DEFAULT_AMOUNT
    raw = part.split(":", 1)[1]
    try:
        amount = float(raw)
    except ValueError:
        raise ValueError(f"behaviour {text!r}: {word} amount {raw!r} is not a number") from None
    if not (math.isfinite(amount) and amount > 0):
        raise ValueError(
            f"behaviour {text!r}: {word} amount must be a finite number > 0, got {raw!r}"
        )
    return amount


def parse_behaviour(text: str) -> Behaviour:
    """Parse a spec string (grammar in the module docstring); ValueError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty behaviour spec (use 'honest' for none)")
    label_flip = False
    delta: DeltaAttack | None = None
    vote: VoteAttack = "honest"
    honest = False
    seen: set[str] = set()
    for raw_part in text.split("+"):
        part = raw_part.strip()
        word = part.split(":", 1)[0]
        if word in seen:
            raise ValueError(f"behaviour {text!r}: {word!r} given twice")
        seen.add(word)
        if ":" in part and word not in _DELTA_BY_WORD:
            raise ValueError(f"behaviour {text!r}: {word!r} takes no argument")
        if word == "honest":
            honest = True
        elif word == "label-flip":
            label_flip = True
        elif word in _DELTA_BY_WORD:
            if delta is not None:
                raise ValueError(
                    f"behaviour {text!r}: at most one delta attack (noise, sign-flip, garbage), "
                    f"got {delta.kind} and {word}"
                )
            delta = DeltaAttack(_DELTA_BY_WORD[word], _parse_amount(part, word, text))
        elif word in _VOTE_BY_WORD:
            if vote != "honest":
                raise ValueError(
                    f"behaviour {text!r}: at most one vote attack (random-vote, accept-all, "
                    f"collude), got {_VOTE_WORDS[vote]} and {word}"
                )
            vote = _VOTE_BY_WORD[word]
        else:
            known = (
                "honest, label-flip, noise[:SIGMA], sign-flip[:SCALE], garbage[:SIZE], "
                "random-vote, accept-all, collude"
            )
            raise ValueError(f"behaviour {text!r}: unknown part {part!r} (known: {known})")
    if honest and len(seen) > 1:
        raise ValueError(f"behaviour {text!r}: 'honest' cannot be combined with an attack")
    if vote == "collude" and delta is None:
        label_flip = True  # a colluding proposer's default poison
    try:
        return Behaviour(label_flip=label_flip, delta=delta, vote=vote)
    except ValueError as exc:
        raise ValueError(f"behaviour {text!r}: {exc}") from None


def flip_labels(y: np.ndarray, n_classes: int) -> np.ndarray:
    """``y -> n_classes - 1 - y``: every sample gets a wrong label when n_classes > 1 is even,
    all but the middle class's when it is odd."""
    if n_classes < 2:
        raise ValueError(f"label flipping needs at least 2 classes, got {n_classes}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) to be flipped")
    return (n_classes - 1 - y).astype(y.dtype, copy=False)


def training_split(b: Behaviour, split: Split, recipe: Recipe) -> Split:
    """The split a node with behaviour ``b`` trains on: ``split`` with its labels flipped
    under label-flip (the recipe must declare ``num_classes``), else ``split`` itself."""
    if not b.label_flip:
        return split
    n_classes = getattr(recipe, "num_classes", None)
    if not isinstance(n_classes, int):
        raise ValueError(
            f"recipe {recipe.name} declares no num_classes: its labels cannot be flipped"
        )
    return Split(split.x, flip_labels(split.y, n_classes))


def poison_delta(
    b: Behaviour, delta: Mapping[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The delta a node with behaviour ``b`` sends in place of its honest ``delta``: same
    names, shapes and dtypes. Noise is drawn tensor by tensor in ``delta``'s order.
    Garbage replaces the encoded bytes instead (``poison_wire``)."""
    if b.delta is None or b.delta.kind == "garbage":
        return dict(delta)
    if b.delta.kind == "noise":
        return {
            name: rng.normal(0.0, b.delta.amount, size=t.shape).astype(t.dtype, copy=False)
            for name, t in delta.items()
        }
    return {name: (t * -b.delta.amount).astype(t.dtype, copy=False) for name, t in delta.items()}


def poison_wire(b: Behaviour, wire: bytes, rng: np.random.Generator) -> bytes:
    """The bytes a node with behaviour ``b`` sends and commits to, given its encoded delta
    ``wire``: ``wire`` itself, or under garbage ``round(size * len(wire))`` random bytes
    (at least one), drawn after any draw of ``poison_delta`` from the same generator."""
    if b.delta is None or b.delta.kind != "garbage":
        return wire
    return rng.bytes(max(1, round(b.delta.amount * len(wire))))


def cast_votes(
    b: Behaviour,
    honest: tuple[int, ...],
    proposers: Sequence[bytes],
    colluders: frozenset[bytes],
    rng: np.random.Generator,
    whole_round: bool,
) -> tuple[int, ...]:
    """What a voter with behaviour ``b`` submits, given the honest scorer's ``honest`` votes
    (per proposal: one +1/-1 for each of ``proposers``, in order; whole round: one +1/-1)."""
    expected = 1 if whole_round else len(proposers)
    if len(honest) != expected:
        raise ValueError(f"{len(honest)} honest votes for {expected} expected")
    if b.vote == "honest":
        return honest
    if whole_round:  # one +-1 vote, as an honest voter's
        if b.vote == "random":
            return (int(rng.choice((-1, 1))),)
        if b.vote == "accept-all":
            return (1,)
        return (1 if any(p in colluders for p in proposers) else -1,)
    if b.vote == "random":
        return tuple(int(v) for v in rng.choice((-1, 1), size=len(proposers)))
    if b.vote == "accept-all":
        return (1,) * len(proposers)
    return tuple(1 if p in colluders else -1 for p in proposers)


def attack_rng(
    seed: int, round_number: int, node_index: int, purpose: AttackPurpose
) -> np.random.Generator:
    """A generator private to one node, round and use, so a replay draws the same noise or
    votes and the delta and vote draws never share a stream."""
    stream = 0 if purpose == "delta" else 1
    return np.random.Generator(np.random.PCG64([seed, round_number, node_index, stream]))


def assign_behaviours(n_nodes: int, fraction: float, spec: str, seed: int) -> dict[int, Behaviour]:
    """The malicious nodes and their behaviour (``spec``); nodes not in the result are honest.

    ``round(fraction * n_nodes)`` nodes with Python's rounding (half to even: 0.5 of 5
    nodes is 2, 0.34 of 6 is 2), drawn from nodes 1..n_nodes-1 without replacement by a
    numpy Generator seeded with ``seed``. Node 0 creates the task in the testnet, so it is
    never chosen; asking for more than n_nodes - 1 is a ValueError.
    """
    if n_nodes < 1:
        raise ValueError(f"need at least one node, got {n_nodes}")
    if not (0.0 <= fraction <= 1.0):
        raise ValueError(f"malicious fraction must lie in [0, 1], got {fraction}")
    behaviour = parse_behaviour(spec)
    count = round(fraction * n_nodes)
    if count > n_nodes - 1:
        raise ValueError(
            f"{count} malicious nodes of {n_nodes} would include node 0, the task creator"
        )
    if count == 0 or behaviour.is_honest:
        return {}
    draw = np.random.Generator(np.random.PCG64(seed))
    chosen = draw.choice(np.arange(1, n_nodes), size=count, replace=False)
    return {int(i): behaviour for i in sorted(chosen.tolist())}
