"""Delta codec: round trips, and every kind of bad input rejected with its own error."""

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flockd.fl.codec import (
    MAX_DELTA_VALUE,
    DeltaError,
    DeltaHashMismatch,
    DeltaLengthMismatch,
    DeltaOutOfBounds,
    DeltaShapeMismatch,
    DeltaTooLarge,
    DisallowedDtype,
    Limits,
    MalformedDelta,
    NonCanonicalDelta,
    NonFiniteDelta,
    UnsupportedDeltaVersion,
    UnsupportedEncoding,
    decode_delta,
    decode_state,
    delta_hash,
    delta_limits,
    encode_delta,
    encode_state,
    max_delta_size,
)


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layer.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "layer.bias": rng.normal(size=(4,)).astype(np.float32),
        "scale": np.array(0.5, np.float32),
    }


SHAPES = {"layer.weight": (4, 3), "layer.bias": (4,), "scale": ()}


def split(data: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack_from("<I", data, 4)
    return msgpack.unpackb(data[8 : 8 + header_len]), data[8 + header_len :]


def rebuild(header: dict, body: bytes) -> bytes:
    raw = msgpack.packb(header, use_bin_type=True)
    return b"FLKD" + struct.pack("<I", len(raw)) + raw + body


def test_f32_round_trip_is_exact_and_canonical():
    data = encode_delta(sample(), samples=42)
    delta = decode_delta(data, expected_shapes=SHAPES)
    assert list(delta.tensors) == sorted(SHAPES)
    for name, array in sample().items():
        np.testing.assert_array_equal(delta.tensors[name], array)
        assert delta.tensors[name].dtype == np.float32
    assert delta.samples == 42 and delta.encoding == "f32"
    assert delta.hash == delta_hash(data)
    # Insertion order of the input does not change the bytes.
    assert encode_delta(dict(reversed(list(sample().items()))), samples=42) == data


def test_f16_round_trip_within_half_precision():
    delta = decode_delta(encode_delta(sample(), encoding="f16"))
    for name, array in sample().items():
        np.testing.assert_allclose(delta.tensors[name], array, rtol=1e-3, atol=1e-3)


def test_topk_keeps_the_largest_entries():
    tensors = {"w": np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]], np.float32)}
    data = encode_delta(tensors, encoding="topk", topk_fraction=2 / 6)
    delta = decode_delta(data)
    expected = np.array([[0, -5.0, 0], [3.0, 0, 0]], np.float32)
    np.testing.assert_array_equal(delta.tensors["w"], expected)
    big = {"w": np.random.default_rng(1).normal(size=1000).astype(np.float32)}
    sparse = encode_delta(big, encoding="topk", topk_fraction=0.1)
    assert len(sparse) < len(encode_delta(big)) / 4
    assert np.count_nonzero(decode_delta(sparse).tensors["w"]) == 100


def test_model_state_and_delta_kinds_do_not_mix():
    with pytest.raises(MalformedDelta):
        decode_delta(encode_state(sample()))
    with pytest.raises(MalformedDelta):
        decode_state(encode_delta(sample()))
    state = decode_state(encode_state(sample()), expected_shapes=SHAPES)
    np.testing.assert_array_equal(state["scale"], sample()["scale"])


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
        hnp.arrays(
            np.float32,
            hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
            elements=st.floats(-1e4, 1e4, width=32),
        ),
        min_size=1,
        max_size=4,
    ),
    samples=st.integers(0, 2**32 - 1),
)
def test_hypothesis_round_trip(arrays, samples):
    data = encode_delta(arrays, samples=samples)
    delta = decode_delta(data, expected_shapes={k: v.shape for k, v in arrays.items()})
    assert delta.samples == samples
    for name, array in arrays.items():
        np.testing.assert_array_equal(delta.tensors[name], array)
    # Re-encoding the decoded delta reproduces the same bytes (one encoding per delta).
    assert encode_delta(delta.tensors, samples=samples) == data


def test_forged_bytes_do_not_match_the_commitment():
    data = encode_delta(sample())
    forged = data[:-4] + struct.pack("<f", 9.0)
    with pytest.raises(DeltaHashMismatch):
        decode_delta(forged, expected_hash=delta_hash(data))
    decode_delta(data, expected_hash=delta_hash(data))


def test_changed_shape_is_rejected():
    data = encode_delta(sample())
    with pytest.raises(DeltaShapeMismatch):
        decode_delta(data, expected_shapes={**SHAPES, "layer.weight": (3, 4)})
    with pytest.raises(DeltaShapeMismatch):
        decode_delta(data, expected_shapes={**SHAPES, "extra": (1,)})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad):
    header, body = split(encode_delta(sample()))
    forged = rebuild(header, body[:-4] + struct.pack("<f", bad))
    with pytest.raises(NonFiniteDelta):
        decode_delta(forged)
    with pytest.raises(NonFiniteDelta):
        encode_delta({"x": np.array([bad], np.float32)})


