"""A listed model's lineage, oldest part first, each part replayed or recomputed here:

- a competition (an Arena winner, or the competition a task was seeded by): arena_verify's
  recomputation of every score, median, rank and payout, and which submission won
  (flockd.arena.handoff, what model_verify runs for a seeded task);
- a task: its rounds replayed from the chain and the deltas (flockd.tasks.verify), from
  the initial model this node's task worker builds (`TaskService.worker_for`: for a task
  seeded by a competition, on its winner's model; for one started from a listing, that
  listing's model from the store);
- before a task started from a listing, that listing's own lineage (bounded in depth).

Each part is a dict with `kind` ("competition" or "task") and `ok`; the listing a part
ends in is named by `listing_id`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from flockd.chain.client.market import Listing
from flockd.market.checks import ListingError, listed_arena_spec, listed_spec
from flockd.tasks.spec import TaskSpec
from flockd.tasks.verify import verify_lineage

if TYPE_CHECKING:
    from flockd.arena.handoff import Handoff
    from flockd.market.service import MarketService

MAX_LISTING_DEPTH = 8  # listings started from listings: how far back a lineage is followed


def winner_task_spec(listing: Listing) -> TaskSpec:
    """A competition listing as the spec of a task seeded by it (how flockd.arena.handoff
    names a competition's winner): its recipe, config and seed, and the competition."""
    arena_spec = listed_arena_spec(listing)
    return TaskSpec(arena_spec.recipe, arena_spec.config, seed=arena_spec.seed, competition=listing.competition_id)


def handoff_of(market: MarketService) -> Handoff:
    if market.tasks.handoff is None:
        raise ListingError("this node has no Arena to read a competition from")
    return market.tasks.handoff


async def competition_part(market: MarketService, spec: TaskSpec) -> dict[str, Any]:
    """The competition `spec` names, recomputed; `ok` only when it verifies whole."""
    return {"kind": "competition", **await handoff_of(market).verify(spec)}


async def task_part(market: MarketService, task_id: int, spec: TaskSpec) -> dict[str, Any]:
    tasks = market.tasks
    worker = await tasks.worker_for(spec, 0, None)  # a task seeded by a competition: its winner's model
    lineage = await verify_lineage(tasks.registry, tasks.ctx.store, worker, task_id, tasks.fetch_delta,
                                   start=spec.start)
    return {"kind": "task", **lineage}


async def listing_lineage(market: MarketService, listing: Listing, depth: int = 0) -> list[dict[str, Any]]:
    """Every part of a listing's lineage, oldest first; the last ends at the listed model
    when it verifies (`ends_at_listing` says whether it does)."""
    if depth >= MAX_LISTING_DEPTH:
        raise ListingError(f"listing {listing.listing_id}: more than {MAX_LISTING_DEPTH} listings deep")
    listed = "0x" + listing.model_hash.hex()
    if listing.kind == "competition":
        part = await competition_part(market, await trio.to_thread.run_sync(winner_task_spec, listing))
        ends = (part.get("winner") or {}).get("model_hash") == listed
        return [{**part, "listing_id": listing.listing_id, "ends_at_listing": ends}]
    spec = await trio.to_thread.run_sync(listed_spec, listing)  # loads the recipe
    parts: list[dict[str, Any]] = []
    if spec.competition is not None:
        parts.append(await competition_part(market, spec))
    if spec.start.get("listing_id"):
        parent = await market.listing(int(spec.start["listing_id"]))
        parts += await listing_lineage(market, parent, depth + 1)
        # the task continues from its parent listing's model, and that listing's lineage ended there
        parts[-1]["continues"] = parts[-1]["ends_at_listing"] and spec.start["model_hash"] == "0x" + parent.model_hash.hex()
    own = await task_part(market, listing.task_id, spec)
    ends = bool(own["complete"]) and own["final_model_hash"] == listed
    parts.append({**own, "listing_id": listing.listing_id, "ends_at_listing": ends})
    return parts


def whole(parts: list[dict[str, Any]]) -> bool:
    """Every part verified, and each listing's part ends at its listed model."""
    return all(p["ok"] and p.get("ends_at_listing", True) and p.get("continues", True) for p in parts)


async def listing_report(market: MarketService, listing_id: int) -> dict[str, Any]:
    """market_lineage of a listing: its parts and whether the whole verifies."""
    listing = await market.listing(listing_id)
    parts = await listing_lineage(market, listing)
    return {"listing_id": listing_id, "kind": listing.kind, "model_hash": "0x" + listing.model_hash.hex(),
            "ok": whole(parts), "lineage": parts}
