"""Where the node finds an optional contract (the Arena, the Market): the address in
config.toml's [chain] section, else the embedded chain's genesis address. An external chain
has no genesis contracts, so with no address configured every call to the contract fails
with one line that says which setting to fill in, before any transaction is signed."""

from __future__ import annotations

from typing import Any

from flockd.chain.client.abc import ChainBackend, ChainBackendError
from flockd.chain.client.contract import ContractClient


class ContractNotConfigured(ChainBackendError):
    """A contract this external chain's config names no address for."""


class UnconfiguredBackend(ChainBackend):
    """Stands in for the chain behind a contract with no address: every request fails."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def request(self, method: str, params: list[Any]) -> Any:
        raise ContractNotConfigured(self.message)

    async def aclose(self) -> None:
        return None


def place_contract(
    client: ContractClient, *, external: bool, configured: str, genesis: bytes, name: str, key: str
) -> tuple[ContractClient, bytes]:
    """The client and address to reach contract `name` through: `configured` (a checked
    0x address, [chain] `key`) when set, else the genesis address on the embedded chain;
    on an external chain with none, a client whose every call raises ContractNotConfigured."""
    if configured:
        return client, bytes.fromhex(configured[2:])
    if not external:
        return client, genesis
    message = f"no {name} on this external chain: set [chain] {key} in config.toml (flockd deploy deploys one)"
    return ContractClient(UnconfiguredBackend(message), client.account, client.policy), bytes(20)
