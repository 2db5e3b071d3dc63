"""Fuzz targets of the learning layer: the delta codec, delta pushes and fetch requests."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
from hypothesis import strategies as st

from flockd.bench._fuzz_base import (
    MSGPACK_EXPANSION,
    MSGPACK_VALUES,
    Target,
    decoder_check,
    linear_bound,
    msgpack_messages,
    mutate,
    mutate_bytes,
    pack,
)
from flockd.fl import codec
from flockd.tasks import exchange

# Small caps, so that a decoder allocating up to its caps stays visible against the bound.
LIMITS = codec.Limits(max_bytes=1 << 20, max_header_bytes=16 << 10, max_elements=4096)
_ELEMENT_BYTES = 4 * 4  # float32 values, plus numpy's temporaries over them

DeltaCase = tuple[bytes, str, dict[str, tuple[int, ...]] | None, bytes | None]

_SHAPES = st.lists(st.integers(0, 5), max_size=3).map(tuple)
_NAMES = st.sampled_from(["a", "a.w", "b", "conv.bias", "é", "z" * 40]) | st.text(min_size=1, max_size=8)


@st.composite
def _deltas(draw: st.DrawFn) -> DeltaCase:
    """A valid encoding of random tensors, then mutated in its header fields, header bytes,
    prefix or body; decoded with or without the model's layout and a commitment."""
    layout = draw(st.dictionaries(_NAMES, _SHAPES, min_size=1, max_size=3))
    tensors = {
        name: np.asarray(
            draw(st.lists(st.floats(-60000, 60000, width=32), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
            dtype=np.float32,
        ).reshape(shape)
        for name, shape in layout.items()
    }
    kind = draw(st.sampled_from(["delta", "model"]))
    if kind == "model":
        data = codec.encode_state(tensors)
    else:
        encoding = draw(st.sampled_from(codec.ENCODINGS))
        data = codec.encode_delta(
            tensors, samples=draw(st.integers(0, 2**32 - 1)), encoding=encoding,
            topk_fraction=draw(st.floats(0.01, 1.0)),
        )
    data = _mutate_delta(draw, data)
    expected = dict(sorted(layout.items())) if draw(st.booleans()) else None
    commitment = draw(st.sampled_from([None, None, None, codec.delta_hash(data), bytes(32)]))
    return data, kind, expected, commitment


def _mutate_delta(draw: st.DrawFn, data: bytes) -> bytes:
    (header_len,) = struct.unpack_from("<I", data, 4)
    header, body = data[8 : 8 + header_len], data[8 + header_len :]
    layer = draw(st.sampled_from(("fields", "fields", "header bytes", "prefix", "body", "all")))
    if layer == "fields":
        fields = msgpack.unpackb(header, raw=False)
        header = pack(mutate(draw, fields, MSGPACK_VALUES))
    elif layer == "header bytes":
        header = mutate_bytes(draw, header)
    elif layer == "body":
        body = mutate_bytes(draw, body, splices=(b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x7c"))
    length = len(header)
    if layer == "prefix":
        length = draw(st.sampled_from([0, length - 1, length + 1, 2**32 - 1, LIMITS.max_header_bytes + 1]))
    data = b"FLKD" + struct.pack("<I", max(0, length)) + header + body
    return mutate_bytes(draw, data) if layer == "all" else data


def _decode(case: DeltaCase) -> object:
    data, kind, expected, commitment = case
    decode = codec.decode_state if kind == "model" else codec.decode_delta
    return decode(data, expected_shapes=expected, expected_hash=commitment, limits=LIMITS)


def _codec_target() -> Target:
    random_cases = st.tuples(
        st.binary(max_size=256).map(lambda b: b"FLKD" + b), st.sampled_from(["delta", "model"]),
        st.none(), st.none(),
    )
    return Target(
        "fl.delta",
        random_cases | _deltas(),
        decoder_check(
            _decode,
            (codec.DeltaError,),
            bound=lambda size: MSGPACK_EXPANSION * size + _ELEMENT_BYTES * LIMITS.max_elements + (1 << 20),
            size=lambda case: len(case[0]),
        ),
        examples=300,
    )


def _push_target() -> Target:
    base: Any = st.tuples(
        st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=20, max_size=20),
        st.binary(min_size=1, max_size=64),
    ).map(list)
    return Target(
        "fl.delta_push",
        msgpack_messages(base),
        decoder_check(exchange.decode_push, (exchange.ExchangeError,), bound=linear_bound(MSGPACK_EXPANSION)),
    )


def _fetch_target() -> Target:
    base: Any = st.tuples(st.sampled_from(["delta", "model"]), st.binary(min_size=32, max_size=32)).map(list)
    return Target(
        "fl.fetch",
        msgpack_messages(base, random_size=80),
        decoder_check(exchange.decode_fetch, (exchange.ExchangeError,), bound=linear_bound(MSGPACK_EXPANSION)),
    )


def targets() -> list[Target]:
    return [_codec_target(), _push_target(), _fetch_target()]
