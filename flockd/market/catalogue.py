"""The page's catalogue: every listing on chain, a page at a time, each with its lineage as
a graph (an Arena competition or the listing a task started from → the Alliance task →
its rounds → the listing), read from the Market, the TaskRegistry and the Arena.

Bounded: a page holds at most MAX_PAGE listings and a task shows its last
MAX_ROUNDS_SHOWN rounds (the earlier ones as one node with their count), so a chain with
10,000 listings or a task of 10,000 rounds costs a page no more than a few hundred view
calls. Pages are cached for the block they were read at; a finished task's rounds and a
finalised competition's winner cannot change, so they are kept (a bounded number) across
blocks. One page is read at a time.

What the chain says is hostile: strings are cut to the contract's bounds (an external
chain's node may return anything), every read that fails leaves the listing in the
catalogue with the error in its lineage, and nothing here replays a model: a listing this
node fetched says so with the lineage it verified then (`market_fetch`, flockd.market.held).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from eth_utils import to_checksum_address

from flockd.arena.handoff import HandoffError, arena_spec_of, winner_of
from flockd.arena.snapshot import read_competition
from flockd.arena.spec import SCORE_SCALE
from flockd.chain.client.arena import Arena
from flockd.chain.client.backends import ChainError
from flockd.chain.client.market import (
    MAX_DESCRIPTION_LEN,
    MAX_LICENCE_LEN,
    MAX_NAME_LEN,
    Listing,
    Market,
)
from flockd.chain.client.registry import STATUS_FINISHED, Registry
from flockd.market.checks import ListingError, listed_spec
from flockd.market.lineage import listing_report, winner_task_spec
from flockd.stats import Counters
from flockd.tasks.service import TaskError
from flockd.tasks.spec import SpecError, TaskSpec

if TYPE_CHECKING:
    from flockd.market.service import MarketService
    from flockd.serve.app import ServeApp

MAX_PAGE = 20
MAX_ROUNDS_SHOWN = 24
MAX_ERROR_LEN = 300
MAX_RECIPE_LEN = 64
_CACHED_PAGES = 32  # per block
_KEPT_LINEAGES = 512  # finished tasks and finalised competitions, across blocks

Node = dict[str, Any]
Graph = dict[str, Any]
# The metrics this node measured for a task it runs: round -> {"test_accuracy", "test_loss"}.
RoundMetrics = Callable[[int], Awaitable[dict[int, dict[str, float]]]]


class LineageUnreadable(Exception):
    """A listing's lineage cannot be read from the chain; says why."""


def capped(text: str, bound: int) -> str:
    """At most `bound` characters: what the contract bounds in bytes, a hostile node may not."""
    return text if len(text) <= bound else text[: bound - 1] + "…"


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def listing_source(listing: Listing) -> int:
    """The id of the task or competition a listing lists."""
    return listing.competition_id if listing.kind == "competition" else listing.task_id


def catalogue_row(listing: Listing) -> dict[str, Any]:
    """A listing's own fields for the page, strings capped."""
    return {
        "listing_id": listing.listing_id,
        "name": capped(listing.name, MAX_NAME_LEN),
        "description": capped(listing.description, MAX_DESCRIPTION_LEN),
        "licence": capped(listing.licence, MAX_LICENCE_LEN),
        "model_hash": _hex(listing.model_hash),
        "lineage_root": _hex(listing.lineage_root),
        "lister": to_checksum_address(listing.lister),
        "kind": listing.kind,
        "source_id": listing_source(listing),
        "listed_block": listing.listed_block,
        "active": listing.active,
    }


def _node(node_id: str, kind: str, label: str, **details: Any) -> Node:
    return {"id": node_id, "type": kind, "label": label, "details": details}


