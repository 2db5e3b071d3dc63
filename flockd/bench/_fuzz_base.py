"""Fuzzing, the shared parts: what a target is, the property every decoder keeps, and
structure-aware mutators.

A target is a hypothesis strategy of inputs (valid messages mutated field by field,
truncated, extended, with wrong types and huge declared lengths, beside plain random
bytes) and a check run on each input. The property a decoder check enforces:

- only the decoder's documented error types come out (any other exception propagates
  and fails the case), or a clean value;
- it allocates no more than the input's bound (tracemalloc's peak while decoding), so a
  declared length is never trusted before it is capped.

Hangs show up as a case that never ends: `scripts/bench fuzz` reports the slowest case of
every target. The test suite (tests/test_fuzz_*.py) and the campaign run the same targets.
"""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KiB = 1024
MiB = 1024 * KiB
# msgpack can expand ~70x into Python objects (one 0x80 byte is an empty dict); anything a
# decoder allocates beyond this multiple of its input came from a declared length.
MSGPACK_EXPANSION = 100


class PropertyBroken(AssertionError):
    """A decoder broke the fuzz property other than by raising (allocation, bad value)."""


@dataclass(frozen=True)
class Target:
    name: str
    inputs: st.SearchStrategy[Any]
    check: Callable[[Any], None]
    examples: int = 200  # per test-suite run; the campaign runs many more


class AllocationMeter:
    """Peak bytes allocated inside the block (tracemalloc), above what was live before."""

    def __init__(self) -> None:
        self.peak = 0
        self._started = False
        self._base = 0

    def __enter__(self) -> AllocationMeter:
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self._base
        if self._started:
            tracemalloc.stop()


