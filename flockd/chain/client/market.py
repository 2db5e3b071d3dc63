"""Typed calls for the Market contract: finished models listed for use.

Like `registry.py`: each method is one ABI call through a ContractClient, results are
frozen dataclasses with addresses as 20-byte `bytes`. What a listing must satisfy is
checked by the contract (protocol/spec/market.md): for a task listing, a finished task,
its final model hash, the spec hashing to the recipe hash, the lister one of the task's
members; for a competition listing, a finalised Arena competition, its rank-1 model, the
spec hashing to its recipe hash, the lister its creator or the winning trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

from flockd.chain.client.artifacts import MARKET, load
from flockd.chain.client.contract import ContractClient, TxReceipt
from flockd.chain.client.registry import Contract, _address, _one, deploy_contract

MAX_NAME_LEN, MAX_DESCRIPTION_LEN, MAX_LICENCE_LEN, MAX_SPEC_LEN = 64, 512, 64, 2048
KIND_TASK, KIND_COMPETITION = 1, 2
KIND_NAMES = {KIND_TASK: "task", KIND_COMPETITION: "competition"}


@dataclass(frozen=True)
class Listing:
    listing_id: int
    lister: bytes
    kind: str  # "task" or "competition"
    task_id: int  # 0 for a competition listing
    competition_id: int  # 0 for a task listing
    model_hash: bytes
    lineage_root: bytes  # the task's initial model hash, or the competition's base model hash
    recipe_hash: bytes  # keccak256 of spec
    listed_block: int
    active: bool
    name: str
    description: str
    licence: str
    spec: str  # the task spec's canonical JSON, or the competition's (an ArenaSpec)


class Market(Contract):
    def __init__(self, client: ContractClient, address: bytes) -> None:
        super().__init__(client, address, load(MARKET))

    async def list_model(
        self, task_id: int, name: str, description: str, model_hash: bytes, licence: str, spec: str
    ) -> int:
        """The new listing's id."""
        receipt = await self.transact("list_model", task_id, name, description, model_hash, licence, spec)
        return int(_one(self.decode_events(receipt.logs), "ModelListed").args["listing_id"])

    async def list_winner(
        self, competition_id: int, name: str, description: str, model_hash: bytes, licence: str, spec: str
    ) -> int:
        """The new listing's id."""
        receipt = await self.transact("list_winner", competition_id, name, description, model_hash, licence, spec)
        return int(_one(self.decode_events(receipt.logs), "WinnerListed").args["listing_id"])

    async def unlist(self, listing_id: int) -> TxReceipt:
        return await self.transact("unlist", listing_id)

    async def registry(self) -> bytes:
        return _address(await self.view("registry"))

    async def arena(self) -> bytes:
        return _address(await self.view("arena"))

    async def listing_count(self) -> int:
        return int(await self.view("listing_count"))

    async def get_listing(self, listing_id: int) -> Listing | None:
        """None for an id never listed."""
        fields = await self.view("get_listing", listing_id)
        lister = _address(fields[0])
        if lister == bytes(20):
            return None
        kind = KIND_NAMES.get(int(fields[1]))
        if kind is None:
            raise ValueError(f"listing {listing_id}: unknown kind {fields[1]}")
        return Listing(listing_id, lister, kind, *fields[2:])

    async def listed_by(self, task_id: int, lister: bytes) -> int:
        return int(await self.view("listed_by", task_id, lister))

    async def winner_listed_by(self, competition_id: int, lister: bytes) -> int:
        return int(await self.view("winner_listed_by", competition_id, lister))

    async def has_code(self) -> bool:
        """Whether the contract is there (a genesis from before the Market has none)."""
        code = await self.client.backend.request("eth_getCode", ["0x" + self.address.hex(), "latest"])
        return isinstance(code, str) and len(code) > 2


async def deploy_market(client: ContractClient, registry: bytes, arena: bytes) -> bytes:
    """Deploy the Market for `registry` and `arena` on an external chain; its address."""
    receipt = await deploy_contract(client, load(MARKET), registry, arena)
    assert receipt.contract_address is not None  # deploy_contract checked
    return receipt.contract_address
