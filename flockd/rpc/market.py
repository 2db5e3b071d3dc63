"""market_*: list a finished task's model or a finalised competition's winner on chain,
read the listings, fetch a listed model from peers (checked against the chain and its
lineage replayed) and serve it."""

from __future__ import annotations

from typing import Any, Literal

from eth_utils import to_checksum_address

from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.market import Listing
from flockd.market.checks import ListingError
from flockd.market.lineage import listing_report
from flockd.market.service import MarketService
from flockd.market.start import create_from_listing, lineage
from flockd.rpc.errors import RPCError
from flockd.tasks.service import TaskError
from flockd.tasks.spec import SpecError, TaskSpec

MARKET_ERROR = -32050
E18 = 10**18


class _MarketErrors:
    """The market layer's errors as JSON-RPC errors whose message says why."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, SpecError):
            raise RPCError(-32602, str(exc)) from None
        if isinstance(exc, ContractRevert):
            raise RPCError(MARKET_ERROR, f"the market refused: {exc.reason}") from None
        if isinstance(exc, ListingError | TaskError | ChainError):
            raise RPCError(MARKET_ERROR, str(exc)) from None


class MarketNamespace:
    namespace = "market"

    def __init__(self, market: MarketService) -> None:
        self._market = market

    async def market_list(self, name: str, task_id: int | None = None, competition_id: int | None = None,
                          description: str = "", licence: str = "", spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """List a finished task's final model (this node its creator or a participant), or
        with competition_id a finalised competition's winning model (this node its creator
        or the winning trainer); spec: the task's (as task_create returned it) or the
        competition's (as arena_create did); default: the one this node took part with."""
        with _MarketErrors():
            if (task_id is None) == (competition_id is None):
                raise ListingError("name either task_id or competition_id")
            if competition_id is not None:
                from flockd.arena.spec import ArenaSpec, ArenaSpecError

                try:
                    arena_spec = ArenaSpec.from_json(spec) if spec is not None else None
                except ArenaSpecError as exc:
                    raise RPCError(-32602, str(exc)) from None
                listing_id, model_hash = await self._market.list_winner(competition_id, name, description, licence,
                                                                        arena_spec)
            else:
                assert task_id is not None
                parsed = TaskSpec.from_json(spec) if spec is not None else None
                listing_id, model_hash = await self._market.list_model(task_id, name, description, licence, parsed)
            return {"listing_id": listing_id, "task_id": task_id, "competition_id": competition_id, "name": name,
                    "model_hash": "0x" + model_hash.hex()}

    async def market_unlist(self, listing_id: int) -> dict[str, Any]:
        """Withdraw a listing this node made."""
        with _MarketErrors():
            receipt = await self._market.market.unlist(listing_id)
            return {"listing_id": listing_id, "tx_hash": "0x" + receipt.tx_hash.hex(), "block": receipt.block_number}

    async def market_listings(self, start: int = 1, limit: int = 50, inactive: bool = False) -> list[dict[str, Any]]:
        """The listings from id `start` on (at most `limit`), unlisted ones only with `inactive`."""
        with _MarketErrors():
            found = await self._market.listings(start, limit)
            return [describe_listing(x) for x in found if x.active or inactive]

    async def market_task_create(
        self, listing_id: int, rounds: int = 10, rule: str = "fedavg", partition: str = "iid", num_nodes: int = 1,
        seed: int = 0, expected_proposers: int = 3, min_participants: int = 1, stake_unit: int = E18,
        min_stake: int = E18, propose_blocks: int = 8, commit_blocks: int = 6, reveal_blocks: int = 8,
        reward_pool: int = 0, vote_mode: Literal["per-proposal", "whole-round"] = "per-proposal",
        max_proposals: int = 16, root_rows: int | None = None,
    ) -> dict[str, Any]:
        """A new task whose initial model is a listed model (fetched and verified first), with
        the listing's recipe and config; its lineage continues from the listing. Joiners run
        market_fetch of the listing, then task_join with the returned spec. root_rows: as
        task_create's."""
        with _MarketErrors():
            return await create_from_listing(
                self._market, listing_id, rule=rule, partition=partition, num_nodes=num_nodes, seed=seed,
                root_rows=root_rows, rounds=rounds, expected_proposers=expected_proposers, min_participants=min_participants,
                min_stake=min_stake, stake_unit=stake_unit, propose_blocks=propose_blocks,
                commit_blocks=commit_blocks, reveal_blocks=reveal_blocks, reward_pool=reward_pool,
                vote_mode=0 if vote_mode == "per-proposal" else 1, max_proposals=max_proposals,
            )

    async def market_lineage(self, task_id: int | None = None, spec: dict[str, Any] | None = None,
                             listing_id: int | None = None) -> dict[str, Any]:
        """With listing_id: that listing's lineage, oldest first (the competition, the task's
        rounds, ending at the listed model). With task_id, a task started from a listed
        model: the listing's lineage, then the task's own rounds; spec: as
        market_task_create returned it (default: the one this node joined with)."""
        with _MarketErrors():
            if (task_id is None) == (listing_id is None):
                raise ListingError("name either task_id or listing_id")
            if listing_id is not None:
                return await listing_report(self._market, listing_id)
            assert task_id is not None
            parsed = TaskSpec.from_json(spec) if spec is not None else self._market.tasks.joined(task_id).spec
            return await lineage(self._market, task_id, parsed)

    async def market_fetch(self, listing_id: int) -> dict[str, Any]:
        """Fetch a listed model from peers, check it against the chain, replay its lineage,
        keep it, and serve it when this node serves ([serve] market = true)."""
        with _MarketErrors():
            return await self._market.fetch(listing_id)


def describe_listing(listing: Listing) -> dict[str, Any]:
    return {
        "listing_id": listing.listing_id,
        "name": listing.name,
        "kind": listing.kind,
        "task_id": listing.task_id,
        "competition_id": listing.competition_id,
        "model_hash": "0x" + listing.model_hash.hex(),
        "lineage_root": "0x" + listing.lineage_root.hex(),
        "recipe_hash": "0x" + listing.recipe_hash.hex(),
        "lister": to_checksum_address(listing.lister),
        "licence": listing.licence,
        "description": listing.description,
        "listed_block": listing.listed_block,
        "active": listing.active,
    }