def _listing_node(row: dict[str, Any]) -> Node:
    return _node(f"listing-{row['listing_id']}", "listing", f"listing {row['listing_id']}: {row['name']}",
                 listing_id=row["listing_id"], model_hash=row["model_hash"], lister=row["lister"],
                 listed_block=row["listed_block"], active=row["active"])


def chained(nodes: list[Node], error: str | None = None) -> Graph:
    """A lineage is a path: each node comes from the one before it."""
    edges = [[a["id"], b["id"]] for a, b in zip(nodes, nodes[1:], strict=False)]
    return {"nodes": nodes, "edges": edges, "error": error}


class ListingCatalogue:
    """The listings a page at a time, with their lineages (see the module's docstring)."""

    def __init__(self, market: Market, registry: Registry, arena: Arena | None = None, *,
                 metrics: RoundMetrics | None = None, held_root: Path | None = None,
                 counters: Counters | None = None) -> None:
        self.market = market
        self.registry = registry
        self.arena = arena
        self.metrics = metrics
        self.held_root = held_root  # <datadir>/market: the listings this node fetched and verified
        # A daemon's are its market service's, so the metrics export them (service="market").
        self.counters = counters if counters is not None else Counters()
        self._lock = trio.Lock()
        self._block = -1
        self._pages: dict[tuple[int, int], dict[str, Any]] = {}
        self._kept: OrderedDict[tuple[str, int], list[Node]] = OrderedDict()

    async def page(self, start: int, limit: int) -> dict[str, Any]:
        """Listings start..start+limit-1 (those that exist) as of the chain's head, or
        `available: false` and why (no Market contract, the chain does not answer).
        ValueError for a page out of bounds."""
        if start < 1 or start >= 2**63:
            raise ValueError("start must be an integer >= 1")
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be an integer in [1, {MAX_PAGE}]")
        async with self._lock:
            try:
                return await self._page(start, limit)
            except (ChainError, LineageUnreadable) as exc:
                self.counters.incr("catalogue_read_errors")
                return {"available": False, "why": capped(str(exc), MAX_ERROR_LEN), "listings": []}

    async def _page(self, start: int, limit: int) -> dict[str, Any]:
        head = await self.market.client.block_number()
        if head != self._block:
            self._pages.clear()
            self._block = head
        key = (start, limit)
        if key not in self._pages:
            if len(self._pages) >= _CACHED_PAGES:
                self._pages.clear()
            self._pages[key] = await self._read_page(head, start, limit)
            self.counters.incr("catalogue_pages_read")
        return self._pages[key]

    async def _read_page(self, head: int, start: int, limit: int) -> dict[str, Any]:
        if not await self.market.has_code():
            raise LineageUnreadable(f"no Market contract at {_hex(self.market.address)} (a genesis from before it?)")
        total = await self.market.listing_count()
        last = min(total, start + limit - 1)
        listings = [await self._entry(i) for i in range(start, last + 1)]
        return {"available": True, "block": head, "total": total, "start": start, "limit": limit, "listings": listings}

    async def _entry(self, listing_id: int) -> dict[str, Any]:
        try:
            listing = await self.market.get_listing(listing_id)
        except (ChainError, ValueError) as exc:  # ValueError: a kind the Market does not have
            self.counters.incr("catalogue_read_errors")
            return {"listing_id": listing_id, "error": capped(f"cannot read listing {listing_id}: {exc}", MAX_ERROR_LEN)}
        if listing is None:
            return {"listing_id": listing_id, "error": f"no listing {listing_id}"}
        row = catalogue_row(listing)
        spec: TaskSpec | None = None
        try:
            # a competition listing as the spec of a task seeded by it: recipe, config, seed, competition;
            # in a worker thread: a spec loads its recipe (imports torch the first time)
            spec = await trio.to_thread.run_sync(listed_spec if listing.kind == "task" else winner_task_spec, listing)
            row["recipe"] = capped(spec.recipe, MAX_RECIPE_LEN)
            row["verified"] = self._verified(listing)
            row["lineage"] = chained([*await self._origin(listing, spec), _listing_node(row)])
        except (ChainError, ListingError, SpecError, LineageUnreadable) as exc:
            self.counters.incr("catalogue_read_errors")
            row.setdefault("recipe", capped(spec.recipe, MAX_RECIPE_LEN) if spec else None)
            row.setdefault("verified", None)
            row["lineage"] = chained([_listing_node(row)], capped(str(exc), MAX_ERROR_LEN))
        return row

    async def _origin(self, listing: Listing, spec: TaskSpec) -> list[Node]:
        """The nodes before the listing: where the task (or the competition) came from."""
        if listing.kind == "competition":  # an Arena winner listed as it is
            return [await self._competition(listing.competition_id, spec)]
        before: list[Node] = []
        if spec.competition is not None:
            before.append(await self._competition(spec.competition, spec))
        elif spec.start.get("listing_id"):
            start = spec.start
            before.append(_node(f"listing-{start['listing_id']}", "start", f"started from listing {start['listing_id']}",
                                listing_id=start["listing_id"], task_id=start.get("task_id"),
                                model_hash=start.get("model_hash")))
        return before + await self._task(listing.task_id)

    async def _competition(self, competition_id: int, spec: TaskSpec) -> Node:
        key = ("competition", competition_id)
        if key in self._kept:
            return self._kept[key][0]
        if self.arena is None:
            raise LineageUnreadable(f"competition {competition_id}: this node reads no Arena contract")
        snap = await read_competition(self.arena, competition_id)
        if snap is None:
            raise LineageUnreadable(f"no competition {competition_id} on chain")
        details: dict[str, Any] = {"competition_id": competition_id, "phase": snap.phase_name,
                                   "submissions": len(snap.submissions)}
        try:
            index, winner = winner_of(snap, await trio.to_thread.run_sync(arena_spec_of, spec))
        except HandoffError as exc:
            details["problem"] = capped(str(exc), MAX_ERROR_LEN)
            return _node(f"arena-{competition_id}", "arena", f"Arena competition {competition_id}", **details)
        details["winner"] = {"index": index, "trainer": to_checksum_address(winner.trainer),
                             "model_hash": _hex(winner.model_hash), "median": winner.median,
                             "score": winner.median / SCORE_SCALE}
        node = _node(f"arena-{competition_id}", "arena",
                     f"Arena competition {competition_id}: winner scored {winner.median / SCORE_SCALE:.4f}", **details)
        self._keep(key, [node])  # winner_of passed: the competition is finalised
        return node

    async def _task(self, task_id: int) -> list[Node]:
        """The task node and its rounds (the last MAX_ROUNDS_SHOWN)."""
        key = ("task", task_id)
        nodes = self._kept.get(key)
        if nodes is None:
            nodes, finished = await self._read_task(task_id)
            if finished:
                self._keep(key, nodes)
        if self.metrics is None:
            return nodes
        measured = await self.metrics(task_id)  # what this node measured itself, never cached
        return [_node(n["id"], n["type"], n["label"], **n["details"], **measured.get(n["details"].get("round", -1), {}))
                if n["type"] == "round" else n for n in nodes]

    async def _read_task(self, task_id: int) -> tuple[list[Node], bool]:
        params = await self.registry.get_params(task_id)
        state = await self.registry.get_state(task_id)
        if state.creator == bytes(20):
            raise LineageUnreadable(f"no task {task_id} in the registry")
        finished = state.status == STATUS_FINISHED
        closed = min(params.rounds, state.current_round + (1 if finished else 0))
        first = max(0, closed - MAX_ROUNDS_SHOWN)
        nodes = [_node(f"task-{task_id}", "task", f"Alliance task {task_id} ({capped(params.recipe, MAX_RECIPE_LEN)})",
                       task_id=task_id, recipe=capped(params.recipe, MAX_RECIPE_LEN), rounds=params.rounds,
                       initial_model_hash=_hex(params.model_init_hash), finished=finished)]
        if first:
            nodes.append(_node(f"task-{task_id}-elided", "elided", f"rounds 0–{first - 1} ({first}, not shown)",
                               task_id=task_id, rounds=first))
        for r in range(first, closed):
            info = await self.registry.get_round(task_id, r)
            accepted = bin(info.accepted_mask).count("1")
            nodes.append(_node(f"task-{task_id}-round-{r}", "round", f"round {r}: {accepted}/{info.n_proposals} accepted",
                               task_id=task_id, round=r, proposals=info.n_proposals, accepted=accepted,
                               finalised=info.finalised, model_hash=_hex(info.model_hash)))
        return nodes, finished

    def _keep(self, key: tuple[str, int], nodes: list[Node]) -> None:
        self._kept[key] = nodes
        while len(self._kept) > _KEPT_LINEAGES:
            self._kept.popitem(last=False)

    def _verified(self, listing: Listing) -> dict[str, Any] | None:
        """What this node's own fetch verified of this listing (None: never fetched here)."""
        if self.held_root is None:
            return None
        try:
            record = json.loads((self.held_root / f"{listing.listing_id}.json").read_text())
            lineage = record["lineage"]
            # an Arena winner's record has no rounds: its competition was recomputed whole or not kept
            return {"model_hash": record["model_hash"], "ok": bool(lineage["ok"] and lineage.get("complete", True)),
                    "rounds_checked": int(lineage["rounds_checked"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None


def task_metrics(status: Callable[[int], Awaitable[dict[str, Any]]], runs: Callable[[int], bool]) -> RoundMetrics:
    """A node's own measurements of the tasks it runs (task_status's history)."""

    async def measured(task_id: int) -> dict[int, dict[str, float]]:
        if not runs(task_id):
            return {}
        history = (await status(task_id))["history"]
        return {int(h["round"]): {k: h[k] for k in ("test_accuracy", "test_loss") if isinstance(h.get(k), float)}
                for h in history if isinstance(h.get("round"), int)}

    return measured


class ListingReplays:
    """`market_lineage listing_id=N` for the page: the listing's lineage replayed here
    (flockd.market.lineage: the competition recomputed, the rounds rebuilt from the deltas,
    which may come from peers), one at a time: a second asks again later rather than wait.
    The rounds in the answer are the last MAX_ROUNDS_SHOWN of each task."""

    def __init__(self, market: MarketService) -> None:
        self.market = market
        self._running = False

    async def __call__(self, listing_id: int) -> dict[str, Any]:
        if self._running:
            return {"listing_id": listing_id, "ok": False, "busy": True,
                    "error": "another listing's lineage is being replayed here: ask again when it ends"}
        self._running = True
        try:
            report = await listing_report(self.market, listing_id)
        except (ChainError, ListingError, SpecError, TaskError, HandoffError) as exc:
            return {"listing_id": listing_id, "ok": False, "error": capped(str(exc), MAX_ERROR_LEN)}
        finally:
            self._running = False
        for part in report["lineage"]:
            part["rounds"] = part.get("rounds", [])[-MAX_ROUNDS_SHOWN:]
            part["problems"] = [capped(str(p), MAX_ERROR_LEN) for p in part.get("problems", [])[:MAX_PAGE]]
        return report


def attach_catalogue(app: ServeApp, market: MarketService, arena: Arena) -> None:
    """A daemon's page reads its Market, registry and Arena clients, the metrics of the
    tasks it runs and the listings it fetched, and replays a listing's lineage on request."""
    tasks = market.tasks
    app.listings = ListingCatalogue(market.market, tasks.registry, arena, held_root=market.held.root,
                                    metrics=task_metrics(tasks.status, lambda task_id: task_id in tasks.runners),
                                    counters=market.counters).page
    app.replay_listing = ListingReplays(market)
