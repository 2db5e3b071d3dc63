"""Genesis for the networks flockd makes itself: one node alone, or a local testnet.

Every node of a network must hold the same genesis.json (its hash names the network);
a real deployment writes it once and hands it to every participant (`flockd init --genesis`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eth_utils import to_canonical_address

from flockd.chain.deploy import genesis_contracts
from flockd.chain.genesis import Genesis

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
    extra_alloc: dict[str, Any] | None = None,
) -> Genesis:
    """Authorities seal in turn; every funded account (default: the authorities) gets gas
    money and stake tokens; the token and task registry contracts are there from block 0."""
    holders = [bytes(to_canonical_address(a)) for a in (funded if funded is not None else authorities)]
    alloc: dict[bytes, Any] = dict(genesis_contracts({h: STAKE_FUNDS for h in holders}))
    for holder in holders:
        alloc[holder] = {"balance": GAS_FUNDS, "nonce": 0, "code": b"", "storage": {}}
    for address, account in (extra_alloc or {}).items():
        alloc[bytes(to_canonical_address(address))] = account
    return Genesis.create(
        chain_id=chain_id,
        authorities=[bytes(to_canonical_address(a)) for a in authorities],
        timestamp=int(time.time()) if timestamp is None else timestamp,
        alloc=alloc,
        block_period=block_period,
    )


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
