"""Fuzzing the local endpoints: control-socket requests (dispatcher, line framing, a real
Unix socket), the JSON decoder, Ethereum JSON-RPC bodies and a real HTTP server.

The targets (inputs and property) live in flockd/bench/_fuzz_rpc.py; `scripts/bench fuzz`
runs the same targets for much longer."""

from __future__ import annotations

import json

import pytest

from flockd import safejson
from flockd.bench import _fuzz_rpc
from flockd.bench._fuzz_base import Target, run_target

TARGETS = _fuzz_rpc.targets()
SAFEJSON = next(t for t in TARGETS if t.name == "rpc.safejson")
ETH_BODY = next(t for t in TARGETS if t.name == "eth.body")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_decoder_raises_only_its_errors_within_its_allocation_bound(target: Target) -> None:
    run_target(target, target.examples)


# Found by fuzzing: json.loads guesses UTF-16 and UTF-32 from the bytes, while the depth
# check reads them as UTF-8; there an escaped quote's 0x00 byte ended the "string" early
# and the brackets after it went uncounted. Deep enough, such a document overflows the C
# stack of the daemon (py-evm raises the recursion limit).
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32"])
def test_json_in_other_encodings_cannot_hide_its_depth(encoding: str) -> None:
    depth = 2 * safejson.MAX_DEPTH
    document = ('["\\"",' + "[" * depth + "]" * depth + "]").encode(encoding)
    with pytest.raises(ValueError):
        safejson.loads(document)
    SAFEJSON.check(document)


# Found by the campaign (scripts/bench fuzz): a call whose gas is below its intrinsic cost
# made py-evm raise ValidationError ("Message.gas cannot be negative"), answered as -32603
# (an internal failure); geth answers such a call with -32000 ("intrinsic gas too low").
def test_call_below_intrinsic_gas_is_a_server_error() -> None:
    call = {"from": _fuzz_rpc.ALICE.address, "to": _fuzz_rpc.BOB.address, "gas": "0x1", "data": "0x00"}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [call]}).encode()
    reply = json.loads(_fuzz_rpc.EthAPI(_fuzz_rpc.world().source).handle_body(body))
    assert reply["error"]["code"] == -32000
    ETH_BODY.check(body)
