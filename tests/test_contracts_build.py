"""Artifacts (fresh, loadable without vyper, malformed ones refused), the stake token,
and the genesis alloc of the contracts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd.chain.client import artifacts, build_contracts
from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.artifacts import (
    CONTRACT_NAMES,
    STAKE_TOKEN,
    TASK_REGISTRY,
    ArtifactError,
    load,
    parse_artifact,
)
from flockd.chain.node.deploy import ScratchChain, TxFailed, genesis_contracts
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS

TOKEN = load(STAKE_TOKEN)
REGISTRY = load(TASK_REGISTRY)
KEYS = [PrivateKey(keccak(b"holder%d" % i)) for i in range(3)]
ADDRS = [k.public_key.to_canonical_address() for k in KEYS]


# --- artifacts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_is_current(name: str) -> None:
    assert artifacts.stale_reason(name) is None
    assert build_contracts.main(["--check"]) == 0


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_recompiling_reproduces_the_artifact(name: str) -> None:
    pytest.importorskip("vyper")
    fresh = build_contracts.compile_contract(name)
    stored = json.loads(artifacts.artifact_path(name).read_text())
    assert fresh == stored


def test_stale_artifacts_are_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(artifacts.CONTRACTS_DIR, tmp_path / "contracts")
    monkeypatch.setattr(artifacts, "CONTRACTS_DIR", tmp_path / "contracts")
    monkeypatch.setattr(artifacts, "BUILD_DIR", tmp_path / "contracts" / "build")
    source = artifacts.source_path(STAKE_TOKEN)
    source.write_text(source.read_text() + "\n# edited\n")
    assert "source changed" in (artifacts.stale_reason(STAKE_TOKEN) or "")
    assert build_contracts.main(["--check"]) == 1
    built = artifacts.artifact_path(TASK_REGISTRY)
    doc = json.loads(built.read_text())
    built.write_text(json.dumps(doc | {"compiler": "vyper 0.4.2"}))
    assert "vyper 0.4.2" in (artifacts.stale_reason(TASK_REGISTRY) or "")
    built.unlink()
    assert "missing" in (artifacts.stale_reason(TASK_REGISTRY) or "")


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"abi": "nope"},
        {"abi": [], "source_sha256": "x", "compiler": "vyper 0.4.3"},
        {"abi": [], "source_sha256": "x", "compiler": "c", "bytecode": "00", "bytecode_runtime": "0x"},
        {"abi": [], "source_sha256": "x", "compiler": "c", "bytecode": "0xzz", "bytecode_runtime": "0x"},
        {"abi": [], "source_sha256": 1, "compiler": "c", "bytecode": "0x", "bytecode_runtime": "0x"},
    ],
)
def test_malformed_artifacts_are_refused(doc: Any) -> None:
    with pytest.raises(ArtifactError):
        parse_artifact("X", doc)


def test_abi_helpers() -> None:
    with pytest.raises(ArtifactError):
        REGISTRY.function("no_such_function")
    assert REGISTRY.decode_log([keccak(b"unknown")], b"") is None
    assert REGISTRY.decode_log([], b"") is None
    topic = artifacts.event_topic(REGISTRY.event("RoundOpened"))
    with pytest.raises(ArtifactError):
        REGISTRY.decode_log([topic], bytes(32))  # its two indexed arguments are missing


# --- the stake token -----------------------------------------------------------------------


@pytest.fixture
def token() -> tuple[ScratchChain, bytes]:
    chain = ScratchChain(funded=ADDRS)
    address = chain.deploy(KEYS[0], TOKEN, "Stake", "STK", ADDRS[:2], [1000, 500])
    return chain, address


def call(chain: ScratchChain, address: bytes, fn: str, *args: Any) -> Any:
    return TOKEN.decode_output(fn, chain.call(address, TOKEN.encode_call(fn, *args)))[0]


def test_token_metadata_and_supply(token: tuple[ScratchChain, bytes]) -> None:
    chain, address = token
    assert call(chain, address, "name") == "Stake"
    assert call(chain, address, "symbol") == "STK"
    assert call(chain, address, "decimals") == 18
    assert call(chain, address, "totalSupply") == 1500
    assert [call(chain, address, "balanceOf", a) for a in ADDRS] == [1000, 500, 0]


def test_token_transfers_and_allowances(token: tuple[ScratchChain, bytes]) -> None:
    chain, address = token

    def tx(who: int, fn: str, *args: Any) -> Any:
        return chain.transact(KEYS[who], address, TOKEN.encode_call(fn, *args))

    result = tx(0, "transfer", ADDRS[2], 100).check()
    (name, ev), = [TOKEN.decode_log(t, d) for _, t, d in result.logs()]  # type: ignore[misc]
    assert name == "Transfer" and ev["value"] == 100
    assert call(chain, address, "balanceOf", ADDRS[2]) == 100
    with pytest.raises(TxFailed, match="insufficient balance"):
        tx(2, "transfer", ADDRS[0], 101).check()
    with pytest.raises(TxFailed, match="zero address"):
        tx(0, "transfer", bytes(20), 1).check()
    tx(0, "approve", ADDRS[1], 50).check()
    assert call(chain, address, "allowance", ADDRS[0], ADDRS[1]) == 50
    with pytest.raises(TxFailed, match="insufficient allowance"):
        tx(1, "transferFrom", ADDRS[0], ADDRS[2], 51).check()
    tx(1, "transferFrom", ADDRS[0], ADDRS[2], 20).check()
    assert call(chain, address, "allowance", ADDRS[0], ADDRS[1]) == 30
    tx(0, "approve", ADDRS[1], 2**256 - 1).check()
    tx(1, "transferFrom", ADDRS[0], ADDRS[2], 20).check()
    assert call(chain, address, "allowance", ADDRS[0], ADDRS[1]) == 2**256 - 1
    assert call(chain, address, "balanceOf", ADDRS[0]) == 860


def test_token_constructor_checks_lengths() -> None:
    chain = ScratchChain(funded=ADDRS)
    with pytest.raises(TxFailed, match="differ in length"):
        chain.deploy(KEYS[0], TOKEN, "S", "S", ADDRS[:2], [1])


# --- genesis alloc -----------------------------------------------------------------------------


def test_genesis_alloc_is_deterministic_and_works() -> None:
    holders = {ADDRS[0]: 10**24, ADDRS[1]: 7}
    alloc = genesis_contracts(holders)
    assert alloc == genesis_contracts(dict(reversed(holders.items())))
    assert set(alloc) == {STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS}
    for account in alloc.values():
        assert account["nonce"] == 1 and account["balance"] == 0 and account["code"]
    assert alloc[STAKE_TOKEN_ADDRESS]["code"] == TOKEN.bytecode_runtime
    # Vyper appends the immutables (token, verifier) to the runtime code
    immutables = bytes(12) + STAKE_TOKEN_ADDRESS + bytes(12) + VRF_PRECOMPILE_ADDRESS
    assert alloc[TASK_REGISTRY_ADDRESS]["code"] == REGISTRY.bytecode_runtime + immutables
    # a chain whose genesis holds the alloc runs the contracts as deployed
    chain = ScratchChain(funded=ADDRS, alloc=alloc)
    assert call(chain, STAKE_TOKEN_ADDRESS, "balanceOf", ADDRS[0]) == 10**24
    assert call(chain, STAKE_TOKEN_ADDRESS, "totalSupply") == 10**24 + 7
    assert call(chain, STAKE_TOKEN_ADDRESS, "symbol") == "FLOCK"

    def view(fn: str) -> Any:
        return REGISTRY.decode_output(fn, chain.call(TASK_REGISTRY_ADDRESS, REGISTRY.encode_call(fn)))[0]

    assert view("token") == "0x" + STAKE_TOKEN_ADDRESS.hex()
    assert view("vrf_verifier") == "0x" + VRF_PRECOMPILE_ADDRESS.hex()
    assert view("task_count") == 0


def test_genesis_holder_limit() -> None:
    with pytest.raises(ValueError, match="at most 64"):
        genesis_contracts({bytes([i]) * 20: 1 for i in range(1, 66)})


def test_the_registry_fits_eip170() -> None:
    """EIP-170: no chain deploys runtime code above 24,576 bytes (anvil included)."""
    assert len(REGISTRY.bytecode_runtime) <= 24_576
