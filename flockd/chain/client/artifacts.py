"""Load the checked-in contract artifacts (ABI + bytecode) without the Vyper compiler.

An artifact is contracts/build/<Name>.json, written by `python -m flockd.chain.client.build_contracts`:
    {"contract_name", "source_path", "source_sha256", "compiler", "abi", "bytecode",
     "bytecode_runtime"}
bytecode fields are 0x-prefixed hex; bytecode is the creation code (constructor
arguments are ABI-encoded and appended to it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

REPO_ROOT = Path(__file__).resolve().parents[3]
CONTRACTS_DIR = REPO_ROOT / "contracts"
BUILD_DIR = CONTRACTS_DIR / "build"
COMPILER = "vyper 0.4.3"

STAKE_TOKEN = "StakeToken"
TASK_REGISTRY = "TaskRegistry"
ECVRF_VERIFIER = "EcvrfVerifier"  # for chains without the VRF precompile
ARENA = "Arena"  # not at genesis: deployed on demand
MARKET = "Market"  # model listings; at genesis from its own deployer (addresses.py)
CONTRACT_NAMES = (STAKE_TOKEN, TASK_REGISTRY, ECVRF_VERIFIER, ARENA, MARKET)


class ArtifactError(Exception):
    """An artifact is missing, malformed, or does not match its source."""


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    bytecode_runtime: bytes
    source_sha256: str
    compiler: str

    def function(self, name: str) -> dict[str, Any]:
        for entry in self.abi:
            if entry.get("type") == "function" and entry.get("name") == name:
                return entry
        raise ArtifactError(f"{self.name} has no function {name!r}")

    def event(self, name: str) -> dict[str, Any]:
        for entry in self.abi:
            if entry.get("type") == "event" and entry.get("name") == name:
                return entry
        raise ArtifactError(f"{self.name} has no event {name!r}")

    def deploy_data(self, *args: Any) -> bytes:
        """Creation code followed by the ABI-encoded constructor arguments."""
        ctor: dict[str, Any] = next((e for e in self.abi if e.get("type") == "constructor"), {"inputs": []})
        return self.bytecode + abi_encode(input_types(ctor), list(args))

    def encode_call(self, fn: str, *args: Any) -> bytes:
        entry = self.function(fn)
        return selector(entry) + abi_encode(input_types(entry), list(args))

    def decode_output(self, fn: str, data: bytes) -> tuple[Any, ...]:
        types = [abi_type(p) for p in self.function(fn)["outputs"]]
        return tuple(abi_decode(types, data))

    def decode_log(self, topics: list[bytes], data: bytes) -> tuple[str, dict[str, Any]] | None:
        """(event name, arguments) of a log emitted by this contract; None if unknown."""
        if not topics:
            return None
        for entry in self.abi:
            if entry.get("type") == "event" and event_topic(entry) == topics[0]:
                return entry["name"], _decode_event(entry, topics[1:], data)
        return None


def abi_type(param: dict[str, Any]) -> str:
    """The canonical type string of an ABI parameter (structs become tuples)."""
    kind: str = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple'):]}"
    return kind


def input_types(entry: dict[str, Any]) -> list[str]:
    return [abi_type(p) for p in entry.get("inputs", [])]


def signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(input_types(entry))})"


def selector(entry: dict[str, Any]) -> bytes:
    return keccak(text=signature(entry))[:4]


def event_topic(entry: dict[str, Any]) -> bytes:
    return keccak(text=signature(entry))


def _decode_event(entry: dict[str, Any], topics: list[bytes], data: bytes) -> dict[str, Any]:
    indexed = [p for p in entry["inputs"] if p["indexed"]]
    plain = [p for p in entry["inputs"] if not p["indexed"]]
    if len(topics) != len(indexed):
        raise ArtifactError(f"{entry['name']}: {len(topics)} topics for {len(indexed)} indexed")
    values: dict[str, Any] = {}
    for param, topic in zip(indexed, topics, strict=True):
        # every indexed parameter of these contracts is a static 32-byte value
        values[param["name"]] = abi_decode([abi_type(param)], topic)[0]
    decoded = abi_decode([abi_type(p) for p in plain], data)
    values.update({p["name"]: v for p, v in zip(plain, decoded, strict=True)})
    return {p["name"]: values[p["name"]] for p in entry["inputs"]}


def source_path(name: str) -> Path:
    return CONTRACTS_DIR / f"{name}.vy"


def artifact_path(name: str) -> Path:
    return BUILD_DIR / f"{name}.json"


def source_sha256(name: str) -> str:
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


def _hex(doc: dict[str, Any], key: str, name: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ArtifactError(f"{name}: {key} is not 0x-hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ArtifactError(f"{name}: {key} is not 0x-hex") from exc


def parse_artifact(name: str, doc: Any) -> Artifact:
    if not isinstance(doc, dict) or not isinstance(doc.get("abi"), list):
        raise ArtifactError(f"{name}: not an artifact document")
    sha, compiler = doc.get("source_sha256"), doc.get("compiler")
    if not isinstance(sha, str) or not isinstance(compiler, str):
        raise ArtifactError(f"{name}: source_sha256/compiler missing")
    return Artifact(
        name=name,
        abi=doc["abi"],
        bytecode=_hex(doc, "bytecode", name),
        bytecode_runtime=_hex(doc, "bytecode_runtime", name),
        source_sha256=sha,
        compiler=compiler,
    )


def read_artifact(name: str) -> Artifact:
    """The artifact of contract `name` (e.g. "TaskRegistry"), read from disk."""
    path = artifact_path(name)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} missing: run python -m flockd.chain.client.build_contracts") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: invalid JSON") from exc
    return parse_artifact(name, doc)


@cache
def load(name: str) -> Artifact:
    """The artifact of contract `name`, read once per process."""
    return read_artifact(name)


def stale_reason(name: str) -> str | None:
    """Why artifact `name` does not match its source (None when it is current)."""
    try:
        art = read_artifact(name)
    except ArtifactError as exc:
        return str(exc)
    if art.compiler != COMPILER:
        return f"{name}: built with {art.compiler}, expected {COMPILER}"
    if art.source_sha256 != source_sha256(name):
        return f"{name}: source changed since the artifact was built"
    return None
