"""The Market contract beside a real TaskRegistry and a real Arena on a scratch py-evm
chain: listing a finished task's final model and a finalised competition's winner (one
table), unlisting, the views, every revert, and the gas of the largest listings against
the embedded chain's per-transaction cap."""

from __future__ import annotations

from typing import Any

import pytest
from arena_chain import (
    ARENA_ARTIFACT,
    E18,
    EVAL_SALT,
    EVAL_SET_HASH,
    PHASE_REVEAL,
    PHASE_SCORE_COMMIT,
    PHASE_SCORE_REVEAL,
    PHASE_SUBMIT,
    TRAINER,
    VALIDATOR,
    ArenaChain,
    model,
)
from arena_chain import PHASE_CLOSED as ARENA_CLOSED
from arena_chain import TOKEN as ARENA_TOKEN
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
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS

MARKET_ARTIFACT = load(MARKET)
SPEC = '{"config":{},"recipe":"digits-mlp","rule":"fedavg"}'
FINAL = keccak(b"the final model")
INIT = keccak(b"model 0")
CREATOR, PROPOSER, VOTER_A, VOTER_B, OUTSIDER = 0, 1, 2, 3, 7
WINNER, RUNNER_UP, JUDGE = 4, 5, 6  # in competitions, which CREATOR creates
ARENA_SPEC = '{"config":{},"recipe":"digits-mlp","seed":0}'
BASE, WINNING, LOSING = keccak(b"base model"), model("winner"), model("runner-up")
KIND_TASK, KIND_COMPETITION = 1, 2


class ArenaBeside(ArenaChain):
    """The Arena on a Registry's chain, for the Registry's accounts (and its token)."""

    def __init__(self, reg: Registry) -> None:  # not the dataclass's: no chain of its own
        self.n_accounts, self.vrf_salt = len(reg.accounts), b""
        self.accounts = [a.key for a in reg.accounts]
        self.vrf_keys = [a.vrf_sk for a in reg.accounts]
        self.chain, self.token = reg.chain, reg.token
        self.address = self.chain.deploy(self.accounts[0], ARENA_ARTIFACT, self.token, VRF_PRECOMPILE_ADDRESS)
        for key in self.accounts:
            self.chain.send(key, self.token, ARENA_TOKEN.encode_call("approve", self.address, 2**256 - 1))
        assert all(r.ok for r in self.chain.mine())

    def competition(self, reveal: bool = True, finalise: bool = True, spec: str = ARENA_SPEC,
                    scores: tuple[int, int] = (900, 100)) -> int:
        """CREATOR's competition on ARENA_SPEC: WINNER's model scores 900, RUNNER_UP's 100
        (or `scores`), by JUDGE (which, without `reveal`, never reveals: nothing is ranked)."""
        cid = self.create(CREATOR, recipe_hash=keccak(spec.encode()), base_model_hash=BASE)
        for who, role, stake in ((WINNER, TRAINER, 10), (RUNNER_UP, TRAINER, 10), (JUDGE, VALIDATOR, 100)):
            self.join(cid, who, role, stake * E18)
        self.mine()
        for who, m in ((WINNER, WINNING), (RUNNER_UP, LOSING)):
            self.commit_submission(cid, who, m)
            self.mine()
        self.advance_to(cid, PHASE_SUBMIT)
        self.chain.mine_empty(1)  # blockhash(join_end) readable from the next block on
        self.tx(JUDGE, "elect", cid, self.proof(JUDGE, cid))
        self.advance_to(cid, PHASE_REVEAL)
        for who, m in ((WINNER, WINNING), (RUNNER_UP, LOSING)):
            self.reveal_submission(cid, who, m)
        self.mine()
        self.advance_to(cid, PHASE_SCORE_COMMIT)
        self.commit_scores(cid, JUDGE, list(scores))
        self.mine()
        self.advance_to(cid, PHASE_SCORE_REVEAL)
        if reveal:
            self.reveal_scores(cid, JUDGE, list(scores))
        self.send(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
        self.mine()
        self.advance_to(cid, ARENA_CLOSED)
        if finalise:
            self.tx(RUNNER_UP, "finalise", cid)
        return cid


class MarketChain:
    """A Registry (test_contracts) and an Arena with the Market deployed for both."""

    def __init__(self) -> None:
        self.reg = Registry()
        self.arena = ArenaBeside(self.reg)
        self.address = self.reg.chain.deploy(self.reg.accounts[0].key, MARKET_ARTIFACT, self.reg.address,
                                             self.arena.address)

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

    def winner_args(self, cid: int, **over: Any) -> tuple[Any, ...]:
        return self.listing_args(cid, **{"name": "digits-winner", "model_hash": WINNING, "spec": ARENA_SPEC} | over)

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
    assert listing == (market.reg.hx(CREATOR), KIND_TASK, task, 0, FINAL, INIT, keccak(SPEC.encode()), market.reg.chain.block_number,
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
    assert market.view("get_listing", listing)[8] is False  # still readable, marked inactive
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


# --- a competition's winner -------------------------------------------------------------------


def test_the_creator_and_the_winning_trainer_list_the_winner_in_the_same_table(market: MarketChain) -> None:
    cid = market.arena.competition()
    task = market.finished_task()
    market.tx(CREATOR, "list_model", *market.listing_args(task))
    first = market.view("listing_count") + 1
    assert market.view("arena") == "0x" + market.arena.address.hex()
    result = market.tx(CREATOR, "list_winner", *market.winner_args(cid))
    (name, event), = market.events(result)
    assert (name, event) == ("WinnerListed", {"listing_id": first, "competition_id": cid, "lister": market.reg.hx(CREATOR),
                                              "model_hash": WINNING, "lineage_root": BASE, "name": "digits-winner"})
    assert MARKET_ARTIFACT.decode_output("list_winner", result.output) == (first,)
    assert market.view("get_listing", first) == (
        market.reg.hx(CREATOR), KIND_COMPETITION, 0, cid, WINNING, BASE, keccak(ARENA_SPEC.encode()),
        market.reg.chain.block_number, True, "digits-winner", "a digits classifier", "MIT", ARENA_SPEC)
    assert market.view("get_listing", first - 1)[1:4] == (KIND_TASK, task, 0)  # one table, both kinds
    market.tx(WINNER, "list_winner", *market.winner_args(cid, name="mine"))
    assert market.view("listing_count") == first + 1
    assert market.view("winner_listed_by", cid, market.reg.addr(WINNER)) == first + 1
    assert market.view("winner_listed_by", cid, market.reg.addr(RUNNER_UP)) == 0
    assert market.view("listed_by", task, market.reg.addr(CREATOR)) == first - 1  # a task's slots are apart


def test_list_winner_reverts(market: MarketChain) -> None:
    arena = market.arena
    cid = arena.competition()
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(cid, name="")) == "empty name"
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(cid, model_hash=bytes(32))) == "empty model hash"
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(10**6)) == "competition not finalised"
    for who in (RUNNER_UP, JUDGE, OUTSIDER):
        assert market.reverts(who, "list_winner", *market.winner_args(cid)) == "not the creator or the winner"
    assert market.reverts(WINNER, "list_winner", *market.winner_args(cid, model_hash=LOSING)) == (
        "not the competition's winning model")
    assert market.reverts(WINNER, "list_winner", *market.winner_args(cid, spec=ARENA_SPEC + " ")) == (
        "spec does not hash to the recipe hash")
    market.tx(WINNER, "list_winner", *market.winner_args(cid))
    assert market.reverts(WINNER, "list_winner", *market.winner_args(cid)) == "already listed"