@pytest.mark.parametrize("encoding", ["f32", "f16", "topk"])
def test_values_beyond_the_bound_are_refused_both_ways(encoding):
    edge = np.array([-MAX_DELTA_VALUE, MAX_DELTA_VALUE], np.float32)
    data = encode_delta({"x": edge}, encoding=encoding, topk_fraction=1.0)
    np.testing.assert_array_equal(decode_delta(data).tensors["x"], edge)
    beyond = np.nextafter(np.float32(MAX_DELTA_VALUE), np.float32(np.inf))
    with pytest.raises(DeltaOutOfBounds):
        encode_delta({"x": np.array([1.0, -beyond], np.float32)}, encoding=encoding)
    header, body = split(encode_delta(sample()))
    forged = rebuild(header, body[:-4] + struct.pack("<f", beyond))
    with pytest.raises(DeltaOutOfBounds):
        decode_delta(forged)
    # A model state is not a delta: its values need only be finite.
    assert decode_state(encode_state({"x": np.array([1e30], np.float32)}))["x"][0] == np.float32(
        1e30
    )


def test_oversized_inputs_are_rejected_before_parsing():
    data = encode_delta(sample())
    with pytest.raises(DeltaTooLarge):
        decode_delta(data, limits=Limits(max_bytes=len(data) - 1))
    with pytest.raises(DeltaTooLarge):
        decode_delta(b"FLKD" + struct.pack("<I", 2**31) + b"\x00" * 16)
    header, body = split(data)
    header["shapes"][0] = [1 << 20, 1 << 20]  # declares 2**40 elements with a tiny body
    with pytest.raises(DeltaTooLarge):
        decode_delta(rebuild(header, body))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"FLK",
        b"NOPE" + struct.pack("<I", 0),
        b"FLKD" + struct.pack("<I", 100) + b"\x80",  # header longer than the data
        b"FLKD" + struct.pack("<I", 1) + b"\xc1",  # reserved msgpack byte
        b"FLKD" + struct.pack("<I", 1) + b"\x90",  # an array, not a map
        b"FLKD" + struct.pack("<I", 3) + b"\x91" * 3,  # nested garbage
    ],
)
def test_malformed_bytes_are_rejected(data):
    with pytest.raises(MalformedDelta):
        decode_delta(data)


def test_deeply_nested_header_is_rejected():
    depth = 100_000
    raw = b"\x91" * depth + b"\x00"
    with pytest.raises(MalformedDelta):
        decode_delta(b"FLKD" + struct.pack("<I", len(raw)) + raw)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("v", 2, UnsupportedDeltaVersion),
        ("enc", "bf16", UnsupportedEncoding),
        ("dtypes", ["float64", "float32", "float32"], DisallowedDtype),
        ("dtypes", ["float16", "float16", "float16"], DisallowedDtype),
        ("dtypes", [[], None, None], DisallowedDtype),  # found by the fuzz below
        ("names", ["scale", "layer.weight", "layer.bias"], NonCanonicalDelta),
        ("names", ["a", "a", "b"], NonCanonicalDelta),
        ("names", ["a", 5, "b"], MalformedDelta),
        ("n", -1, MalformedDelta),
        ("n", "many", MalformedDelta),
        ("shapes", [[4], [4, -3], []], MalformedDelta),
        ("shapes", [[4], [4, 3]], MalformedDelta),
        ("shapes", [[4], [4, 3], [1] * 9], MalformedDelta),
        ("kind", "model", MalformedDelta),
        ("extra", 1, MalformedDelta),
    ],
)
def test_bad_header_fields_have_specific_errors(field, value, error):
    header, body = split(encode_delta(sample()))
    header[field] = value
    with pytest.raises(error):
        decode_delta(rebuild(header, body))


def test_non_canonical_header_bytes_are_rejected():
    header, body = split(encode_delta(sample()))
    reordered = dict(reversed(list(header.items())))
    with pytest.raises(NonCanonicalDelta):
        decode_delta(rebuild(reordered, body))


@pytest.mark.parametrize("cut", [-1, 1])
def test_body_length_must_match_exactly(cut):
    data = encode_delta(sample())
    forged = data[:cut] if cut < 0 else data + b"\x00" * cut
    with pytest.raises(DeltaLengthMismatch):
        decode_delta(forged)


def test_topk_indices_must_be_ascending_and_in_range():
    data = encode_delta(
        {"w": np.arange(1, 11, dtype=np.float32)}, encoding="topk", topk_fraction=0.2
    )
    header, body = split(data)
    indices, values = body[:8], body[8:]
    for bad in ([9, 8], [9, 9], [8, 10]):
        with pytest.raises(NonCanonicalDelta):
            decode_delta(rebuild(header, struct.pack("<2I", *bad) + values))
    assert decode_delta(rebuild(header, indices + values)).tensors["w"][9] == 10.0


