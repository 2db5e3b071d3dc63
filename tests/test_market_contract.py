"""The Market contract beside a real TaskRegistry on a scratch py-evm chain: listing a
finished task's final model, unlisting, the views, every revert, and the gas of the
largest listing against the embedded chain's per-transaction cap."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import keccak
from test_contracts import PHASE_CLOSED, Registry

from flockd.chain.client.artifacts import MARKET, load
from flockd.chain.client.market import (
    MAX_DESCRIPTION_LEN,
    MAX_LICENCE_LEN,
    MAX_NAME_LEN,
    MAX_SPEC_LEN,
)
from flockd.chain.node.deploy import TxFailed, TxResult
from flockd.chain.node.embedded import MAX_TX_GAS

MARKET_ARTIFACT = load(MARKET)
SPEC = '{"config":{},"recipe":"digits-mlp","rule":"fedavg"}'
FINAL = keccak(b"the final model")
INIT = keccak(b"model 0")
CREATOR, PROPOSER, VOTER_A, VOTER_B, OUTSIDER = 0, 1, 2, 3, 7


class MarketChain:
    """A Registry (test_contracts) with the Market deployed for it."""

    def __init__(self) -> None:
        self.reg = Registry()
        self.address = self.reg.chain.deploy(self.reg.accounts[0].key, MARKET_ARTIFACT, self.reg.address)

    def transact(self, who: int, fn: str, *args: Any) -> TxResult:
        return self.reg.chain.transact(self.reg.accounts[who].key, self.address, MARKET_ARTIFACT.encode_call(fn, *args))

    def tx(self, who: int, fn: str, *args: Any) -> TxResult:
        return self.transact(who, fn, *args).check()

    def reverts(self, who: int, fn: str, *args: Any) -> str:
        result = self.transact(who, fn, *args)
        with pytest.raises(TxFailed) as info:
            result.check()
        return info.value.reason

    def view(self, fn: str, *args: Any) -> Any:
        out = MARKET_ARTIFACT.decode_output(fn, self.reg.chain.call(self.address, MARKET_ARTIFACT.encode_call(fn, *args)))
        return out[0] if len(out) == 1 else out

    def events(self, result: TxResult) -> list[tuple[str, dict[str, Any]]]:
        return [d for a, t, data in result.logs() if a == self.address and (d := MARKET_ARTIFACT.decode_log(t, data))]

    def listing_args(self, task: int, **over: Any) -> tuple[Any, ...]:
        fields = {"name": "digits", "description": "a digits classifier", "model_hash": FINAL, "licence": "MIT",
                  "spec": SPEC} | over
        return task, fields["name"], fields["description"], fields["model_hash"], fields["licence"], fields["spec"]

    def finished_task(self, record: bool = True) -> int:
        """One round: PROPOSER's delta accepted by both voters, the task finished, and (with
        `record`) FINAL attested by a stake majority as the round's model."""
        reg = self.reg
        task = reg.started([PROPOSER, VOTER_A, VOTER_B], rounds=1, recipe_hash=keccak(SPEC.encode()),
                           model_init_hash=INIT)
        reg.propose(task, 0, PROPOSER)
        reg.vote_round(task, 0, {VOTER_A: [1], VOTER_B: [1]})
        reg.tx(CREATOR, "finalise", task, 0)
        if record:
            record_final(reg, task)
        return task


def record_final(reg: Registry, task: int) -> None:
    for who in (PROPOSER, VOTER_A, VOTER_B):  # until a stake majority has attested it
        if reg.view("get_round", task, 0)[8] == bytes(32):
            reg.tx(who, "record_model", task, 0, FINAL)
    assert reg.view("get_round", task, 0)[8] == FINAL


@pytest.fixture(scope="module")
def market() -> MarketChain:
    return MarketChain()


def test_the_creator_and_a_participant_list_the_final_model(market: MarketChain) -> None:
    task = market.finished_task()
    assert market.view("registry") == "0x" + market.reg.address.hex()
    result = market.tx(CREATOR, "list_model", *market.listing_args(task))
    (name, event), = market.events(result)
    assert name == "ModelListed"
    assert event == {"listing_id": 1, "task_id": task, "lister": market.reg.hx(CREATOR), "model_hash": FINAL,
                     "lineage_root": INIT, "name": "digits"}
    assert MARKET_ARTIFACT.decode_output("list_model", result.output) == (1,)
    listing = market.view("get_listing", 1)
    assert listing == (market.reg.hx(CREATOR), task, FINAL, INIT, keccak(SPEC.encode()), market.reg.chain.block_number,
                       True, "digits", "a digits classifier", "MIT", SPEC)
    market.tx(PROPOSER, "list_model", *market.listing_args(task, name="digits-2"))
    assert market.view("listing_count") == 2
    assert market.view("listed_by", task, market.reg.addr(PROPOSER)) == 2
    assert market.view("listed_by", task, market.reg.addr(VOTER_A)) == 0
    assert market.view("get_listing", 99)[0] == "0x" + "00" * 20  # an unknown id reads as zeros