def test_a_competition_not_finalised_or_without_a_ranked_submission_cannot_be_listed(market: MarketChain) -> None:
    arena = market.arena
    closed = arena.competition(finalise=False)
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(closed)) == "competition not finalised"
    arena.tx(RUNNER_UP, "finalise", closed)
    market.tx(CREATOR, "list_winner", *market.winner_args(closed))
    unranked = arena.competition(reveal=False)  # its only validator never revealed: nothing ranked
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(unranked)) == "competition has no winner"
    worthless = arena.competition(scores=(0, 0))  # scored 0 (e.g. withheld): nothing ranked, no winner to list
    assert market.reverts(CREATOR, "list_winner", *market.winner_args(worthless)) == "competition has no winner"


def test_unlist_a_winner_frees_its_slot(market: MarketChain) -> None:
    cid = market.arena.competition()
    listing = MARKET_ARTIFACT.decode_output("list_winner", market.tx(WINNER, "list_winner",
                                                                     *market.winner_args(cid)).output)[0]
    assert market.reverts(CREATOR, "unlist", listing) == "only the lister"
    market.tx(WINNER, "unlist", listing)
    assert market.view("get_listing", listing)[8] is False
    assert market.view("winner_listed_by", cid, market.reg.addr(WINNER)) == 0
    market.tx(WINNER, "list_winner", *market.winner_args(cid))


def test_the_largest_winner_listing_fits_a_transaction() -> None:
    chain = MarketChain()
    spec = '{"pad":"' + "x" * (MAX_SPEC_LEN - 10) + '"}'
    small = chain.tx(CREATOR, "list_winner", *chain.winner_args(chain.arena.competition()))
    big = chain.arena.competition(spec=spec)
    args = chain.winner_args(big, name="n" * MAX_NAME_LEN, description="d" * MAX_DESCRIPTION_LEN,
                             licence="l" * MAX_LICENCE_LEN, spec=spec)
    listed = chain.tx(WINNER, "list_winner", *args)
    assert listed.gas_used < MAX_TX_GAS // 2 and small.gas_used < listed.gas_used
    assert len(spec) == MAX_SPEC_LEN
    print(f"list_winner: {listed.gas_used} (largest), {small.gas_used} (small)")
