"""Modifying a listed model: a new Alliance task whose initial model is a listed model, so
its lineage continues from the listing (flockd.tasks.start carries the hook).

The creator fetches and verifies the listing first (market_fetch: hash, registry, lineage),
then creates the task with the listing's recipe and config, and a spec whose `start`
names the listing, its task and its model hash; the registry's `model_init_hash` is that
hash. A joiner runs market_fetch of the listing before task_join (its runner takes the
start model from its store, and refuses to run without it). `lineage` replays both: the listed task's rounds, then
the new task's, and checks that one ends where the other begins.
"""

from __future__ import annotations

from typing import Any

import trio

from flockd.market.lineage import listing_lineage, task_part, whole
from flockd.market.service import MarketService
from flockd.tasks.spec import SpecError, TaskSpec, default_root_rows


def started_spec(
    record: dict[str, Any], rule: str, partition: str, num_nodes: int, seed: int, root_rows: int | None = None
) -> TaskSpec:
    """The new task's spec: the listed model's recipe and config (its layout), the new
    task's rule, data split and root set (default: the recipe's), and `start` naming the listing."""
    listed = TaskSpec.from_json(record["spec"])
    start = {"listing_id": int(record["listing_id"]), "task_id": int(record["task_id"]),
             "model_hash": str(record["model_hash"])}
    return TaskSpec(recipe=listed.recipe, config=listed.config, rule=rule, partition=partition,
                    num_nodes=num_nodes, seed=seed, start=start,
                    root_rows=default_root_rows(listed.recipe) if root_rows is None else root_rows)


def listing_started(spec: TaskSpec) -> int:
    """The listing a spec's task starts from; SpecError when it names none."""
    listing_id = spec.start.get("listing_id")
    if not isinstance(listing_id, int) or listing_id < 1:
        raise SpecError("this spec's task does not start from a listed model (no start.listing_id)")
    return listing_id


async def create_from_listing(market: MarketService, listing_id: int, *, rule: str, partition: str, num_nodes: int,
                              seed: int, root_rows: int | None = None, **params: Any) -> dict[str, Any]:
    """Fetch and verify the listing, then create the task starting from its model;
    `params`: TaskService.create's keywords (rounds, stakes, windows, ...)."""
    record = await market.fetch(listing_id)
    # Off the event loop: a spec loads its recipe, so torch on first use (as task_create).
    spec = await trio.to_thread.run_sync(started_spec, record, rule, partition, num_nodes, seed, root_rows)
    created = await market.tasks.create(spec, **params)
    return {**created, "spec": spec.to_json()}


async def lineage(market: MarketService, task_id: int, spec: TaskSpec) -> dict[str, Any]:
    """The listing's lineage (flockd.market.lineage: the competition that seeded its task,
    if any, and its task's rounds, or the competition it won), then this task's rounds;
    ok when every part verifies, the listing's ends at its listed model, and this task's
    initial model is that model."""
    listing = await market.listing(listing_started(spec))
    parts = await listing_lineage(market, listing)
    own = await task_part(market, task_id, spec)
    joined = parts[-1]["ends_at_listing"] and spec.start["model_hash"] == "0x" + listing.model_hash.hex()
    return {
        "task_id": task_id,
        "listing_id": listing.listing_id,
        "ok": whole(parts) and bool(own["ok"]) and joined,
        "continues": joined,
        "lineage": [*parts, own],
    }
