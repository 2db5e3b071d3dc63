"""Aggregation rules over decoded deltas: pure functions every honest node agrees on.

Determinism across nodes is the point, so every rule:
- sorts its inputs by delta hash first (the order deltas arrived in never matters),
- computes in float64 with element-wise numpy operations in that fixed order (each one
  an IEEE-exact operation, so no BLAS, pairwise-summation or thread-count differences),
  and sums Krum's distances with ``math.fsum`` (exactly rounded),
- returns float32 tensors in name order; encoding them gives the same bytes everywhere.

Rules: FedAvg (the plain mean: equal weights per delta), coordinate-wise median,
trimmed mean (drop the ``beta`` fraction largest and smallest per coordinate), Krum and
Multi-Krum (Blanchard et al. 2017: score each delta by the summed squared distances to
its ``n - f - 2`` nearest others; Krum keeps the best one, Multi-Krum averages the best
``m``). No rule reads the sample count a delta declares: a proposer could inflate it.
More rules plug in by name through the entry point group ``flockd.rules`` (``name =
module:function``, ``function(deltas in canonical order, text params) -> Tensors``); they
must keep the same determinism.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points

import numpy as np

from flockd.fl.codec import Delta, DeltaError, decode_delta, delta_limits
from flockd.fl.errors import FLError
from flockd.fl.tensors import StateError, Tensors, add, flat, shapes, squared_norm

RULE_NAMES = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum")
# A delta is usable for a model only when ||delta|| <= MAX_UPDATE_RATIO * max(1, ||model||)
# (L2 norms). Honest deltas of the built-in recipes measured at most 2.9x (cancer-logreg,
# dirichlet:0.5, round 0; docs/learning.md), so the bound refuses only wreckage: how good
# an update is remains the voters' question.
MAX_UPDATE_RATIO = 100
RULE_ENTRY_POINT_GROUP = "flockd.rules"
PluginRule = Callable[[Sequence[Delta], tuple[str, ...]], Tensors]


class AggregationError(FLError):
    """The deltas or the rule do not allow an aggregate."""


class NoDeltas(AggregationError): ...


class MismatchedDeltas(AggregationError):
    """Deltas (or a delta and the model) do not share names and shapes."""


class BadRule(AggregationError): ...


@dataclass(frozen=True)
class Rule:
    """An aggregation rule and its parameters; text form ``name[:p1[:p2]]``.

    ``fedavg``, ``median``, ``trimmed-mean:BETA`` (0 <= BETA < 0.5),
    ``krum:F``, ``multi-krum:F:M`` (F = tolerated Byzantine deltas, M = deltas averaged).
    """

    name: str = "fedavg"
    beta: float = 0.0
    f: int = 0
    m: int = 1
    params: tuple[str, ...] = ()  # a plugged-in rule's parameters, as written

    def __post_init__(self) -> None:
        if self.name not in RULE_NAMES:
            plugin_rule(self.name)
            return
        if not (0 <= self.beta < 0.5 and self.f >= 0 and self.m >= 1):
            raise BadRule(f"bad parameters for {self.name}: beta={self.beta} f={self.f} m={self.m}")

    @classmethod
    def parse(cls, text: str) -> Rule:
        name, *params = text.split(":")
        arity = {"fedavg": 0, "median": 0, "trimmed-mean": 1, "krum": 1, "multi-krum": 2}
        if name not in arity:
            plugin_rule(name)
            return cls(name, params=tuple(params))
        if len(params) != arity[name]:
            raise BadRule(
                f"bad rule {text!r}: fedavg | median | trimmed-mean:BETA | krum:F | multi-krum:F:M"
            )
        try:
            if name == "trimmed-mean":
                return cls(name, beta=float(params[0]))
            if name == "krum":
                return cls(name, f=int(params[0]))
            if name == "multi-krum":
                return cls(name, f=int(params[0]), m=int(params[1]))
        except ValueError:
            raise BadRule(f"bad rule parameters in {text!r}") from None
        return cls(name)

    def __str__(self) -> str:
        if self.name not in RULE_NAMES:
            return ":".join((self.name, *self.params))
        return {
            "trimmed-mean": f"trimmed-mean:{self.beta:g}",
            "krum": f"krum:{self.f}",
            "multi-krum": f"multi-krum:{self.f}:{self.m}",
        }.get(self.name, self.name)


def canonical_order(deltas: Sequence[Delta]) -> list[Delta]:
    if not deltas:
        raise NoDeltas("nothing to aggregate")
    ordered = sorted(deltas, key=lambda d: d.hash)
    layout = shapes(ordered[0].tensors)
    for delta in ordered[1:]:
        if shapes(delta.tensors) != layout:
            raise MismatchedDeltas(f"delta {delta.hash.hex()[:16]} has another layout")
    return ordered


def _mean(deltas: Sequence[Delta]) -> Tensors:
    out: Tensors = {}
    for name in deltas[0].tensors:
        acc = np.zeros(deltas[0].tensors[name].shape, np.float64)
        for delta in deltas:
            acc += delta.tensors[name].astype(np.float64)
        out[name] = (acc / len(deltas)).astype(np.float32)
    return out


def _per_coordinate(deltas: Sequence[Delta], reduce: Callable[[np.ndarray], np.ndarray]) -> Tensors:
    # Sort each coordinate across deltas, then reduce the sorted stack row by row.
    out: Tensors = {}
    for name in deltas[0].tensors:
        stack = np.stack([d.tensors[name].astype(np.float64) for d in deltas])
        out[name] = reduce(np.sort(stack, axis=0)).astype(np.float32)
    return out


def fedavg(deltas: Sequence[Delta]) -> Tensors:
    """The plain mean: one weight per accepted delta. The sample count a proposer declares
    cannot be checked, and weighting by it would let one proposer own the aggregate."""
    ordered = canonical_order(deltas)
    return _mean(ordered)


def median(deltas: Sequence[Delta]) -> Tensors:
    ordered = canonical_order(deltas)
    n = len(ordered)

    def middle(s: np.ndarray) -> np.ndarray:
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0

    return _per_coordinate(ordered, middle)


def trimmed_mean(deltas: Sequence[Delta], beta: float) -> Tensors:
    """Per coordinate, drop the ``floor(beta * n)`` largest and smallest, average the rest."""
    if not 0 <= beta < 0.5:
        raise BadRule(f"trimmed-mean beta must be in [0, 0.5), got {beta}")
    ordered = canonical_order(deltas)
    n = len(ordered)
    cut = math.floor(beta * n)

    def middle_mean(s: np.ndarray) -> np.ndarray:
        acc = np.zeros(s.shape[1:], np.float64)
        for row in s[cut : n - cut]:
            acc += row
        return acc / (n - 2 * cut)

    return _per_coordinate(ordered, middle_mean)


def krum_scores(deltas: Sequence[Delta], f: int) -> list[float]:
    """Krum score of each delta, in the order given (lower is more central)."""
    vectors = [flat(d.tensors) for d in deltas]  # distances are exact sums: any one order
    n = len(vectors)
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dist[i][j] = dist[j][i] = math.fsum(np.square(vectors[i] - vectors[j]).tolist())
    # n - f - 2 neighbours as in the paper; clamped so small rounds still get a choice.
    neighbours = min(max(n - f - 2, 1), n - 1)
    return [
        math.fsum(sorted(dist[i][j] for j in range(n) if j != i)[:neighbours]) for i in range(n)
    ]


def krum_select(deltas: Sequence[Delta], f: int, m: int) -> list[Delta]:
    """The ``m`` best-scored deltas (ties go to the lower hash), in canonical order."""
    ordered = canonical_order(deltas)
    scores = krum_scores(ordered, f)
    best = sorted(range(len(ordered)), key=lambda i: (scores[i], i))[: min(m, len(ordered))]
    return [ordered[i] for i in sorted(best)]


def krum(deltas: Sequence[Delta], f: int) -> Tensors:
    (chosen,) = krum_select(deltas, f, 1)
    return {name: t.astype(np.float32, copy=True) for name, t in chosen.tensors.items()}


def multi_krum(deltas: Sequence[Delta], f: int, m: int) -> Tensors:
    chosen = krum_select(deltas, f, m)
    return _mean(chosen)


def aggregate(deltas: Sequence[Delta], rule: Rule | str = "fedavg") -> Tensors:
    """Apply ``rule`` (a Rule or its text form) to ``deltas``."""
    rule = Rule.parse(rule) if isinstance(rule, str) else rule
    if rule.name == "fedavg":
        return fedavg(deltas)
    if rule.name == "median":
        return median(deltas)
    if rule.name == "trimmed-mean":
        return trimmed_mean(deltas, rule.beta)
    if rule.name == "krum":
        return krum(deltas, rule.f)
    if rule.name == "multi-krum":
        return multi_krum(deltas, rule.f, rule.m)
    return plugin_rule(rule.name)(canonical_order(deltas), rule.params)


def plugin_rule(name: str) -> PluginRule:
    """The rule registered as ``name`` in the ``flockd.rules`` entry point group."""
    found = entry_points(group=RULE_ENTRY_POINT_GROUP).select(name=name)
    if not found:
        raise BadRule(f"unknown rule {name!r} (built in: {', '.join(RULE_NAMES)})")
    try:
        function = next(iter(found)).load()
    except (ImportError, AttributeError) as exc:
        raise BadRule(f"rule {name!r} does not load: {exc}") from None
    if not callable(function):
        raise BadRule(f"rule {name!r} is not a function")
    return function  # type: ignore[no-any-return]


def apply(global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Tensors:
    """The next global model: ``global_state + delta`` in float32."""
    try:
        return add(global_state, delta)
    except StateError as exc:
        raise MismatchedDeltas(str(exc)) from None


def usable_deltas(
    global_state: Mapping[str, np.ndarray],
    deltas: Sequence[bytes | None],
    on_refused: Callable[[bytes, str], None] | None = None,
    *,
    delta_layout: Mapping[str, tuple[int, ...]] | None = None,
    expand: Callable[[Delta], Delta] | None = None,
) -> list[Delta | None]:
    """Each delta decoded, or None where it is missing or unusable for ``global_state``
    (protocol/spec/delta.md §3): the strict decoder refuses it for the model's layout (not
    a delta, another layout, NaN/Inf, a value out of bounds), or its update is more than
    MAX_UPDATE_RATIO times the model's norm. ``on_refused(bytes, reason)`` hears of each
    unusable one. Decided from the bytes and the model alone: the same on every node.
    A recipe whose deltas are not the model's own tensors (a LoRA adapter) passes their
    ``delta_layout`` and ``expand`` (a delta to its change of the model's tensors): the norm
    bound then holds for that change, which is what is returned."""
    layout = shapes(global_state) if delta_layout is None else dict(delta_layout)
    limits = delta_limits(layout)  # longer bytes are refused before they are hashed
    max_norm_sq = squared_update_limit(global_state)

    def usable(data: bytes) -> Delta | None:
        try:
            delta = decode_delta(data, expected_shapes=layout, limits=limits)
        except DeltaError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            update = delta if expand is None else expand(delta)
            if squared_norm(update.tensors) <= max_norm_sq:
                return update
            reason = f"update norm beyond {MAX_UPDATE_RATIO}x the model's"
        if on_refused is not None:
            on_refused(data, reason)
        return None

    return [None if data is None else usable(data) for data in deltas]

def squared_update_limit(global_state: Mapping[str, np.ndarray]) -> float:
    """The largest squared L2 norm (``tensors.squared_norm``) a usable delta for
    ``global_state`` may have: MAX_UPDATE_RATIO² · max(1, ||global_state||²). Squares and
    exactly rounded sums, so every node draws the same line."""
    return float(MAX_UPDATE_RATIO**2) * max(1.0, squared_norm(global_state))
