"""The delta codec: a msgpack header plus raw little-endian tensor bytes, never pickle.

Wire form (see protocol/spec/delta.md)::

    b"FLKD" | u32 LE header length | header (msgpack map) | body

The header is the map ``{v, kind, enc, n, names, dtypes, shapes[, counts]}`` with keys in
exactly that order; names strictly ascending; the body holds each tensor in name order:
``f32`` float32 values, ``f16`` float16 values, ``topk`` u32 indices (strictly
ascending) then float32 values of the ``counts[i]`` largest-magnitude entries.
The decoder accepts only the canonical form, so one delta has one encoding and
``delta_hash = keccak256(encoding)`` names it. The same codec (kind ``model``, ``f32``)
gives the canonical bytes of a full model state that ``model_hash`` hashes.

Everything a peer sends is checked before any array is allocated: total size, header
size, msgpack limits, field types, dtype allow-list, element count, body length. Then
every value must be finite and, in a delta, at most ``MAX_DELTA_VALUE`` in magnitude.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import numpy as np
from eth_utils import keccak

from flockd.fl.errors import FLError
from flockd.fl.tensors import Tensors, canonical, layout_mismatch

MAGIC = b"FLKD"
VERSION = 1
ENCODINGS = ("f32", "f16", "topk")
KINDS = ("delta", "model")
# Wire dtype of the values of each encoding: the dtype allow-list.
_VALUE_DTYPE = {"f32": "float32", "f16": "float16", "topk": "float32"}
_NUMPY_DTYPE: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_INDEX_DTYPE = np.dtype("<u4")
_PREFIX = struct.Struct("<4sI")
MAX_SAMPLES = 2**32 - 1
# The largest finite float16: every encoding can carry it, and no sane update moves one
# weight this far in a round (honest deltas of the built-in recipes stay below 4).
MAX_DELTA_VALUE = 65504.0


class DeltaError(FLError):
    """A delta (or canonical model state) was rejected; each reason has a subclass."""


class DeltaTooLarge(DeltaError): ...


class MalformedDelta(DeltaError): ...


class UnsupportedDeltaVersion(DeltaError): ...


class UnsupportedEncoding(DeltaError): ...


class DisallowedDtype(DeltaError): ...


class NonCanonicalDelta(DeltaError):
    """Well-formed but not the one canonical encoding (order, header bytes, top-k indices)."""


class DeltaShapeMismatch(DeltaError):
    """Names or shapes differ from the model the delta is meant for."""


class DeltaLengthMismatch(DeltaError): ...


class NonFiniteDelta(DeltaError): ...


class DeltaOutOfBounds(DeltaError):
    """A delta value exceeds ``MAX_DELTA_VALUE`` in magnitude."""


class DeltaHashMismatch(DeltaError):
    """The bytes do not hash to the commitment they were offered under."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 << 20
    max_header_bytes: int = 1 << 20
    max_tensors: int = 1024
    max_name_len: int = 256
    max_ndim: int = 8
    max_elements: int = 16 << 20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, eq=False)  # arrays do not compare as booleans; compare .hash
class Delta:
    """A decoded delta: float32 tensors in name order, the sender's sample count, its hash."""

    tensors: Tensors
    samples: int
    encoding: str
    hash: bytes


def delta_hash(data: bytes) -> bytes:
    return keccak(data)


def encode_delta(
    tensors: Mapping[str, np.ndarray],
    *,
    samples: int = 0,
    encoding: str = "f32",
    topk_fraction: float = 0.1,
) -> bytes:
    """Encode ``tensors`` (a delta) canonically. Aggregate the *decoded* form of these
    bytes, never the tensors passed in: f16 and top-k are lossy."""
    if not 0 <= samples <= MAX_SAMPLES:
        raise MalformedDelta(f"samples {samples} out of range")
    return _encode(canonical(tensors), "delta", samples, encoding, topk_fraction)


