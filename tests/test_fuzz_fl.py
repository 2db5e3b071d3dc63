"""Fuzzing the delta codec and the delta push / fetch messages.

The targets (inputs and property) live in flockd/bench/_fuzz_fl.py; `scripts/bench fuzz`
runs the same targets for much longer."""

from __future__ import annotations

import struct

import msgpack
import pytest

from flockd.bench import _fuzz_fl
from flockd.bench._fuzz_base import Target, run_target
from flockd.fl import codec

TARGETS = _fuzz_fl.targets()
CODEC = next(t for t in TARGETS if t.name == "fl.delta")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_decoder_raises_only_its_errors_within_its_allocation_bound(target: Target) -> None:
    run_target(target, target.examples)


def encoded(**changes: object) -> bytes:
    """A one-tensor f32 delta whose header fields are replaced by `changes`, header packed as given."""
    fields = {"v": 1, "kind": "delta", "enc": "f32", "n": 0, "names": ["a"], "dtypes": ["float32"], "shapes": [[1]]}
    fields.update(changes)
    header = msgpack.packb(fields, use_bin_type=True)
    return b"FLKD" + struct.pack("<I", len(header)) + header + b"\x00\x00\x80\x3f"


# Found by fuzzing: each raised an exception that is not a DeltaError.
@pytest.mark.parametrize(
    ("delta", "error"),
    [
        # `dtype in dict` on an unhashable dtype: TypeError.
        (encoded(dtypes=[["float32"]]), codec.DisallowedDtype),
        (encoded(dtypes=[{"k": 1}]), codec.DisallowedDtype),
        # An empty tensor whose other dimensions multiply past what numpy can index:
        # ValueError "array is too big" while re-encoding the header.
        (encoded(shapes=[[0, 2**24, 2**24, 2**24, 2**24]]), codec.DeltaTooLarge),
    ],
    ids=["list-dtype", "map-dtype", "zero-size-huge-shape"],
)
def test_fuzz_found_header_fields_raise_delta_errors(delta: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.decode_delta(delta)
    CODEC.check((delta, "delta", None, None))
