"""The genesis file: everything every node of one network must agree on, written once.

JSON, one object (see protocol/spec/chain.md):

    {"format": "flockd-genesis/1", "chain_id": 4242, "timestamp": 1700000000,
     "gas_limit": 30000000, "block_period": 1, "backup_after_periods": 2,
     "max_future_seconds": 2, "authorities": ["0x…", …],
     "alloc": {"0x…": {"balance": "0x…", "nonce": 0, "code": "0x…",
                        "storage": {"0x…": "0x…"}}}}

Parsing is strict: unknown or missing fields, bad addresses, duplicate authorities and
out-of-range numbers are GenesisError with the offending field named. The genesis block's
hash commits to every field: alloc through the state root, the rest through a digest of
the canonical JSON put in the genesis block's extra_data (see `consensus_digest`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak
from eth_utils import is_checksum_address, to_canonical_address, to_checksum_address

from flockd import safejson

FORMAT = "flockd-genesis/1"
MAX_GENESIS_BYTES = 64 * 1024 * 1024
# The block gas limit matches the per-tx cap (embedded.MAX_TX_GAS, 8M: the protocol's
# heaviest call must fit) and bounds a block's re-execution (protocol/spec/chain.md).
MIN_GAS_LIMIT = 8_000_000
MAX_GAS_LIMIT = 30_000_000 + 1  # exclusive: 30M is the most
MAX_AUTHORITIES = 256
_UINT256 = 2**256

_REQUIRED = ("format", "chain_id", "timestamp", "gas_limit", "block_period", "authorities", "alloc")
_OPTIONAL = {"backup_after_periods": 2, "max_future_seconds": 2}
_ACCOUNT_FIELDS = frozenset({"balance", "nonce", "code", "storage"})


class GenesisError(ValueError):
    """The genesis file (or the arguments to build one) is invalid; the message names the field."""


class GenesisMismatch(Exception):
    """The database on disk was created from a different genesis."""


@dataclass(frozen=True)
class Account:
    balance: int = 0
    nonce: int = 0
    code: bytes = b""
    storage: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Genesis:
    chain_id: int
    timestamp: int  # genesis block time; every block time is timestamp + k * block_period
    gas_limit: int  # pinned: every block has exactly this gas limit
    block_period: int  # seconds per slot (>= 1: header timestamps are whole seconds)
    authorities: tuple[bytes, ...]  # 20-byte addresses, in turn order
    alloc: Mapping[bytes, Account]
    backup_after_periods: int = 2  # K: silent slots before the next authority may seal
    max_future_seconds: int = 2  # how far ahead of our clock a block's timestamp may be

    def __post_init__(self) -> None:
        _check_int("chain_id", self.chain_id, 1, 2**63)
        _check_int("timestamp", self.timestamp, 0, 2**63)
        _check_int("gas_limit", self.gas_limit, MIN_GAS_LIMIT, MAX_GAS_LIMIT)
        _check_int("block_period", self.block_period, 1, 3600)
        _check_int("backup_after_periods", self.backup_after_periods, 1, 1000)
        _check_int("max_future_seconds", self.max_future_seconds, 0, 3600)
        if not self.authorities:
            raise GenesisError("authorities: at least one authority is required")
        if len(self.authorities) > MAX_AUTHORITIES:
            raise GenesisError(f"authorities: at most {MAX_AUTHORITIES}, got {len(self.authorities)}")
        for a in self.authorities:
            if not isinstance(a, bytes) or len(a) != 20:
                raise GenesisError(f"authorities: {a!r} is not a 20-byte address")
        if len(set(self.authorities)) != len(self.authorities):
            raise GenesisError("authorities: duplicate address")
        for address, account in self.alloc.items():
            if not isinstance(address, bytes) or len(address) != 20:
                raise GenesisError(f"alloc: {address!r} is not a 20-byte address")
            where = f"alloc[{to_checksum_address(address)}]"
            _check_int(f"{where}.balance", account.balance, 0, _UINT256)
            _check_int(f"{where}.nonce", account.nonce, 0, 2**64)
            for slot, value in account.storage.items():
                _check_int(f"{where}.storage key", slot, 0, _UINT256)
                _check_int(f"{where}.storage value", value, 0, _UINT256)

    # -- building --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        chain_id: int,
        authorities: list[bytes] | list[str],
        timestamp: int,
        alloc: Mapping[Any, Mapping[str, Any]] | None = None,
        gas_limit: int = 30_000_000,
        block_period: int = 1,
        backup_after_periods: int = 2,
        max_future_seconds: int = 2,
    ) -> Genesis:
        """Build from Python values. `alloc` accepts flockd.chain.node.deploy's shape
        ({address: {"code": bytes, "storage": {int: int}, "balance": int, "nonce": int}}) and
        the JSON shape (hex strings) alike."""
        accounts = {
            _address("alloc", a): _account(_address("alloc", a), spec) for a, spec in (alloc or {}).items()
        }
        return cls(
            chain_id=chain_id,
            timestamp=timestamp,
            gas_limit=gas_limit,
            block_period=block_period,
            authorities=tuple(_address("authorities", a) for a in authorities),
            alloc=accounts,
            backup_after_periods=backup_after_periods,
            max_future_seconds=max_future_seconds,
        )

    # -- JSON --------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(self._json_object(with_alloc=True), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Genesis:
        if len(text) > MAX_GENESIS_BYTES:
            raise GenesisError(f"genesis file too large: {len(text)} bytes, limit {MAX_GENESIS_BYTES}")
        try:
            obj = safejson.loads(text)  # nesting bounded: json.loads can overflow the C stack
        except (ValueError, UnicodeDecodeError) as exc:
            raise GenesisError(f"genesis is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise GenesisError("genesis must be a JSON object")
        missing = [name for name in _REQUIRED if name not in obj]
        if missing:
            raise GenesisError(f"genesis: missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise GenesisError(f"genesis: unknown field(s) {', '.join(unknown)}")
        if obj["format"] != FORMAT:
            raise GenesisError(f"format: expected {FORMAT!r}, got {obj['format']!r}")
        if not isinstance(obj["authorities"], list):
            raise GenesisError("authorities: must be a list of addresses")
        if not isinstance(obj["alloc"], dict):
            raise GenesisError("alloc: must be an object {address: account}")
        options = {name: obj.get(name, default) for name, default in _OPTIONAL.items()}
        return cls.create(
            chain_id=obj["chain_id"],
            authorities=obj["authorities"],
            timestamp=obj["timestamp"],
            alloc=obj["alloc"],
            gas_limit=obj["gas_limit"],
            block_period=obj["block_period"],
            **options,
        )

    def write(self, path: str | Path) -> None:
        """Write the file once; refuses to overwrite (a network has exactly one genesis)."""
        with open(path, "x", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Genesis:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}") from None
        return cls.from_json(data)

    # -- what the genesis block commits to -------------------------------------------

    def consensus_digest(self) -> bytes:
        """keccak256 of the canonical JSON of every field except alloc (which the state root
        commits to); it is the genesis block's extra_data, so nodes that disagree on the
        authority set or timing rules get different genesis hashes."""
        canonical = json.dumps(self._json_object(with_alloc=False), sort_keys=True, separators=(",", ":"))
        return keccak(canonical.encode())

    def state(self) -> dict[bytes, dict[str, Any]]:
        """py-evm's genesis state dict."""
        return {
            address: {"balance": a.balance, "nonce": a.nonce, "code": a.code, "storage": dict(a.storage)}
            for address, a in self.alloc.items()
        }

    def _json_object(self, *, with_alloc: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "chain_id": self.chain_id,
            "timestamp": self.timestamp,
            "gas_limit": self.gas_limit,
            "block_period": self.block_period,
            "backup_after_periods": self.backup_after_periods,
            "max_future_seconds": self.max_future_seconds,
            "authorities": [to_checksum_address(a) for a in self.authorities],
        }
        if with_alloc:
            obj["alloc"] = {
                to_checksum_address(address): {
                    "balance": hex(a.balance),
                    "nonce": a.nonce,
                    "code": "0x" + a.code.hex(),
                    "storage": {hex(k): hex(v) for k, v in sorted(a.storage.items())},
                }
                for address, a in sorted(self.alloc.items())
            }
        return obj


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """low <= value < high, and a real int (JSON true is not 1)."""
    if type(value) is not int:
        raise GenesisError(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value < high:
        # A hex quantity of any length parses; printing one in decimal may not (int max str digits).
        shown = value if value.bit_length() <= 256 else f"a {value.bit_length()}-bit number"
        raise GenesisError(f"{name}: {shown} is out of range [{low}, {high})")


def _address(where: str, value: object) -> bytes:
    if isinstance(value, bytes) and len(value) == 20:
        return value
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        try:
            address = bytes.fromhex(value[2:])
        except ValueError:
            address = b""
        if len(address) == 20:  # fromhex skips whitespace: 40 characters may hold fewer bytes
            return address
    raise GenesisError(f"{where}: {value!r} is not an address (20 bytes or 0x + 40 hex digits)")


def _quantity(where: str, value: object) -> int:
    """An int, or a 0x-prefixed hex string (geth's style for big balances)."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.startswith("0x") and len(value) > 2:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise GenesisError(f"{where}: expected an integer or a 0x hex quantity, got {value!r}")


def _bytes(where: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.startswith("0x") and len(value) % 2 == 0:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise GenesisError(f"{where}: expected bytes as 0x + an even number of hex digits, got {value!r:.60}")


def _account(address: bytes, spec: Mapping[str, Any]) -> Account:
    where = f"alloc[{to_checksum_address(address)}]"
    if not isinstance(spec, Mapping):
        raise GenesisError(f"{where}: must be an object")
    unknown = sorted(set(spec) - _ACCOUNT_FIELDS)
    if unknown:
        raise GenesisError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}")
    storage = spec.get("storage", {})
    if not isinstance(storage, Mapping):
        raise GenesisError(f"{where}.storage: must be an object {{slot: value}}")
    return Account(
        balance=_quantity(f"{where}.balance", spec.get("balance", 0)),
        nonce=_quantity(f"{where}.nonce", spec.get("nonce", 0)),
        code=_bytes(f"{where}.code", spec.get("code", b"")),
        storage={
            _quantity(f"{where}.storage key", k): _quantity(f"{where}.storage value", v)
            for k, v in storage.items()
        },
    )


# -- amounts and addresses as a person types them (parties files, account_transfer) ------

_AMOUNT = re.compile(r"([0-9]{1,40})(?:e([0-9]{1,2}))?")
_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def parse_amount(where: str, value: object) -> int:
    """A positive whole amount of base units (wei, or the token's 10^-18): an integer, or a
    decimal string with an optional power of ten ("25e18"); exact, never a float."""
    if type(value) is int:
        amount = value
    elif isinstance(value, str) and (m := _AMOUNT.fullmatch(value.strip())):
        amount = int(m.group(1)) * 10 ** int(m.group(2) or 0)
    else:
        raise GenesisError(f"{where}: {value!r} is not a whole number of base units (e.g. 1000 or 25e18)")
    if amount <= 0:
        raise GenesisError(f"{where}: amount must be > 0, got {amount}")
    if amount >= 2**256:
        raise GenesisError(f"{where}: amount {value!r} does not fit in 256 bits")
    return amount


def parse_address(where: str, value: object) -> bytes:
    """0x + 40 hex digits; mixed case must be a valid EIP-55 checksum (a typo caught)."""
    if not (isinstance(value, str) and _HEX_ADDRESS.fullmatch(value)):
        raise GenesisError(f"{where} {value!r:.60} is not an address (0x + 40 hex digits)")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        # no "did you mean": the right checksum of a mistyped address is another address
        raise GenesisError(f"{where} {value}: bad EIP-55 checksum (a typo?); ask its owner for it again")
    return bytes(to_canonical_address(value))
