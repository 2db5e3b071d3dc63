"""An Arena winner listed on the Market and fetched, below the daemons: a competition run
to the end on the embedded chain with the real contracts (test_arena_roles), the Market
deployed beside the Arena, then the creator lists the winning model (a losing trainer or
a validator may not), a validator that took no part in the listing fetches it, checks it
against the Arena (finalised, rank 1, base and recipe hashes), recomputes the competition,
keeps it and serves it on /v1/predict; market_lineage shows the competition. A node whose
copy of the winner is another model, and that no peer gives the listed one, keeps and
serves nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest
import test_anvil
import test_arena_roles
import trio
from test_arena_roles import CREATOR, SPEC, Nodes, run

import flockd.arena.handoff as handoff_module
from flockd.arena.handoff import Handoff
from flockd.arena.service import ArenaService
from flockd.chain.client.addresses import MARKET_ADDRESS
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.market import Market
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.market_genesis import market_genesis
from flockd.market.checks import ListingError, arena_spec_text
from flockd.market.held import HeldModels
from flockd.market.lineage import listing_report
from flockd.market.service import MarketService
from flockd.serve.app import ServeApp
from flockd.serve.thread import ServerThread
from flockd.tasks.service import TaskService

NAME = "digits-winner"


def genesis_with_arena_and_market(arena: bool = True) -> Genesis:
    """test_anvil's genesis with the Arena, and the Market as every daemon's genesis has it
    (the embedded chain creates no contract after genesis)."""
    base = test_anvil.genesis(arena=arena)
    alloc = {a: dataclasses.asdict(account) for a, account in base.alloc.items()}
    alloc.update({a: dict(account) for a, account in market_genesis().items()})
    return Genesis.create(chain_id=base.chain_id, authorities=list(base.authorities), timestamp=base.timestamp,
                          alloc=alloc)


def market_of(nodes: Nodes, who: int, address: bytes, root: Path, app: ServeApp | None = None) -> MarketService:
    arena: ArenaService = nodes.services[who]
    tasks = TaskService(arena.ctx, arena.token)
    tasks.handoff = Handoff(arena)
    return MarketService(Market(nodes.env.client(who), address), tasks, HeldModels(root / f"market{who}"), lambda: app)


async def test_a_winner_is_listed_fetched_verified_and_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_arena_roles, "genesis", genesis_with_arena_and_market)
    monkeypatch.setattr(handoff_module, "FETCH_ATTEMPTS", 2)
    monkeypatch.setattr(handoff_module, "FETCH_RETRY_SECONDS", 0.0)

    async def list_and_fetch(nodes: Nodes, cid: int) -> None:
        address = MARKET_ADDRESS
        snap = await nodes.services[CREATOR].snapshot(cid)
        (winner,) = [s for s in snap.submissions if s.rank == 1]
        (loser,) = [s for s in snap.submissions if s.rank == 2]
        losing = next(w for w in (1, 2) if nodes.services[w].ctx.address == loser.trainer)

        # only the creator or the winning trainer; refused before any gas, and by the contract
        for who in (losing, 3):
            with pytest.raises(ListingError, match="creator or its winning trainer"):
                await market_of(nodes, who, address, tmp_path).list_winner(cid, NAME, spec=SPEC)
        with pytest.raises(ContractRevert, match="not the creator or the winner"):
            await Market(nodes.env.client(losing), address).list_winner(cid, NAME, "", winner.model_hash, "",
                                                                        arena_spec_text(SPEC))
        creator = market_of(nodes, CREATOR, address, tmp_path)
        listing_id, listed_hash = await creator.list_winner(cid, NAME, "the arena's best", "MIT")  # its own spec
        assert listed_hash == winner.model_hash
        listing = await creator.listing(listing_id)
        assert (listing.kind, listing.competition_id, listing.task_id) == ("competition", cid, 0)
        assert listing.lineage_root == snap.params.base_model_hash and listing.recipe_hash == SPEC.spec_hash

        # a node whose copy of the winner is another model (and no peer to ask) keeps nothing
        app = ServeApp([])
        validator = nodes.services[3]
        path = validator.ctx.store.model_path(winner.model_hash)
        genuine = path.read_bytes()
        path.write_bytes(validator.ctx.store.model_path(loser.model_hash).read_bytes())
        fetching = market_of(nodes, 3, address, tmp_path, app)
        with pytest.raises(ListingError, match="stored winning model"):
            await fetching.fetch(listing_id)
        assert fetching.held.records() == [] and app.models == {}

        path.write_bytes(genuine)
        record = await fetching.fetch(listing_id)
        assert record["served"] and record["kind"] == "competition" and record["competition_id"] == cid
        assert record["model_hash"] == "0x" + winner.model_hash.hex()
        competition = record["lineage"]["competition"]
        assert competition["ok"] and competition["winner"]["model_hash"] == record["model_hash"]
        assert [r["listing_id"] for r in fetching.held.records()] == [listing_id]

        def predict() -> dict:
            with ServerThread(app) as server:
                return httpx.post(server.url + "/v1/predict", json={"model": NAME, "input": [[0.0] * 64]}).json()

        reply = await trio.to_thread.run_sync(predict)
        assert len(reply["data"]) == 1 and len(reply["data"][0]["probabilities"]) == 10

        report = await listing_report(fetching, listing_id)
        (part,) = report["lineage"]
        assert report["ok"] and part["kind"] == "competition" and part["ends_at_listing"]

    await run(tmp_path, {3: (100, "honest")}, then=list_and_fetch)


async def test_market_list_and_lineage_name_exactly_one_source() -> None:
    from flockd.rpc.errors import RPCError
    from flockd.rpc.market import MarketNamespace

    rpc = MarketNamespace(None)  # type: ignore[arg-type]  # refused before the service is asked
    for bad in ({}, {"task_id": 1, "competition_id": 1}):
        with pytest.raises(RPCError, match="either task_id or competition_id"):
            await rpc.market_list(NAME, **bad)
    for bad in ({}, {"task_id": 1, "listing_id": 1}):
        with pytest.raises(RPCError, match="either task_id or listing_id"):
            await rpc.market_lineage(**bad)
    with pytest.raises(RPCError) as refused:
        await rpc.market_list(NAME, competition_id=1, spec={"recipe": "digits-mlp", "rule": "fedavg"})
    assert refused.value.code == -32602  # not a competition spec


async def test_a_winner_ranked_by_a_lazy_majority_is_listed_but_never_kept(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain ranks what the validators holding most stake revealed: random scores here.
    The contract lists the winner (it cannot recompute a score); a fetching node recomputes
    the competition, finds the median is not the score, and keeps and serves nothing."""
    monkeypatch.setattr(test_arena_roles, "genesis", genesis_with_arena_and_market)

    async def list_and_fetch(nodes: Nodes, cid: int) -> None:
        listing_id, _ = await market_of(nodes, CREATOR, MARKET_ADDRESS, tmp_path).list_winner(cid, NAME)
        app = ServeApp([])
        fetching = market_of(nodes, 3, MARKET_ADDRESS, tmp_path, app)
        with pytest.raises(ListingError, match="does not verify.*is not its recomputed score"):
            await fetching.fetch(listing_id)
        assert fetching.held.records() == [] and app.models == {}
        assert fetching.counters.snapshot()["market_lineage_failures"] == 1
        assert not (await listing_report(fetching, listing_id))["ok"]

    await run(tmp_path, {2: (300, "random"), 3: (100, "honest")}, then=list_and_fetch)