def test_list_model_reverts(market: MarketChain) -> None:
    reg = market.reg
    task = market.finished_task(record=False)
    assert market.reverts(CREATOR, "list_model", *market.listing_args(task)) == "task has no final model"
    record_final(reg, task)
    assert market.reverts(OUTSIDER, "list_model", *market.listing_args(task)) == "not the creator or a participant"
    assert market.reverts(CREATOR, "list_model", *market.listing_args(task, model_hash=keccak(b"other"))) == (
        "not the task's final model")
    assert market.reverts(CREATOR, "list_model", *market.listing_args(task, spec=SPEC + " ")) == (
        "spec does not hash to the recipe hash")
    assert market.reverts(CREATOR, "list_model", *market.listing_args(task, name="")) == "empty name"
    assert market.reverts(CREATOR, "list_model", *market.listing_args(task, model_hash=bytes(32))) == "empty model hash"
    assert market.reverts(CREATOR, "list_model", *market.listing_args(10**6)) == "task not finished"
    market.tx(VOTER_A, "list_model", *market.listing_args(task))
    assert market.reverts(VOTER_A, "list_model", *market.listing_args(task)) == "already listed"
    # a participant that withdrew its stake after the end is no longer one
    reg.tx(VOTER_B, "withdraw", task, reg.addr(VOTER_B))
    assert market.reverts(VOTER_B, "list_model", *market.listing_args(task)) == "not the creator or a participant"


def test_a_running_or_cancelled_task_cannot_be_listed(market: MarketChain) -> None:
    reg = market.reg
    running = reg.started([PROPOSER, VOTER_A], rounds=1, recipe_hash=keccak(SPEC.encode()))
    assert market.reverts(CREATOR, "list_model", *market.listing_args(running)) == "task not finished"
    reg.advance_to(running, 0, PHASE_CLOSED)
    reg.tx(CREATOR, "finalise", running, 0)  # no proposal: the round keeps the initial model
    init = reg.view("get_params", running)[2]
    market.tx(CREATOR, "list_model", *market.listing_args(running, model_hash=init))
    cancelled = reg.create(recipe_hash=keccak(SPEC.encode()))
    reg.tx(CREATOR, "cancel_task", cancelled)
    assert market.reverts(CREATOR, "list_model", *market.listing_args(cancelled)) == "task has no final model"


def test_strings_longer_than_their_bounds_do_not_decode(market: MarketChain) -> None:
    task = market.finished_task()
    for field, bound in (("name", MAX_NAME_LEN), ("description", MAX_DESCRIPTION_LEN), ("licence", MAX_LICENCE_LEN)):
        assert not market.transact(CREATOR, "list_model", *market.listing_args(task, **{field: "x" * (bound + 1)})).ok
    assert not market.transact(CREATOR, "list_model", *market.listing_args(task, spec="x" * (MAX_SPEC_LEN + 1))).ok
    market.tx(CREATOR, "list_model", *market.listing_args(task, name="x" * MAX_NAME_LEN))


def test_unlist(market: MarketChain) -> None:
    task = market.finished_task()
    listing = MARKET_ARTIFACT.decode_output("list_model", market.tx(CREATOR, "list_model",
                                                                    *market.listing_args(task)).output)[0]
    assert market.reverts(PROPOSER, "unlist", listing) == "only the lister"
    assert market.reverts(CREATOR, "unlist", 10**6) == "no such listing"
    (name, event), = market.events(market.tx(CREATOR, "unlist", listing))
    assert (name, event) == ("ModelUnlisted", {"listing_id": listing, "lister": market.reg.hx(CREATOR)})
    assert market.reverts(CREATOR, "unlist", listing) == "already unlisted"
    assert market.view("get_listing", listing)[6] is False  # still readable, marked inactive
    assert market.view("listed_by", task, market.reg.addr(CREATOR)) == 0
    again = MARKET_ARTIFACT.decode_output("list_model", market.tx(CREATOR, "list_model",
                                                                  *market.listing_args(task)).output)[0]
    assert again == listing + 1


def test_the_largest_listing_fits_a_transaction() -> None:
    chain = MarketChain()
    task = chain.finished_task()
    spec = '{"pad":"' + "x" * (MAX_SPEC_LEN - 10) + '"}'
    big = chain.reg.started([PROPOSER, VOTER_A], rounds=1, recipe_hash=keccak(spec.encode()))
    chain.reg.advance_to(big, 0, PHASE_CLOSED)
    chain.reg.tx(CREATOR, "finalise", big, 0)
    init = chain.reg.view("get_params", big)[2]
    args = chain.listing_args(big, name="n" * MAX_NAME_LEN, description="d" * MAX_DESCRIPTION_LEN,
                              licence="l" * MAX_LICENCE_LEN, spec=spec, model_hash=init)
    listed = chain.tx(CREATOR, "list_model", *args)
    unlisted = chain.tx(CREATOR, "unlist", 1)
    small = chain.tx(CREATOR, "list_model", *chain.listing_args(task))
    assert len(spec) == MAX_SPEC_LEN
    assert listed.gas_used < MAX_TX_GAS // 2 and small.gas_used < listed.gas_used
    assert unlisted.gas_used < 100_000
    print(f"list_model: {listed.gas_used} (largest), {small.gas_used} (small); unlist {unlisted.gas_used}")