def test_every_rejection_is_a_delta_error():
    for cls in (DeltaTooLarge, MalformedDelta, NonFiniteDelta, DeltaHashMismatch):
        assert issubclass(cls, DeltaError)


def test_known_answers_from_the_spec():
    # The worked example of protocol/spec/delta.md.
    tensors = {"b": np.array([0.5], np.float32), "a.w": np.array([[1.0, -2.0]], np.float32)}
    f32 = encode_delta(tensors, samples=3)
    assert f32.hex() == (
        "464c4b444c00000087a17601a46b696e64a564656c7461a3656e63a3663332a16e03a56e616d"
        "657392a3612e77a162a664747970657392a7666c6f61743332a7666c6f61743332a673686170"
        "65739292010291010000803f000000c00000003f"
    )
    assert delta_hash(f32).hex() == (
        "7a66e202edf2e01b0e52bde75b631642dd47402caae57420497b19fd3436f3a4"
    )
    topk = encode_delta(tensors, samples=3, encoding="topk", topk_fraction=0.5)
    assert delta_hash(topk).hex() == (
        "756f62b141f57601126c9479e42117a1fcebd9df5e833a85a2552ff873d649a2"
    )
    from flockd.fl.checkpoint import model_hash

    assert model_hash(tensors).hex() == (
        "0368c3fdd12a740f032bca585b1fb921ba744e6de3ca37e228a9c5e7daa85b55"
    )


# --- structure-aware fuzzing: a valid frame with hostile parts --------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)


def decodes_cleanly_or_refuses(data: bytes) -> None:
    """The decoder's contract on any input: a DeltaError, or a delta with the model's
    layout whose every value is finite and within the bound, in its one encoding."""
    try:
        delta = decode_delta(data, expected_shapes=SHAPES)
    except DeltaError:
        return
    for array in delta.tensors.values():
        assert np.isfinite(array).all() and (np.abs(array) <= MAX_DELTA_VALUE).all()
    if delta.encoding != "topk":  # top-k's fraction is not in the header
        again = encode_delta(delta.tensors, samples=delta.samples, encoding=delta.encoding)
        assert again == data


@settings(max_examples=200, deadline=None)
@given(encoding=st.sampled_from(["f32", "f16", "topk"]), body=st.data())
def test_hostile_bodies_under_a_valid_header(encoding, body):
    header, honest = split(encode_delta(sample(), encoding=encoding, topk_fraction=0.5))
    size = len(honest)
    raw = body.draw(
        st.one_of(st.binary(min_size=size, max_size=size), st.binary(max_size=2 * size))
    )
    decodes_cleanly_or_refuses(rebuild(header, raw))


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["v", "kind", "enc", "n", "names", "dtypes", "shapes", "counts", "x"]),
    value=msgpack_values,
)
def test_hostile_header_fields(field, value):
    header, body = split(encode_delta(sample()))
    header[field] = value
    try:
        data = rebuild(header, body)
    except (TypeError, ValueError, OverflowError):
        return  # msgpack cannot even write it
    decodes_cleanly_or_refuses(data)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=256))
def test_arbitrary_bytes_after_the_magic_are_refused(raw):
    with pytest.raises(DeltaError):
        decode_delta(b"FLKD" + raw, expected_shapes=SHAPES)


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=12),
        hnp.arrays(
            np.float32,
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
            elements=st.floats(-1e4, 1e4, width=32),
        ),
        min_size=1,
        max_size=4,
    ),
    samples=st.integers(0, 2**32 - 1),
    encoding=st.sampled_from(["f32", "f16", "topk"]),
    fraction=st.floats(0.01, 1.0),
)
def test_max_delta_size_bounds_every_encoding_of_the_layout(arrays, samples, encoding, fraction):
    layout = {k: v.shape for k, v in arrays.items()}
    data = encode_delta(arrays, samples=samples, encoding=encoding, topk_fraction=fraction)
    assert len(data) <= max_delta_size(layout)


def test_max_delta_size_is_tight_and_refuses_bigger_bytes_before_hashing():
    layout = {"w": (3, 4), "b": (4,)}
    full = {"w": np.ones((3, 4), np.float32), "b": np.ones(4, np.float32)}
    largest = encode_delta(full, samples=2**32 - 1, encoding="topk", topk_fraction=1.0)
    assert len(largest) == max_delta_size(layout)
    with pytest.raises(DeltaTooLarge):
        decode_delta(largest + b"\x00", expected_shapes=layout, limits=delta_limits(layout))
    assert decode_delta(largest, expected_shapes=layout, limits=delta_limits(layout)).samples == 2**32 - 1
