"""The Market through its client (flockd.chain.client.market) on two chains: the embedded
chain (the Market at MARKET_ADDRESS in the genesis, as every daemon's) and a real anvil
(the Market deployed by deploy_market). A one-round task finishes on its initial model;
its creator lists it, a stranger cannot unlist it, the lister does."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import test_anvil as chains
from eth_utils import keccak
from test_anvil import (
    BACKENDS,
    MEMBERS,
    Env,
    anvil,  # noqa: F401  (the fixture)
)

from flockd.chain.client.addresses import ARENA_ADDRESS, MARKET_ADDRESS
from flockd.chain.client.arena import deploy_arena
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.market import Listing, Market, deploy_market
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.market_genesis import market_genesis

SPEC = '{"recipe":"digits-mlp"}'


def genesis_with_market() -> Genesis:
    base = chains.genesis()
    alloc = {a: dataclasses.asdict(account) for a, account in base.alloc.items()}
    alloc.update({a: dict(account) for a, account in market_genesis().items()})
    return Genesis.create(chain_id=base.chain_id, authorities=list(base.authorities), timestamp=base.timestamp,
                          alloc=alloc)


@asynccontextmanager
async def market_env(backend: str, node: object) -> AsyncIterator[tuple[Env, bytes]]:
    if backend == "anvil":
        async with chains.anvil_env(node) as env:  # type: ignore[arg-type]
            arena = await deploy_arena(env.client(0), env.deployment.token, env.deployment.verifier)
            yield env, await deploy_market(env.client(0), env.deployment.registry, arena)
        return
    async with chains.embedded_env(genesis_with_market()) as env:
        yield env, MARKET_ADDRESS


@pytest.mark.parametrize("backend", BACKENDS)
async def test_list_and_unlist_through_the_client(backend: str, anvil) -> None:  # noqa: F811
    async with market_env(backend, anvil) as (env, address):
        market = Market(env.client(0), address)
        assert await market.has_code() and await market.registry() == env.deployment.registry
        assert await market.arena() != bytes(20) and (backend == "anvil" or await market.arena() == ARENA_ADDRESS)
        task = await chains.started_task(env, rounds=1, recipe_hash=keccak(SPEC.encode()))
        with pytest.raises(ContractRevert, match="task not finished"):
            await market.list_model(task, "digits", "", keccak(b"x"), "MIT", SPEC)
        await chains.vote(env, task, 0, {0: [], 1: []})
        await env.registry(2).finalise(task, 0)  # nothing proposed: the task ends on its initial model
        init = chains.task_params().model_init_hash
        with pytest.raises(ContractRevert, match="not the task's final model"):
            await market.list_model(task, "digits", "", keccak(b"x"), "MIT", SPEC)
        listing_id = await market.list_model(task, "digits", "a description", init, "MIT", SPEC)
        listing = await market.get_listing(listing_id)
        assert listing == Listing(listing_id, MEMBERS[0].address, "task", task, 0, init, init, keccak(SPEC.encode()),
                                  listing.listed_block, True, "digits", "a description", "MIT", SPEC)
        assert await market.listing_count() == listing_id and await market.get_listing(listing_id + 1) is None
        (event,) = await market.events(listing.listed_block, listing.listed_block, ["ModelListed"])
        assert event.args["listing_id"] == listing_id and event.args["model_hash"] == init
        stranger = Market(env.client(1), address)
        assert await stranger.listed_by(task, MEMBERS[0].address) == listing_id
        with pytest.raises(ContractRevert, match="only the lister"):
            await stranger.unlist(listing_id)
        await market.unlist(listing_id)
        assert not (await market.get_listing(listing_id)).active  # type: ignore[union-attr]
        assert await market.listed_by(task, MEMBERS[0].address) == 0