def run_target(target: Target, examples: int, *, database: bool = True) -> None:
    """Run `examples` cases of `target` under hypothesis; raises the first failure found
    (shrunk to a minimal case). No deadline: a slow case is the campaign's to report."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=settings().database if database else None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(target.inputs)
    def case(value: Any) -> None:
        target.check(value)

    case()


def linear_bound(factor: int, constant: int = 1 * MiB) -> Callable[[int], int]:
    return lambda size: factor * size + constant


def decoder_check(
    decode: Callable[[Any], object],
    errors: tuple[type[BaseException], ...],
    *,
    bound: Callable[[int], int],
    size: Callable[[Any], int] = len,
) -> Callable[[Any], None]:
    """A check: `decode(case)` returns or raises one of `errors`, within the allocation bound."""

    def check(case: Any) -> None:
        with AllocationMeter() as meter, contextlib.suppress(*errors):
            decode(case)
        limit = bound(size(case))
        if meter.peak > limit:
            raise PropertyBroken(f"decoding {size(case)} bytes allocated {meter.peak}; the bound is {limit}")

    return check


# -- values ----------------------------------------------------------------------------------

EDGE_INTS = st.sampled_from(
    [0, 1, -1, 255, 256, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
)
_KEYS = st.text(max_size=8)


def msgpack_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Anything msgpack packs: wrong types for any field (bools, floats, nil, bin, ...)."""
    scalars = (
        st.none()
        | st.booleans()
        | EDGE_INTS
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.binary(max_size=48)
        | st.text(max_size=24)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS | st.integers(-2, 2), inner, max_size=4),
        max_leaves=max_leaves,
    )


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Anything JSON holds (floats include NaN and infinities: encoded as bare tokens)."""
    scalars = (
        st.none()
        | st.booleans()
        | EDGE_INTS
        | st.integers()
        | st.floats()
        | st.text(max_size=24)
        | st.sampled_from(["0x", "0x0", "0x00", "latest", "0x" + "f" * 64, "0x" + "0" * 40, "0xzz"])
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
        max_leaves=max_leaves,
    )


MSGPACK_VALUES = msgpack_values()
JSON_VALUES = json_values()


# -- structure-aware mutation ------------------------------------------------------------------


def mutate(
    draw: st.DrawFn,
    value: Any,
    leaves: st.SearchStrategy[Any],
    max_mutations: int = 3,
    wrong: st.SearchStrategy[Any] | None = None,
) -> Any:
    """`value` changed in up to `max_mutations` places: a field replaced by a value of any
    type (`wrong`: one of each msgpack/JSON type by default), dropped, added, resized or
    wrapped in a list. (A function of `draw`, not a new strategy per call: hypothesis
    validates every strategy it is handed, which is slow.)"""
    for _ in range(draw(st.integers(1, max_mutations))):
        value = _mutate(draw, value, leaves, WRONG_TYPES if wrong is None else wrong)
    return value


@st.composite
def mutated(
    draw: st.DrawFn, base: st.SearchStrategy[Any], leaves: st.SearchStrategy[Any], max_mutations: int = 3
) -> Any:
    return mutate(draw, draw(base), leaves, max_mutations)


def _mutate(draw: st.DrawFn, value: Any, leaves: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    # Every node of the tree is equally likely to change, so a field deep inside (one dtype
    # of a list of dtypes) is hit as often as a top-level one.
    paths = list(_paths(value))
    path = paths[draw(st.integers(0, len(paths) - 1))]
    return _replace_at(value, path, _mutate_node(draw, _get(value, path), leaves, wrong))


def _mutate_node(draw: st.DrawFn, node: Any, leaves: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    op = draw(st.sampled_from(("replace", "wrong type", "drop", "add", "wrap", "nudge")))
    if op == "drop" and isinstance(node, list | bytes | str) and node:
        i = draw(st.integers(0, len(node) - 1))
        return node[:i] + node[i + 1 :]  # type: ignore[operator]
    if op == "drop" and isinstance(node, dict) and node:
        gone = sorted(node, key=repr)[draw(st.integers(0, len(node) - 1))]
        return {k: v for k, v in node.items() if k != gone}
    if op == "add" and isinstance(node, list):
        return node + [draw(leaves)]
    if op == "add" and isinstance(node, dict):
        return {**node, draw(_KEYS): draw(leaves)}
    if op == "add" and isinstance(node, bytes):
        return node + draw(st.binary(min_size=1, max_size=64))
    if op == "add" and isinstance(node, str):
        return node + draw(st.text(min_size=1, max_size=16))
    if op == "nudge" and type(node) is int:
        # Within what msgpack packs: beyond it, the encoder (not the decoder) would fail.
        return max(-(2**63), min(2**64 - 1, node + draw(st.sampled_from((-1, 1, -(2**32), 2**32, 2**63)))))
    if op == "wrap":
        return [node]
    if op == "wrong type":
        return draw(wrong)
    return draw(leaves)


_ONE_OF_EACH = [None, True, False, -1, 2**64 - 1, 1.5, float("nan"), "", [], {}, [1], {"k": 1}]
WRONG_TYPES = st.sampled_from([*_ONE_OF_EACH, b""])
JSON_WRONG_TYPES = st.sampled_from(_ONE_OF_EACH)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            yield from _paths(value[key], (*prefix, key))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _replace_at(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _replace_at(value[path[0]], path[1:], new)
    return copy


# Headers declaring ~4 GiB (bin, str, array, map, ext) or 64 Ki items: a decoder must cap
# them against the bytes it actually has before allocating anything.
HUGE_MSGPACK_HEADERS = (
    b"\xc6\xff\xff\xff\xff",
    b"\xdb\xff\xff\xff\xff",
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x01",
    b"\xc5\xff\xff",
    b"\xdc\xff\xff",
    b"\xde\xff\xff",
    b"\xd4\xff\x00",  # fixext 1, type -1 (timestamp) with a bad length
    b"\xc1",  # never-used byte
)


def mutate_bytes(draw: st.DrawFn, raw: bytes, splices: tuple[bytes, ...] = HUGE_MSGPACK_HEADERS) -> bytes:
    """Encoded bytes, kept or truncated, extended, bit-flipped, or with a huge length
    header spliced in."""
    op = draw(st.sampled_from(("keep", "keep", "truncate", "extend", "flip", "splice")))
    if op == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if op == "extend":
        return raw + draw(st.binary(min_size=1, max_size=64))
    if op == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
    if op == "splice":
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(st.sampled_from(splices)) + raw[i:]
    return raw


@st.composite
def byte_mutated(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    return mutate_bytes(draw, draw(data))


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def packed(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(pack)


def msgpack_messages(
    base: st.SearchStrategy[Any], *, random_size: int = 256, max_mutations: int = 3
) -> st.SearchStrategy[bytes]:
    """The usual input mix of a msgpack decoder: random bytes, or a valid message mutated
    field by field and then at the byte level."""
    structured = byte_mutated(packed(mutated(base, MSGPACK_VALUES, max_mutations)))
    return st.binary(max_size=random_size) | structured