def encode_state(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The canonical bytes of a full model state (kind ``model``, float32)."""
    return _encode(canonical(tensors), "model", 0, "f32", 1.0)


def decode_delta(
    data: bytes,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_hash: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Delta:
    """Check and decode a peer's delta; raises a DeltaError subclass on any defect."""
    return _decode(bytes(data), "delta", expected_shapes, expected_hash, limits)


def max_delta_size(layout: Mapping[str, tuple[int, ...]]) -> int:
    """The length of the longest canonical delta for a model of ``layout`` (top-k keeping
    every entry, ``n = MAX_SAMPLES``): no delta for this model is longer, so a transfer or
    a decoder can refuse more bytes before hashing or parsing them."""
    ordered = {name: tuple(layout[name]) for name in sorted(layout)}
    sizes = [math.prod(shape) for shape in ordered.values()]
    header = _header("delta", "topk", MAX_SAMPLES, _placeholders(ordered), sizes)
    return _PREFIX.size + len(header) + (_INDEX_DTYPE.itemsize + 4) * sum(sizes)


def delta_limits(layout: Mapping[str, tuple[int, ...]], limits: Limits = DEFAULT_LIMITS) -> Limits:
    """``limits`` with ``max_bytes`` cut to what a delta for ``layout`` can need."""
    return replace(limits, max_bytes=min(limits.max_bytes, max_delta_size(layout)))


def decode_state(
    data: bytes,
    *,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    expected_hash: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Tensors:
    return _decode(bytes(data), "model", expected_shapes, expected_hash, limits).tensors


def _header(kind: str, enc: str, samples: int, tensors: Tensors, counts: list[int]) -> bytes:
    fields: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "enc": enc,
        "n": samples,
        "names": list(tensors),
        "dtypes": [_VALUE_DTYPE[enc]] * len(tensors),
        "shapes": [list(a.shape) for a in tensors.values()],
    }
    if enc == "topk":
        fields["counts"] = counts
    return msgpack.packb(fields, use_bin_type=True)


def _encode(tensors: Tensors, kind: str, samples: int, enc: str, topk_fraction: float) -> bytes:
    if enc not in ENCODINGS:
        raise UnsupportedEncoding(f"unknown encoding {enc!r}")
    if not 0 < topk_fraction <= 1:
        raise MalformedDelta("topk_fraction must be in (0, 1]")
    chunks: list[bytes] = []
    counts: list[int] = []
    for name, array in tensors.items():
        if not np.isfinite(array).all():
            raise NonFiniteDelta(f"{name} has NaN or infinite values")
        if kind == "delta" and array.size and float(np.abs(array).max()) > MAX_DELTA_VALUE:
            raise DeltaOutOfBounds(f"{name} has a value beyond +-{MAX_DELTA_VALUE:g}")
        flat = array.reshape(-1)
        if enc == "f32":
            chunks.append(flat.tobytes())
        elif enc == "f16":  # finite: the value bound is the largest float16
            chunks.append(flat.astype("<f2").tobytes())
        else:
            k = min(flat.size, max(1, math.ceil(topk_fraction * flat.size)))
            # Stable sort on -|x|: ties go to the lower index, so the choice is canonical.
            top = np.sort(np.argsort(-np.abs(flat), kind="stable")[:k])
            counts.append(int(top.size))
            chunks.append(top.astype(_INDEX_DTYPE).tobytes())
            chunks.append(flat[top].tobytes())
    header = _header(kind, enc, samples, tensors, counts)
    return _PREFIX.pack(MAGIC, len(header)) + header + b"".join(chunks)


def _decode(
    data: bytes,
    kind: str,
    expected_shapes: Mapping[str, tuple[int, ...]] | None,
    expected_hash: bytes | None,
    limits: Limits,
) -> Delta:
    if len(data) > limits.max_bytes:
        raise DeltaTooLarge(f"{len(data)} bytes > {limits.max_bytes}")
    if expected_hash is not None:  # bytes nobody committed to are not worth parsing
        digest = keccak(data)
        if digest != expected_hash:
            raise DeltaHashMismatch(f"hash {digest.hex()} != committed {expected_hash.hex()}")
    if len(data) < _PREFIX.size:
        raise MalformedDelta("shorter than the fixed prefix")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MalformedDelta("bad magic")
    if header_len > limits.max_header_bytes:
        raise DeltaTooLarge(f"header {header_len} bytes > {limits.max_header_bytes}")
    body_at = _PREFIX.size + header_len
    if body_at > len(data):
        raise MalformedDelta("truncated header")
    raw_header = data[_PREFIX.size : body_at]
    fields = _unpack_header(raw_header, limits)
    enc, names, shapes, counts = _check_fields(fields, kind, limits)
    tensors_shapes = dict(zip(names, shapes, strict=True))
    if raw_header != _header(kind, enc, fields["n"], _placeholders(tensors_shapes), counts):
        raise NonCanonicalDelta("header is not in canonical form")
    if expected_shapes is not None:
        problem = layout_mismatch(expected_shapes, tensors_shapes)
        if problem is not None:
            raise DeltaShapeMismatch(problem)
    bound = MAX_DELTA_VALUE if kind == "delta" else math.inf
    tensors = _read_body(memoryview(data)[body_at:], enc, tensors_shapes, counts, bound)
    digest = expected_hash if expected_hash is not None else keccak(data)  # hashed last: costly
    return Delta(tensors=tensors, samples=fields["n"], encoding=enc, hash=digest)


def _unpack_header(raw: bytes, limits: Limits) -> dict[str, Any]:
    try:
        fields = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_name_len,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=max(limits.max_tensors, limits.max_ndim),
            max_map_len=16,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedDelta(f"header does not unpack: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedDelta("header is not a map")
    return fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(
    fields: dict[str, Any], kind: str, limits: Limits
) -> tuple[str, list[str], list[tuple[int, ...]], list[int]]:
    if fields.get("v") != VERSION:
        raise UnsupportedDeltaVersion(f"version {fields.get('v')!r}")
    if fields.get("kind") != kind:
        raise MalformedDelta(f"kind {fields.get('kind')!r}, expected {kind!r}")
    enc = fields.get("enc")
    if enc not in ENCODINGS or (kind == "model" and enc != "f32"):
        raise UnsupportedEncoding(f"encoding {enc!r}")
    wanted = {"v", "kind", "enc", "n", "names", "dtypes", "shapes"} | (
        {"counts"} if enc == "topk" else set()
    )
    if set(fields) != wanted:
        raise MalformedDelta(f"header keys {sorted(fields)}, expected {sorted(wanted)}")
    n, names, dtypes, shapes = fields["n"], fields["names"], fields["dtypes"], fields["shapes"]
    if not (_is_int(n) and 0 <= n <= MAX_SAMPLES) or (kind == "model" and n != 0):
        raise MalformedDelta(f"bad sample count {n!r}")
    if not all(isinstance(x, list) for x in (names, dtypes, shapes)):
        raise MalformedDelta("names, dtypes and shapes must be arrays")
    if not (len(names) == len(dtypes) == len(shapes)) or len(names) > limits.max_tensors:
        raise MalformedDelta("names, dtypes and shapes differ in length or are too many")
    if not all(isinstance(x, str) and 0 < len(x) <= limits.max_name_len for x in names):
        raise MalformedDelta("tensor names must be non-empty strings")
    if any(a >= b for a, b in zip(names, names[1:], strict=False)):
        raise NonCanonicalDelta("tensor names are not strictly ascending")
    for dtype in dtypes:
        if not isinstance(dtype, str) or dtype not in _NUMPY_DTYPE:
            raise DisallowedDtype(f"dtype {dtype!r} is not allowed")
        if dtype != _VALUE_DTYPE[enc]:
            raise DisallowedDtype(f"dtype {dtype!r} does not go with encoding {enc!r}")
    checked = [_check_shape(s, limits) for s in shapes]
    if sum(math.prod(s) for s in checked) > limits.max_elements:
        raise DeltaTooLarge(f"more than {limits.max_elements} elements")
    counts: list[int] = []
    if enc == "topk":
        counts = fields["counts"]
        if not (isinstance(counts, list) and len(counts) == len(checked)):
            raise MalformedDelta("counts must be an array, one per tensor")
        for count, shape in zip(counts, checked, strict=True):
            if not (_is_int(count) and 0 <= count <= math.prod(shape)):
                raise MalformedDelta(f"bad top-k count {count!r} for shape {shape}")
    return enc, names, checked, counts


def _check_shape(shape: Any, limits: Limits) -> tuple[int, ...]:
    if not (isinstance(shape, list) and len(shape) <= limits.max_ndim):
        raise MalformedDelta(f"bad shape {shape!r}")
    if not all(_is_int(d) and 0 <= d <= limits.max_elements for d in shape):
        raise MalformedDelta(f"bad shape {shape!r}")
    # Zero dims aside too: numpy cannot shape even an empty array past its index range.
    if math.prod(d for d in shape if d) > limits.max_elements:
        raise DeltaTooLarge(f"shape {shape!r} spans more than {limits.max_elements} elements")
    return tuple(shape)


def _placeholders(tensors_shapes: dict[str, tuple[int, ...]]) -> Tensors:
    # Zero-stride views: carry the shape for re-encoding the header, allocate nothing.
    one = np.zeros(1, np.float32)
    return {
        name: np.lib.stride_tricks.as_strided(one, shape, (0,) * len(shape))
        for name, shape in tensors_shapes.items()
    }


def _read_body(
    body: memoryview,
    enc: str,
    shapes: dict[str, tuple[int, ...]],
    counts: list[int],
    bound: float,
) -> Tensors:
    if enc == "topk":
        sizes = [c * (_INDEX_DTYPE.itemsize + 4) for c in counts]
    else:
        itemsize = _NUMPY_DTYPE[_VALUE_DTYPE[enc]].itemsize
        sizes = [math.prod(s) * itemsize for s in shapes.values()]
    if sum(sizes) != len(body):
        raise DeltaLengthMismatch(f"body is {len(body)} bytes, header says {sum(sizes)}")
    tensors: Tensors = {}
    at = 0
    for i, (name, shape) in enumerate(shapes.items()):
        chunk = body[at : at + sizes[i]]
        at += sizes[i]
        if enc == "topk":
            array = _scatter(chunk, counts[i], shape, name)
        else:
            values = np.frombuffer(chunk, dtype=_NUMPY_DTYPE[_VALUE_DTYPE[enc]])
            array = values.astype(np.float32).reshape(shape)
        if not np.isfinite(array).all():
            raise NonFiniteDelta(f"{name} has NaN or infinite values")
        if array.size and float(np.abs(array).max()) > bound:
            raise DeltaOutOfBounds(f"{name} has a value beyond +-{bound:g}")
        tensors[name] = array
    return tensors


def _scatter(chunk: memoryview, count: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    indices = np.frombuffer(chunk[: 4 * count], dtype=_INDEX_DTYPE)
    values = np.frombuffer(chunk[4 * count :], dtype="<f4")
    size = math.prod(shape)
    if count and (indices[-1] >= size or (np.diff(indices.astype(np.int64)) <= 0).any()):
        raise NonCanonicalDelta(f"{name}: top-k indices out of range or not ascending")
    dense = np.zeros(size, np.float32)
    dense[indices] = values
    return dense.reshape(shape)
