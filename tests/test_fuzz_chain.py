"""Fuzzing the chain's decoders: gossiped transactions and blocks (mutated and re-sealed
by the authority), sync messages and batches, the genesis file.

The targets (inputs and property) live in flockd/bench/_fuzz_chain.py; `scripts/bench
fuzz` runs the same targets for much longer."""

from __future__ import annotations

import json

import pytest

from flockd.bench import _fuzz_chain
from flockd.bench._fuzz_base import Target, run_target
from flockd.chain.node.genesis import Genesis, GenesisError

TARGETS = _fuzz_chain.targets()
GENESIS = next(t for t in TARGETS if t.name == "chain.genesis")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_decoder_raises_only_its_errors_within_its_allocation_bound(target: Target) -> None:
    run_target(target, target.examples)


def valid_genesis() -> dict:
    return json.loads(_fuzz_chain.world().source.genesis.to_json())


# Found by fuzzing: json.loads recursed without bound (RecursionError; past py-evm's raised
# recursion limit, a C stack overflow that kills the process).
@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_genesis_is_a_genesis_error(depth: int) -> None:
    obj = valid_genesis()
    text = json.dumps(obj)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(GenesisError):
        Genesis.from_json(text)
    GENESIS.check(text.encode())


# Found by fuzzing: a hex balance of 5,000 digits parses, but printing it in decimal for
# the error message raised ValueError (Python's int max str digits), not GenesisError.
def test_huge_hex_quantity_is_a_genesis_error() -> None:
    obj = valid_genesis()
    address = next(iter(obj["alloc"]))
    obj["alloc"][address]["balance"] = "0x" + "9" * 5000
    text = json.dumps(obj)
    with pytest.raises(GenesisError, match="balance"):
        Genesis.from_json(text)
    GENESIS.check(text.encode())


# Found while fuzzing: bytes.fromhex skips whitespace, so "0x" + 40 characters may decode to
# fewer than 20 bytes; as an alloc key that raised eth-utils' ValueError, not GenesisError.
@pytest.mark.parametrize("where", ["alloc", "authorities"])
def test_address_with_whitespace_is_a_genesis_error(where: str) -> None:
    obj = valid_genesis()
    short = "0x" + "00" * 19 + "  "
    if where == "alloc":
        obj["alloc"][short] = {}
    else:
        obj["authorities"].append(short)
    text = json.dumps(obj)
    with pytest.raises(GenesisError, match="not an address"):
        Genesis.from_json(text)
    GENESIS.check(text.encode())
