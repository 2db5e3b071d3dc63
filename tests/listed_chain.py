"""Listings on a real py-evm scratch chain for the page's catalogue: the TaskRegistry and
the Market (test_market_contract's MarketChain), tasks run round by round through the
contracts, and listings made with `list_model`; read through the typed clients (Market,
Registry) over `ScratchReads`, a read-only ChainBackend that answers eth_call,
eth_getCode and eth_blockNumber from that chain (reads only: the test sends its
transactions with the scratch chain's own helpers)."""

from __future__ import annotations

import functools
from typing import Any

import trio
from test_contracts import PHASE_CLOSED
from test_market_contract import (
    CREATOR,
    FINAL,
    INIT,
    PROPOSER,
    VOTER_A,
    VOTER_B,
    MarketChain,
    record_final,
)

from flockd.chain.client.abc import ChainBackend, ChainRPCError
from flockd.chain.client.arena import Arena
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.market import Market
from flockd.chain.client.registry import Registry
from flockd.chain.node.deploy import ScratchChain, TxFailed
from flockd.tasks.spec import TaskSpec

XSS_NAME = "<img src=x onerror=alert(1)>"


class ScratchReads(ChainBackend):
    def __init__(self, chain: ScratchChain) -> None:
        self.chain = chain
        self.calls = 0

    async def request(self, method: str, params: list[Any]) -> Any:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if method == "eth_blockNumber":
            return hex(self.chain.block_number)
        if method == "eth_getCode":
            return "0x" + self.chain.state().get_code(bytes.fromhex(params[0][2:])).hex()
        if method == "eth_call":
            call = params[0]
            try:
                return "0x" + self.chain.call(bytes.fromhex(call["to"][2:]), bytes.fromhex(call["data"][2:])).hex()
            except TxFailed as exc:
                raise ChainRPCError(3, f"execution reverted: {exc.reason}") from None
        raise ChainRPCError(-32601, f"{method} is not answered by this read-only backend")

    async def aclose(self) -> None:
        return None


def spec_json(spec: TaskSpec) -> str:
    return spec.canonical().decode()


class ListedChain(MarketChain):
    """A MarketChain whose tasks carry real specs and run rounds with an accepted proposal."""

    def task(self, spec: TaskSpec, rounds: int = 1) -> int:
        """A finished task of `rounds` rounds: round 0 accepts PROPOSER's delta (model FINAL
        recorded), later rounds have no proposal (the model stays)."""
        reg = self.reg
        task = reg.started([PROPOSER, VOTER_A, VOTER_B], rounds=rounds, recipe=spec.recipe, recipe_hash=spec.spec_hash,
                           model_init_hash=INIT)
        reg.propose(task, 0, PROPOSER)
        reg.vote_round(task, 0, {VOTER_A: [1], VOTER_B: [1]})
        reg.tx(CREATOR, "finalise", task, 0)
        record_final(reg, task)
        for r in range(1, rounds):
            reg.advance_to(task, r, PHASE_CLOSED)
            reg.tx(CREATOR, "finalise", task, r)
            for who in (PROPOSER, VOTER_A, VOTER_B):
                if reg.view("get_round", task, r)[8] == bytes(32):
                    reg.tx(who, "record_model", task, r, FINAL)
        return task

    def list(self, task: int, spec: TaskSpec, name: str, description: str = "", licence: str = "MIT") -> int:
        result = self.tx(CREATOR, "list_model", task, name, description, FINAL, licence, spec_json(spec))
        return int(self.events(result)[0][1]["listing_id"])

    def clients(self, registry_class: type[Registry] = Registry) -> tuple[Market, Registry]:
        client = ContractClient(ScratchReads(self.reg.chain))
        return Market(client, self.address), registry_class(client, self.reg.address)

    def arena_client(self) -> Arena:
        return Arena(ContractClient(ScratchReads(self.reg.chain)), self.arena.address)


def five_listings(chain: ListedChain) -> dict[str, int]:
    """digits-demo (2 rounds), a hostile name, a task started from digits-demo, a task
    seeded by an Arena competition, and that competition's winner listed as it is."""
    base = TaskSpec("digits-mlp", num_nodes=3, seed=1)
    first = chain.list(chain.task(base, rounds=2), base, "digits-demo", "digits, 2 rounds")
    hostile = TaskSpec("digits-mlp", num_nodes=3, seed=2)
    xss = chain.list(chain.task(hostile), hostile, XSS_NAME, "<script>alert(2)</script>", licence="<b>MIT</b>")
    first_task = chain.view("get_listing", first)[2]
    started = TaskSpec("digits-mlp", num_nodes=3, seed=3,
                       start={"listing_id": first, "task_id": first_task, "model_hash": "0x" + FINAL.hex()})
    modified = chain.list(chain.task(started), started, "digits-modified", "fine-tuned from digits-demo")
    cid = chain.arena.competition()  # on ARENA_SPEC: digits-mlp, seed 0
    seeded = TaskSpec("digits-mlp", num_nodes=3, seed=0, competition=cid)
    from_arena = chain.list(chain.task(seeded), seeded, "digits-arena", "fine-tuned from the Arena's winner")
    result = chain.tx(CREATOR, "list_winner", *chain.winner_args(cid, description="the Arena's winner as it is"))
    winner = int(chain.events(result)[0][1]["listing_id"])
    return {"first": first, "xss": xss, "modified": modified, "seeded": from_arena, "winner": winner}


@functools.cache
def shared_listings() -> tuple[ListedChain, dict[str, int]]:
    """One chain with five_listings for every test module of a run: built once (about 150
    transactions); tests may mine blocks on it, never list or unlist."""
    chain = ListedChain()
    return chain, five_listings(chain)
