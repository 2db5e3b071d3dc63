"""The page's catalogue JSON (`GET /api/listings`): every listing on chain a page at a time,
each with its lineage graph, read from a real py-evm chain with the TaskRegistry and the
Market (tests/listed_chain.py): pages and their bounds, a page cached for its block, the
hostile strings kept as text and capped, which listing this node serves, and a listing
whose lineage cannot be read still there with the error."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from listed_chain import XSS_NAME, ListedChain, shared_listings

from flockd.chain.client.abc import ChainUnavailable
from flockd.chain.client.arena import Arena
from flockd.chain.client.market import MAX_DESCRIPTION_LEN, MAX_NAME_LEN, Listing, Market
from flockd.chain.client.registry import Registry, RoundInfo
from flockd.market.catalogue import MAX_PAGE, ListingCatalogue, catalogue_row
from flockd.serve.app import ServeApp
from flockd.stats import Counters


@pytest.fixture(scope="module")
def listed() -> tuple[ListedChain, Arena, dict[str, int]]:
    chain, ids = shared_listings()
    return chain, chain.arena_client(), ids


class ServedDouble:
    """Stands for a served model in ServeApp.models: only its name and listing are read here."""

    kind = "causal-lm"

    def __init__(self, name: str, listing_id: int) -> None:
        self.name, self.listing = name, {"listing_id": listing_id}


async def get(app: ServeApp, path: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        reply = await client.request(method, path)
        return reply.status_code, reply.json()


async def post(app: ServeApp, path: str) -> tuple[int, dict[str, Any]]:
    return await get(app, path, "POST")


def app_for(catalogue: ListingCatalogue) -> ServeApp:
    app = ServeApp([])
    app.models["digits-demo"] = ServedDouble("digits-demo", 1)  # type: ignore[assignment]
    app.listings = catalogue.page
    return app


async def test_listings_come_a_page_at_a_time_with_their_lineage(listed) -> None:
    chain, _, ids = listed
    market, registry = chain.clients()
    app = app_for(ListingCatalogue(market, registry))
    status, body = await get(app, "/api/listings")
    assert status == 200 and body["available"] and body["total"] == 5
    rows = {row["listing_id"]: row for row in body["listings"]}
    assert [row["name"] for row in body["listings"]] == ["digits-demo", XSS_NAME, "digits-modified", "digits-arena",
                                                         "digits-winner"]
    assert rows[1]["served"] == {"model": "digits-demo", "endpoint": "/v1/chat/completions"}
    assert rows[2]["served"] is None
    # digits-demo: task → round 0 (one proposal accepted) → round 1 (none) → the listing
    graph = rows[1]["lineage"]
    assert [n["type"] for n in graph["nodes"]] == ["task", "round", "round", "listing"] and graph["error"] is None
    assert graph["edges"] == [[a["id"], b["id"]] for a, b in zip(graph["nodes"], graph["nodes"][1:], strict=False)]
    assert [n["details"]["accepted"] for n in graph["nodes"][1:3]] == [1, 0]
    assert graph["nodes"][2]["details"]["model_hash"] == rows[1]["model_hash"]
    # the modified model starts from listing 1
    start = rows[ids["modified"]]["lineage"]["nodes"][0]
    assert start["type"] == "start" and start["details"]["listing_id"] == ids["first"]
    # a task seeded by a competition, and no Arena contract read here: the listing is there, with why
    seeded = rows[ids["seeded"]]
    assert seeded["name"] == "digits-arena" and "competition 1: this node reads no Arena" in seeded["lineage"]["error"]
    assert [n["type"] for n in seeded["lineage"]["nodes"]] == ["listing"]
    assert rows[ids["winner"]]["kind"] == "competition" and rows[ids["winner"]]["lineage"]["error"]

    status, body = await get(app, "/api/listings?start=2&limit=1")
    assert status == 200 and [row["listing_id"] for row in body["listings"]] == [2]
    assert body["listings"][0]["name"] == XSS_NAME  # as text: the page sets it with textContent
    assert body["listings"][0]["description"] == "<script>alert(2)</script>"
    status, body = await get(app, "/api/listings?start=9")
    assert status == 200 and body["listings"] == [] and body["total"] == 5
    for query, param in ((f"limit={MAX_PAGE + 1}", "limit"), ("limit=0", "limit"), ("start=0", "start"),
                         ("start=-1", "start"), ("start=1e3", "start"), ("limit=" + "9" * 30, "limit")):
        status, body = await get(app, "/api/listings?" + query)
        assert status == 400 and body["error"]["param"] == param, query


async def test_a_competition_seeds_a_task_and_its_winner_is_listed_as_it_is(listed) -> None:
    chain, arena, ids = listed
    market, registry = chain.clients()
    app = app_for(ListingCatalogue(market, registry, arena))
    status, body = await get(app, f"/api/listings?start={ids['seeded']}&limit=2")
    seeded, winner = body["listings"]
    graph = seeded["lineage"]
    assert [n["type"] for n in graph["nodes"]] == ["arena", "task", "round", "listing"] and graph["error"] is None
    competition = graph["nodes"][0]["details"]
    assert competition["phase"] == "finalised" and competition["winner"]["index"] == 0
    assert competition["winner"]["median"] == 900  # test_market_contract's ArenaBeside: 900 and 100
    # the winner listed as it is: one Arena node, then the listing, the same competition
    assert winner["kind"] == "competition" and winner["source_id"] == competition["competition_id"]
    assert [n["type"] for n in winner["lineage"]["nodes"]] == ["arena", "listing"]
    assert winner["lineage"]["nodes"][0]["details"] == competition and winner["recipe"] == "digits-mlp"


async def test_what_this_node_knows_joins_the_graph(listed, tmp_path, monkeypatch) -> None:
    """The metrics of a task it runs, what its own fetch verified; a long task's early rounds
    folded into one node."""
    import json

    import flockd.market.catalogue as catalogue_module
    from flockd.market.catalogue import task_metrics

    chain, _, ids = listed
    monkeypatch.setattr(catalogue_module, "MAX_ROUNDS_SHOWN", 1)

    async def status(task_id: int) -> dict[str, Any]:
        return {"history": [{"round": 0, "test_accuracy": 0.25, "accepted": 1}, {"round": 1, "test_accuracy": 0.5},
                            {"round": "x", "test_accuracy": 1.0}]}

    (tmp_path / f"{ids['first']}.json").write_text(json.dumps(
        {"model_hash": "0x" + "ab" * 32, "lineage": {"ok": True, "complete": True, "rounds_checked": 2}}))
    (tmp_path / f"{ids['xss']}.json").write_text("{not json")
    (tmp_path / f"{ids['modified']}.json").write_text(json.dumps(  # as market_fetch keeps an Arena winner's
        {"model_hash": "0x" + "cd" * 32, "lineage": {"ok": True, "competition": {"ok": True}, "rounds_checked": 0}}))
    market, registry = chain.clients()
    catalogue = ListingCatalogue(market, registry, metrics=task_metrics(status, lambda task_id: task_id == 1),
                                 held_root=tmp_path)
    rows = (await catalogue.page(1, 3))["listings"]
    nodes = rows[0]["lineage"]["nodes"]
    assert [n["type"] for n in nodes] == ["task", "elided", "round", "listing"]
    assert nodes[1]["details"]["rounds"] == 1 and nodes[2]["details"]["test_accuracy"] == 0.5
    assert "test_accuracy" not in rows[1]["lineage"]["nodes"][1]["details"]  # a task this node does not run
    assert rows[0]["verified"] == {"model_hash": "0x" + "ab" * 32, "ok": True, "rounds_checked": 2}
    assert rows[1]["verified"] is None and rows[2]["verified"]["ok"]


async def test_a_page_is_read_once_per_block(listed) -> None:
    chain, _, _ = listed
    market, registry = chain.clients()
    shared = Counters()  # a daemon passes its market service's, which the metrics export
    catalogue = ListingCatalogue(market, registry, counters=shared)
    backend = market.client.backend
    first = await catalogue.page(1, 2)
    calls = backend.calls
    assert await catalogue.page(1, 2) == first and backend.calls == calls + 1  # the head's number only
    chain.reg.chain.mine_empty(1)
    again = await catalogue.page(1, 2)
    assert again["block"] == first["block"] + 1 and again["listings"] == first["listings"]
    # the finished tasks' rounds were kept: a new block reads the listings, not the rounds again
    assert backend.calls - calls < calls
    assert shared.snapshot()["catalogue_pages_read"] == 2


async def test_ten_thousand_listings_cost_a_page_only_its_own(listed) -> None:
    chain, _, _ = listed

    class CrowdedMarket(Market):  # the count a chain with 10,000 listings would give; reads recorded
        asked: list[int] = []

        async def listing_count(self) -> int:
            return 10_000

        async def get_listing(self, listing_id: int) -> Listing | None:
            self.asked.append(listing_id)
            return await super().get_listing(listing_id)

    market, registry = chain.clients()
    crowded = CrowdedMarket(market.client, market.address)
    catalogue = ListingCatalogue(crowded, registry)
    page = await catalogue.page(1, MAX_PAGE)
    assert page["total"] == 10_000 and len(page["listings"]) == MAX_PAGE and crowded.asked == list(range(1, 21))
    last = await catalogue.page(9_999, 5)
    assert crowded.asked[20:] == [9_999, 10_000]  # past the count: nothing read
    assert [row["error"] for row in last["listings"]] == ["no listing 9999", "no listing 10000"]


async def test_a_listing_whose_lineage_cannot_be_read_is_there_with_the_error(listed) -> None:
    chain, _, ids = listed

    class FlakyRegistry(Registry):  # the chain node fails on one task's rounds
        async def get_round(self, task_id: int, r: int) -> RoundInfo:
            if task_id == 2:
                raise ChainUnavailable("connection reset by the chain node")
            return await super().get_round(task_id, r)

    market, registry = chain.clients(FlakyRegistry)
    status, body = await get(app_for(ListingCatalogue(market, registry)), "/api/listings")
    assert status == 200
    broken = body["listings"][ids["xss"] - 1]
    assert broken["name"] == XSS_NAME and "connection reset" in broken["lineage"]["error"]
    assert [n["type"] for n in broken["lineage"]["nodes"]] == ["listing"]
    assert body["listings"][0]["lineage"]["error"] is None


async def test_no_market_or_no_chain_says_why() -> None:
    chain = ListedChain()
    market, registry = chain.clients()
    market.address = bytes(19) + b"\x99"  # nothing deployed there
    status, body = await get(app_for(ListingCatalogue(market, registry)), "/api/listings")
    assert status == 200 and not body["available"] and "no Market contract" in body["why"]
    status, body = await get(ServeApp([]), "/api/listings")
    assert status == 200 and not body["available"] and "reads no chain" in body["why"]
    status, body = await post(ServeApp([]), "/api/listings/1/replay")
    assert status == 404 and body["error"]["code"] == "unavailable"


async def test_one_replay_at_a_time(monkeypatch) -> None:
    """A replay fetches deltas and rebuilds models: a second one asks again later."""
    import trio

    import flockd.market.catalogue as catalogue_module
    from flockd.market.catalogue import ListingReplays

    release = trio.Event()

    async def slow_report(market: Any, listing_id: int) -> dict[str, Any]:  # stands for listing_report
        await release.wait()
        return {"listing_id": listing_id, "ok": True,
                "lineage": [{"kind": "task", "rounds": list(range(100)), "problems": ["x" * 1000] * 50}]}

    monkeypatch.setattr(catalogue_module, "listing_report", slow_report)
    app = ServeApp([])
    app.replay_listing = ListingReplays(None)  # type: ignore[arg-type]
    answers: dict[int, Any] = {}

    async def ask(listing_id: int) -> None:
        answers[listing_id] = await post(app, f"/api/listings/{listing_id}/replay")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 1)
        await trio.testing.wait_all_tasks_blocked()
        await ask(2)
        release.set()
    assert answers[2][1]["busy"] and not answers[2][1]["ok"]
    (part,) = answers[1][1]["lineage"]
    assert answers[1][1]["ok"] and part["rounds"] == list(range(76, 100)) and len(part["problems"]) == MAX_PAGE
    assert all(len(p) <= 300 for p in part["problems"])
    status, body = await post(app, "/api/listings/0/replay")
    assert status == 400 and body["error"]["param"] == "listing_id"


def test_strings_from_a_hostile_chain_node_are_capped() -> None:
    listing = Listing(1, b"\x01" * 20, "task", 1, 0, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 5, True, "n" * 5000,
                      "d" * 10**6, "l" * 5000, "{}")
    row = catalogue_row(listing)
    assert len(row["name"]) == MAX_NAME_LEN and row["name"].endswith("…")
    assert len(row["description"]) == MAX_DESCRIPTION_LEN and len(row["licence"]) <= 64
