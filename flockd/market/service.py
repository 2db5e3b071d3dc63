"""MarketService: list a finished task's model or a finalised competition's winner, read
the listings, and fetch a listed model from peers, checked against the chain before this
node keeps or serves it.

A fetch, cheapest check first: the listing is active, its name is a usable id, its spec
hashes to its recipe hash, and the registry still says what the listing claims (task
finished, final model hash, initial model hash, recipe hash), and the spec's model is no
larger than a checkpoint may be (counted on torch's meta device). Then the model's bytes from
one peer after another over the p2p fetch (`fl.fetch.1`, kind "model"): size against the
recipe's layout, then safetensors parsed, layout and hash checked in a worker thread; a
peer whose bytes fail is skipped and counted. Then the lineage is replayed from the
chain and the deltas (flockd.tasks.verify, what model_verify runs) and must end at the
listed hash; for a task seeded by a competition, the competition is recomputed too
(flockd.market.lineage). A competition listing: the competition is finalised, its rank-1
submission is the listed model, its recipe and base model hashes are the listing's; the
winner's bytes come as the hand-off takes them (flockd.arena.handoff: this node's copy,
else a peer's, in the competition's base layout and hash-checked), and the competition is
recomputed (arena_verify). Only then is a record written and, in a serving daemon, the
model served. One fetch runs at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from flockd.chain.client.market import Listing, Market
from flockd.chain.client.registry import STATUS_FINISHED
from flockd.fl.errors import FLError
from flockd.fl.tensors import shapes
from flockd.logs import get_logger
from flockd.market.checks import (
    ListingError,
    arena_spec_text,
    check_listed_name,
    check_listing_fields,
    check_model_bytes,
    check_model_size,
    listed_arena_spec,
    listed_spec,
    max_model_bytes,
    spec_text,
)
from flockd.market.held import HeldModels, served_model
from flockd.market.lineage import competition_part, handoff_of, winner_task_spec
from flockd.market.lm_serve import held_base
from flockd.p2p.abc import P2PError
from flockd.p2p.blobs import BlobError
from flockd.stats import Counters
from flockd.tasks.exchange import FETCH_KIND, FetchRequest, encode_fetch
from flockd.tasks.service import TaskService
from flockd.tasks.spec import TaskSpec
from flockd.tasks.verify import verify_lineage

if TYPE_CHECKING:
    from flockd.arena.spec import ArenaSpec
    from flockd.serve.app import ServeApp

log = get_logger("flockd.market")

MAX_LISTINGS_PER_CALL = 100


@dataclass(frozen=True)
class FetchedModel:
    data: bytes
    peer_id: str | None  # None: this node held it already


class MarketService:
    def __init__(self, market: Market, tasks: TaskService, held: HeldModels,
                 serve_app: Callable[[], ServeApp | None] = lambda: None) -> None:
        self.market = market
        self.tasks = tasks
        self.held = held
        self._serve_app = serve_app
        self._fetching = trio.Lock()
        self.counters = Counters()

    # -- listing ---------------------------------------------------------------------------

    async def list_model(self, task_id: int, name: str, description: str = "", licence: str = "",
                         spec: TaskSpec | None = None) -> tuple[int, bytes]:
        """List task_id's final model; (listing id, model hash). What the contract would
        refuse is refused here first, with the reason, before any gas is spent."""
        check_listing_fields(name, description, licence)
        await self._require_market()
        registry = self.tasks.registry
        state = await registry.get_state(task_id)
        if state.status != STATUS_FINISHED:
            raise ListingError(f"task {task_id} is not finished")
        params = await registry.get_params(task_id)
        final = (await registry.get_round(task_id, params.rounds - 1)).model_hash
        if not any(final):
            raise ListingError(f"task {task_id} has no final model recorded")
        spec = spec or self.tasks.joined(task_id).spec
        if spec.spec_hash != params.recipe_hash:
            raise ListingError(f"the spec does not hash to task {task_id}'s recipe hash")
        listing_id = await self.market.list_model(task_id, name, description, final, licence, spec_text(spec))
        self.counters.incr("market_listed")
        return listing_id, final

    async def list_winner(self, competition_id: int, name: str, description: str = "", licence: str = "",
                          spec: ArenaSpec | None = None) -> tuple[int, bytes]:
        """List a finalised competition's winning model; (listing id, model hash). What the
        contract would refuse is refused here first, with the reason, before any gas is spent.
        `spec`: the competition's (default: the one this node took part with)."""
        from flockd.arena.handoff import HandoffError, winner_of
        from flockd.arena.snapshot import read_competition
        from flockd.arena.spec import ArenaSpec

        check_listing_fields(name, description, licence)
        await self._require_market()
        arena = handoff_of(self).svc
        if spec is None:
            member = arena.members.get(competition_id)
            if member is None:
                raise ListingError(f"this node took no part in competition {competition_id}: pass its spec")
            spec = await trio.to_thread.run_sync(ArenaSpec.from_json, member.spec)
        snap = await read_competition(arena.arena, competition_id)
        if snap is None:
            raise ListingError(f"no competition {competition_id}")
        try:
            _, winner = winner_of(snap, spec)
        except HandoffError as exc:
            raise ListingError(str(exc)) from None
        if self.tasks.ctx.address not in (snap.competition.creator, winner.trainer):
            raise ListingError(f"only competition {competition_id}'s creator or its winning trainer may list it")
        listing_id = await self.market.list_winner(competition_id, name, description, winner.model_hash, licence,
                                                   arena_spec_text(spec))
        self.counters.incr("market_listed")
        return listing_id, winner.model_hash

    async def listings(self, start: int = 1, limit: int = 50) -> list[Listing]:
        """Listings start.. (at most `limit`, at most MAX_LISTINGS_PER_CALL), inactive ones too."""
        if start < 1 or not 1 <= limit <= MAX_LISTINGS_PER_CALL:
            raise ListingError(f"start >= 1 and 1 <= limit <= {MAX_LISTINGS_PER_CALL}")
        await self._require_market()
        last = min(await self.market.listing_count(), start + limit - 1)
        return [listing for i in range(start, last + 1) if (listing := await self.market.get_listing(i))]

    async def listing(self, listing_id: int) -> Listing:
        await self._require_market()
        listing = await self.market.get_listing(listing_id)
        if listing is None:
            raise ListingError(f"no listing {listing_id}")
        return listing

    # -- fetching --------------------------------------------------------------------------

    async def fetch(self, listing_id: int) -> dict[str, Any]:
        """Fetch, check and keep a listed model (see the module's docstring); its record,
        with `served` saying whether this node's serving API now answers for it."""
        async with self._fetching:
            listing = await self.listing(listing_id)
            if not listing.active:
                raise ListingError(f"listing {listing_id} was unlisted")
            check_listed_name(listing)
            if listing.kind == "competition":
                return await self._fetch_winner(listing)
            spec = listed_spec(listing)
            await self._check_against_registry(listing)
            base = await trio.to_thread.run_sync(held_base, spec)
            await trio.to_thread.run_sync(check_model_size, spec, base)
            worker = await self.tasks.worker_for(spec, 0, None)  # a task seeded by a competition: its winner's model
            # The global state's layout: for lm-lora the model's weights and the carried adapter.
            layout = shapes(await trio.to_thread.run_sync(worker.initial_model))
            fetched = await self._model_bytes(listing, layout)
            store = self.tasks.ctx.store
            lineage = await verify_lineage(self.tasks.registry, store, worker, listing.task_id, self.tasks.fetch_delta,
                                           start=spec.start)
            if not (lineage["ok"] and lineage["complete"] and lineage["final_model_hash"] == _hex(listing.model_hash)):
                self.counters.incr("market_lineage_failures")
                raise ListingError(f"listing {listing_id}: the lineage does not replay to the listed model: "
                                   f"{'; '.join(lineage['problems']) or lineage['final_model_hash']}")
            if spec.competition is not None:  # seeded by a competition: that is recomputed too
                lineage["competition"] = await competition_part(self, spec)
                if not lineage["competition"]["ok"]:
                    self.counters.incr("market_lineage_failures")
                    raise ListingError(f"listing {listing_id}: competition {spec.competition} of its lineage does not "
                                       f"verify: {'; '.join(lineage['competition']['problems'])}")
            if fetched.peer_id is not None:  # kept only now: a model whose lineage fails is not
                await trio.to_thread.run_sync(store.put_model_bytes, fetched.data, listing.model_hash)
            record = _record(listing, spec, fetched.peer_id, lineage)
            record["path"] = str(store.model_path(listing.model_hash))
            self.held.save(record)
            self.counters.incr("market_fetched")
            record["served"] = await self._serve(record)
            return record

    async def _fetch_winner(self, listing: Listing) -> dict[str, Any]:
        """A competition listing: checked against the Arena, the winner's bytes taken as the
        hand-off takes them, the competition recomputed; then kept and served."""
        from flockd.arena.handoff import HandoffError, winner_of
        from flockd.arena.snapshot import read_competition

        spec = await trio.to_thread.run_sync(winner_task_spec, listing)  # the hand-off's view of the winner
        arena_spec = await trio.to_thread.run_sync(lambda: listed_arena_spec(listing))
        handoff = handoff_of(self)
        snap = await read_competition(handoff.svc.arena, listing.competition_id)
        if snap is None:
            raise ListingError(f"listing {listing.listing_id}: no competition {listing.competition_id}")
        try:
            _, winner = winner_of(snap, arena_spec)
        except HandoffError as exc:
            raise ListingError(f"listing {listing.listing_id}: {exc}") from None
        if (winner.model_hash, snap.params.base_model_hash, snap.params.recipe_hash) != (
                listing.model_hash, listing.lineage_root, listing.recipe_hash):
            raise ListingError(f"listing {listing.listing_id} does not match competition {listing.competition_id}")
        base = await trio.to_thread.run_sync(held_base, spec)
        await trio.to_thread.run_sync(check_model_size, spec, base)
        store = self.tasks.ctx.store
        held_before = await trio.to_thread.run_sync(store.has_model, listing.model_hash)
        try:  # this node's copy, else a peer's: hash and base layout checked, kept when they pass
            await handoff.base_model(spec)
        except HandoffError as exc:
            raise ListingError(f"listing {listing.listing_id}: {exc}") from None
        competition = await competition_part(self, spec)
        if not competition["ok"]:
            self.counters.incr("market_lineage_failures")
            raise ListingError(f"listing {listing.listing_id}: competition {listing.competition_id} does not verify: "
                               f"{'; '.join(competition['problems'])}")
        served_spec = TaskSpec(arena_spec.recipe, arena_spec.config, seed=arena_spec.seed)  # what loads the model
        lineage = {"ok": True, "competition": competition, "rounds_checked": 0,
                   "final_model_hash": _hex(listing.model_hash)}
        record = _record(listing, served_spec, None if held_before else "peer", lineage)
        record["arena_spec"] = arena_spec.to_json()
        record["path"] = str(store.model_path(listing.model_hash))
        self.held.save(record)
        self.counters.incr("market_fetched")
        record["served"] = await self._serve(record)
        return record

    async def _check_against_registry(self, listing: Listing) -> None:
        registry = self.tasks.registry
        state = await registry.get_state(listing.task_id)
        params = await registry.get_params(listing.task_id)
        final = (await registry.get_round(listing.task_id, params.rounds - 1)).model_hash if params.rounds else b""
        if (state.status, final, params.model_init_hash, params.recipe_hash) != (
                STATUS_FINISHED, listing.model_hash, listing.lineage_root, listing.recipe_hash):
            raise ListingError(f"listing {listing.listing_id} does not match task {listing.task_id} in the registry")

    async def _model_bytes(self, listing: Listing, layout: dict[str, tuple[int, ...]]) -> FetchedModel:
        store = self.tasks.ctx.store
        held = await trio.to_thread.run_sync(store.get_model_bytes, listing.model_hash)
        if held is not None:
            await trio.to_thread.run_sync(check_model_bytes, held, layout, listing.model_hash)
            return FetchedModel(held, None)
        request = encode_fetch(FetchRequest("model", listing.model_hash))
        bound = max_model_bytes(layout)
        network = self.tasks.ctx.network
        peers = network.peers()
        for peer in peers:
            try:
                data = await network.send_blob(peer.peer_id, FETCH_KIND, request)
            except (P2PError, BlobError):
                continue
            if not data:
                continue
            try:
                if len(data) > bound:
                    raise FLError(f"{len(data)} bytes, more than a model of this layout can be ({bound})")
                await trio.to_thread.run_sync(check_model_bytes, data, layout, listing.model_hash)
            except FLError as exc:
                self.counters.incr("market_models_refused")
                log.warning("a peer sent a model that is not the listed one", peer=peer.peer_id,
                            listing=listing.listing_id, error=str(exc))
                continue
            return FetchedModel(data, peer.peer_id)
        raise ListingError(f"none of {len(peers)} peers served listed model {_hex(listing.model_hash)}")

    async def _serve(self, record: dict[str, Any]) -> bool:
        """Add a held model to the running serving API (replacing an older fetch of the same
        listing); False when this node serves nothing or the recipe is neither a classifier
        nor a language model."""
        from pathlib import Path

        app = self._serve_app()
        if app is None:
            return False
        model = await trio.to_thread.run_sync(served_model, record, Path(record["path"]), self.held.exports)
        if model is None:
            return False
        current = app.models.get(model.name)
        if current is not None and (current.listing or {}).get("listing_id") != record["listing_id"]:
            raise ListingError(f"this node already serves another model named {model.name!r}")
        app.models[model.name] = model
        return True

    async def _require_market(self) -> None:
        if not await self.market.has_code():
            raise ListingError(f"no Market contract at {_hex(self.market.address)} (a genesis from before it?)")


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def _record(listing: Listing, spec: TaskSpec, peer_id: str | None, lineage: dict[str, Any]) -> dict[str, Any]:
    return {
        "listing_id": listing.listing_id,
        "name": listing.name,
        "kind": listing.kind,
        "task_id": listing.task_id,
        "competition_id": listing.competition_id,
        "model_hash": _hex(listing.model_hash),
        "lineage_root": _hex(listing.lineage_root),
        "lister": _hex(listing.lister),
        "licence": listing.licence,
        "description": listing.description,
        "spec": spec.to_json(),
        "fetched_from": peer_id,
        "lineage": lineage,
    }
