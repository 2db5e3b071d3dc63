"""Genesis for a network: one node alone, a local testnet, or several parties' federation.

Every node of a network must hold the same genesis.json (its hash names the network);
a real deployment writes it once (`flockd genesis`, from `parties_genesis`) and hands it
to every participant (`flockd init --genesis`).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from eth_utils import to_canonical_address, to_checksum_address

from flockd.chain.client.addresses import (
    ARENA_ADDRESS,
    MARKET_ADDRESS,
    STAKE_TOKEN_ADDRESS,
    TASK_REGISTRY_ADDRESS,
)
from flockd.chain.node.deploy import MAX_TOKEN_HOLDERS, genesis_contracts
from flockd.chain.node.genesis import Genesis, GenesisError, parse_address, parse_amount
from flockd.chain.node.market_genesis import market_genesis

GENESIS_FILE = "genesis.json"
LOCAL_CHAIN_ID = 7357
GAS_FUNDS = 10**6 * 10**18  # wei per funded account: gas for a long task
STAKE_FUNDS = 10**6 * 10**18  # stake-token base units per funded account


def network_genesis(
    authorities: Sequence[str],
    funded: Sequence[str] | None = None,
    *,
    chain_id: int = LOCAL_CHAIN_ID,
    timestamp: int | None = None,
    block_period: int = 1,
    backup_after_periods: int = 2,
    extra_alloc: dict[str, Any] | None = None,
) -> Genesis:
    """Authorities seal in turn; every funded account (default: the authorities) gets gas
    money and stake tokens; the token, task registry and Arena contracts are there from block 0."""
    holders = [bytes(to_canonical_address(a)) for a in (funded if funded is not None else authorities)]
    alloc = _funded_alloc({h: GAS_FUNDS for h in holders}, {h: STAKE_FUNDS for h in holders})
    for address, account in (extra_alloc or {}).items():
        alloc[bytes(to_canonical_address(address))] = account
    return Genesis.create(
        chain_id=chain_id,
        authorities=[bytes(to_canonical_address(a)) for a in authorities],
        timestamp=int(time.time()) if timestamp is None else timestamp,
        alloc=alloc,
        block_period=block_period,
        backup_after_periods=backup_after_periods,
    )


def _funded_alloc(gas: Mapping[bytes, int], stake: Mapping[bytes, int]) -> dict[bytes, Any]:
    """The token, registry and Arena contracts, stake minted to `stake`'s holders by the
    token's constructor (as `flockd deploy` does on an external chain), the Market (from a
    deployer of its own), and gas money as balances. The Arena comes last (deployer nonce
    2), so the token's and the registry's accounts are the same bytes as in a genesis
    without it (flockd.sim has none)."""
    alloc: dict[bytes, Any] = dict(genesis_contracts(dict(stake), arena=True))
    alloc.update({address: dict(account) for address, account in market_genesis().items()})  # the Market
    for holder, wei in gas.items():
        alloc[holder] = {"balance": wei, "nonce": 0, "code": b"", "storage": {}}
    return alloc


# -- a federation's genesis from its parties' addresses (`flockd genesis`) ------------------

_CONTRACTS = {
    STAKE_TOKEN_ADDRESS: "the stake token",
    TASK_REGISTRY_ADDRESS: "the task registry",
    ARENA_ADDRESS: "the arena",
    MARKET_ADDRESS: "the market",
}
PARTIES_KEYS = frozenset({"chain_id", "block_period", "timestamp", "authorities", "gas", "stake"})


def _distinct(role: str, values: Sequence[object]) -> list[bytes]:
    seen: list[bytes] = []
    for value in values:
        address = parse_address(role, value)
        if address in _CONTRACTS:  # the genesis puts the contracts' code there
            raise GenesisError(f"{role} {value} is a contract's address ({_CONTRACTS[address]})")
        if address in seen:
            raise GenesisError(f"{role} {to_checksum_address(address)} is listed twice")
        seen.append(address)
    return seen


def _holdings(role: str, pairs: Sequence[tuple[object, object]]) -> dict[bytes, int]:
    addresses = _distinct(role, [a for a, _ in pairs])
    return {a: parse_amount(f"{role} {to_checksum_address(a)}", amount) for a, (_, amount) in zip(addresses, pairs, strict=True)}


def parties_genesis(
    *,
    authorities: Sequence[object],
    gas: Sequence[tuple[object, object]],
    stake: Sequence[tuple[object, object]],
    chain_id: int,
    block_period: int,
    timestamp: int,
) -> Genesis:
    """A federation's genesis: `authorities` seal in the order given; `gas` holders get wei,
    `stake` holders stake tokens minted at genesis. GenesisError names the first bad input."""
    sealers = _distinct("authority", authorities)
    if not sealers:
        raise GenesisError("at least one authority is required (--authority ADDRESS)")
    wei = _holdings("gas holder", gas)
    tokens = _holdings("stake holder", stake)
    if len(tokens) > MAX_TOKEN_HOLDERS:
        raise GenesisError(f"at most {MAX_TOKEN_HOLDERS} stake holders at genesis, got {len(tokens)}")
    if sum(tokens.values()) >= 2**256:
        raise GenesisError("total stake does not fit in 256 bits")
    return Genesis.create(
        chain_id=chain_id,
        authorities=sealers,
        timestamp=timestamp,
        alloc=_funded_alloc(wei, tokens),
        block_period=block_period,
    )


def read_parties(path: Path) -> dict[str, Any]:
    """A parties file (TOML): chain_id, block_period, timestamp, authorities = [...], and
    tables [gas] and [stake] of "0xADDRESS" = amount. Unknown keys are an error."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GenesisError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GenesisError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - PARTIES_KEYS)
    if unknown:
        raise GenesisError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if not isinstance(data.get("authorities", []), list):
        raise GenesisError(f"{path}: authorities must be a list of addresses")
    for table in ("gas", "stake"):
        if not isinstance(data.get(table, {}), dict):
            raise GenesisError(f"{path}: [{table}] must be a table of \"0xADDRESS\" = amount")
    return data


def install_genesis(datadir: Path, genesis: Genesis, *, replace: bool = False) -> None:
    """Put a network's genesis into a datadir. Replacing one is only allowed before the
    node has built a chain on it: afterwards it would silently fork the node away."""
    path = datadir / GENESIS_FILE
    if path.exists():
        if not replace:
            raise FileExistsError(f"{path} already exists")
        if (datadir / "chain").exists():
            raise FileExistsError(f"{datadir}/chain exists: this node already follows {path}")
        path.unlink()
    genesis.write(path)
