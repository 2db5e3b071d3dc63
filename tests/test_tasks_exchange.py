"""The task layer's peer messages and task spec reject malformed, oversized and forged input."""

import msgpack
import pytest

from flockd.tasks.exchange import (
    DeltaPush,
    ExchangeError,
    FetchRequest,
    decode_fetch,
    decode_push,
    encode_fetch,
    encode_push,
)
from flockd.tasks.spec import SpecError, TaskSpec


def test_round_trips():
    push = DeltaPush(task_id=3, round=2, proposer=b"\x11" * 20, delta=b"delta-bytes")
    assert decode_push(encode_push(push)) == push
    request = FetchRequest("model", b"\x22" * 32)
    assert decode_fetch(encode_fetch(request)) == request


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"task": 1}),
        msgpack.packb([1, 2, b"\x11" * 20]),  # too short
        msgpack.packb([1, 2, b"\x11" * 20, b"d", b"extra"]),
        msgpack.packb([-1, 0, b"\x11" * 20, b"d"]),
        msgpack.packb([1, True, b"\x11" * 20, b"d"]),
        msgpack.packb([1, 0, b"\x11" * 19, b"d"]),  # not an address
        msgpack.packb([1, 0, "0x" + "11" * 20, b"d"]),  # address as text
        msgpack.packb([1, 0, b"\x11" * 20, b""]),  # empty delta
        msgpack.packb([1, 0, b"\x11" * 20, [b"nested"]]),
    ],
)
def test_malformed_delta_pushes_are_refused(data):
    with pytest.raises(ExchangeError):
        decode_push(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff" * 10,
        msgpack.packb(["weights", b"\x22" * 32]),
        msgpack.packb(["delta", b"\x22" * 31]),
        msgpack.packb(["delta", "22" * 32]),
        msgpack.packb(["delta"]),
        msgpack.packb(["delta", b"\x22" * 32]) + b"x" * 64,  # oversized
    ],
)
def test_malformed_fetch_requests_are_refused(data):
    with pytest.raises(ExchangeError):
        decode_fetch(data)


def test_task_spec_hash_pins_every_setting():
    base = TaskSpec(recipe="digits-mlp", num_nodes=4)
    assert TaskSpec.from_json(base.to_json()).spec_hash == base.spec_hash
    for changed in (
        TaskSpec(recipe="digits-mlp", num_nodes=4, rule="median"),
        TaskSpec(recipe="digits-mlp", num_nodes=4, partition="dirichlet:0.5"),
        TaskSpec(recipe="digits-mlp", num_nodes=4, config={"epochs": 1}),
        TaskSpec(recipe="digits-mlp", num_nodes=5),
    ):
        assert changed.spec_hash != base.spec_hash


@pytest.mark.parametrize(
    "data",
    [
        [],
        {},
        {"recipe": "no-such-recipe"},
        {"recipe": "digits-mlp", "rule": "mean-ish"},
        {"recipe": "digits-mlp", "partition": "dirichlet:-1"},
        {"recipe": "digits-mlp", "config": {"unknown_knob": 1}},
        {"recipe": "digits-mlp", "num_nodes": 0},
        {"recipe": "digits-mlp", "max_accuracy_drop": 2.0},
        {"recipe": "digits-mlp", "surprise": True},
    ],
)
def test_bad_task_specs_are_refused(data):
    with pytest.raises(SpecError):
        TaskSpec.from_json(data)
