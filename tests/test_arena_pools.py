"""Delegation pools of the Arena contract on a scratch py-evm chain: every function and
every revert of delegate, undelegate, release_unbonded, collect and set_commission, and
how a pool's backing counts in a competition (weight, rewards, slashes, eviction)."""

from __future__ import annotations

from typing import Any

import pytest
from arena_chain import (
    BPS,
    E18,
    EVAL_SALT,
    EVAL_SET_HASH,
    ONE,
    PHASE_CLOSED,
    PHASE_REVEAL,
    PHASE_SCORE_COMMIT,
    PHASE_SCORE_REVEAL,
    PHASE_SUBMIT,
    TRAINER,
    VALIDATOR,
    ArenaChain,
    model,
    params,
)

from flockd.chain.client.arena import MAX_VALIDATORS
from flockd.chain.client.arena_pools import (
    COMMISSION_DELAY_BLOCKS,
    MAX_COMMISSION_BPS,
    UNBONDING_BLOCKS,
)

CREATOR = 0
TRAINERS = [1, 2]
VALIDATORS = [5, 6, 7]
DELEGATORS = [9, 10]
ZERO = bytes(20)


@pytest.fixture
def arena() -> ArenaChain:
    return ArenaChain()


def pool(arena: ArenaChain, operator: int) -> dict[str, int]:
    names = ("stake", "total_shares", "locked", "reward_per_share", "commission_bps", "next_commission_bps", "commission_from")
    return dict(zip(names, arena.view("get_pool", arena.addr(operator)), strict=True))


def events(arena: ArenaChain, result: Any, name: str) -> list[dict[str, Any]]:
    return [e for n, e in arena.events(result) if n == name]


def delegate(arena: ArenaChain, who: int, operator: int, amount: int) -> int:
    result = arena.tx(who, "delegate", arena.addr(operator), amount)
    return arena.events(result)[0][1]["shares"]


# --- delegate ---------------------------------------------------------------------------------


def test_delegate_mints_shares_one_for_one_and_pulls_the_stake(arena: ArenaChain) -> None:
    before = arena.balance(9)
    result = arena.tx(9, "delegate", arena.addr(5), 30 * E18)
    assert events(arena, result, "Delegated") == [
        {"operator": arena.hx(5), "delegator": arena.hx(9), "amount": 30 * E18, "shares": 30 * E18}
    ]
    assert delegate(arena, 10, 5, 10 * E18) == 10 * E18
    assert arena.balance(9) == before - 30 * E18
    assert arena.arena_balance() == 40 * E18
    assert pool(arena, 5)["stake"] == pool(arena, 5)["total_shares"] == 40 * E18
    assert arena.view("shares_of", arena.addr(5), arena.addr(9)) == 30 * E18


def test_delegate_reverts(arena: ArenaChain) -> None:
    assert arena.reverts(9, "delegate", arena.addr(5), 0) == "zero amount"
    assert arena.reverts(9, "delegate", arena.addr(9), E18) == "not an operator"
    assert arena.reverts(9, "delegate", ZERO, E18) == "not an operator"


# --- undelegate, unbonding --------------------------------------------------------------------


def test_undelegated_stake_is_claimable_only_after_the_unbonding_delay(arena: ArenaChain) -> None:
    delegate(arena, 9, 5, 30 * E18)
    result = arena.tx(9, "undelegate", arena.addr(5), 10 * E18)
    release = arena.chain.block_number + UNBONDING_BLOCKS
    assert events(arena, result, "Undelegated") == [
        {"operator": arena.hx(5), "delegator": arena.hx(9), "amount": 10 * E18, "shares": 10 * E18, "release_block": release}
    ]
    assert pool(arena, 5)["stake"] == 20 * E18
    assert arena.view("get_unbonding", arena.addr(9)) == (10 * E18, release)
    assert arena.reverts(9, "release_unbonded") == "still unbonding"
    arena.chain.mine_empty(release - 2 - arena.chain.block_number)
    assert arena.reverts(9, "release_unbonded") == "still unbonding"  # lands in release - 1
    arena.tx(9, "release_unbonded")
    assert arena.view("claimable", arena.addr(9)) == 10 * E18
    assert arena.view("get_unbonding", arena.addr(9)) == (0, 0)
    before = arena.balance(9)
    arena.tx(9, "claim")
    assert arena.balance(9) == before + 10 * E18


def test_a_later_undelegation_restarts_the_wait_for_the_whole_amount(arena: ArenaChain) -> None:
    delegate(arena, 9, 5, 30 * E18)
    arena.tx(9, "undelegate", arena.addr(5), 10 * E18)
    arena.tx(9, "undelegate", arena.addr(5), 5 * E18)
    assert arena.view("get_unbonding", arena.addr(9)) == (15 * E18, arena.chain.block_number + UNBONDING_BLOCKS)


def test_undelegate_and_release_reverts(arena: ArenaChain) -> None:
    delegate(arena, 9, 5, 30 * E18)
    assert arena.reverts(9, "undelegate", arena.addr(5), 0) == "zero shares"
    assert arena.reverts(9, "undelegate", arena.addr(5), 30 * E18 + 1) == "not enough shares"
    assert arena.reverts(10, "undelegate", arena.addr(5), 1) == "not enough shares"
    assert arena.reverts(10, "release_unbonded") == "nothing unbonding"


# --- commission -------------------------------------------------------------------------------


def test_a_commission_change_takes_effect_after_the_delay_and_at_most_once_per_delay(arena: ArenaChain) -> None:
    op = arena.addr(5)
    assert arena.reverts(5, "set_commission", MAX_COMMISSION_BPS + 1) == "commission too high"
    result = arena.tx(5, "set_commission", 1000)
    effective = arena.chain.block_number + COMMISSION_DELAY_BLOCKS
    assert events(arena, result, "CommissionChanged") == [
        {"operator": arena.hx(5), "commission_bps": 1000, "from_block": effective}
    ]
    assert arena.view("commission", op) == 0
    assert arena.reverts(5, "set_commission", 2000) == "commission change pending"
    arena.chain.mine_empty(effective - 2 - arena.chain.block_number)
    assert arena.view("commission", op) == 0  # a tx sent now lands in effective - 1
    assert arena.reverts(5, "set_commission", 2000) == "commission change pending"
    assert arena.view("commission", op) == 1000
    arena.tx(5, "set_commission", MAX_COMMISSION_BPS)
    assert arena.view("commission", op) == 1000
    assert pool(arena, 5)["commission_bps"] == 1000


# --- backing in a competition -----------------------------------------------------------------


def test_the_free_pool_backs_the_operator_at_join_and_counts_toward_its_capped_weight(arena: ArenaChain) -> None:
    delegate(arena, 9, 5, 250 * E18)  # 5: 100 own + 250 backing = 350, under the 400 cap
    delegate(arena, 9, 6, 500 * E18)  # 6: 100 own + 500 backing, capped at 400
    cid = arena.create(CREATOR)
    for v in (5, 6, 7):
        arena.join(cid, v, VALIDATOR, 100 * E18)
    arena.mine()
    assert arena.view("backing", cid, arena.addr(5)) == 250 * E18
    assert pool(arena, 5)["locked"] == 250 * E18
    assert arena.view("get_competition", cid)[4] == (350 + 400 + 100) * E18
    thresholds = [arena.view("election_threshold", cid, arena.addr(v)) for v in (5, 6, 7)]
    assert thresholds == [min(ONE, w * 16 * ONE // (850 * E18)) for w in (350 * E18, 400 * E18, 100 * E18)]

    # the locked backing cannot leave; stake delegated later is free
    assert arena.reverts(9, "undelegate", arena.addr(5), 1) == "stake locked in a competition"
    delegate(arena, 10, 5, 20 * E18)
    arena.tx(10, "undelegate", arena.addr(5), 20 * E18)
    # a second seat gets only what is free: nothing
    other = arena.create(CREATOR)
    arena.join(other, 5, VALIDATOR, 100 * E18)
    arena.mine()
    assert arena.view("backing", other, arena.addr(5)) == 0


def test_a_pool_is_unlocked_at_finalise(arena: ArenaChain) -> None:
    delegate(arena, 9, 1, 40 * E18)
    cid = arena.create(CREATOR)
    arena.join(cid, 1, TRAINER, 10 * E18)
    arena.join(cid, 5, VALIDATOR, 100 * E18)
    arena.mine()
    assert pool(arena, 1)["locked"] == 40 * E18
    arena.advance_to(cid, PHASE_CLOSED)
    arena.tx(0, "finalise", cid)
    assert pool(arena, 1)["locked"] == 0
    arena.tx(9, "undelegate", arena.addr(1), 40 * E18)


def run_competition(arena: ArenaChain, reveal: tuple[int, ...] = tuple(VALIDATORS)) -> tuple[int, Any]:
    """Trainers 1, 2 and validators 5, 6, 7 through a whole competition; the finalise result."""
    cid = arena.create(CREATOR)
    for t in TRAINERS:
        arena.join(cid, t, TRAINER, 10 * E18)
    for v in VALIDATORS:
        arena.join(cid, v, VALIDATOR, 100 * E18)
    arena.mine()
    for t in TRAINERS:
        arena.commit_submission(cid, t, model(str(t)))
        arena.mine()
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)
    for v in VALIDATORS:
        arena.send(v, "elect", cid, arena.proof(v, cid))
    arena.mine()
    arena.advance_to(cid, PHASE_REVEAL)
    for t in TRAINERS:
        arena.reveal_submission(cid, t, model(str(t)))
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v in VALIDATORS:
        arena.commit_scores(cid, v, [900, 700])
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v in reveal:
        arena.reveal_scores(cid, v, [900, 700])
    arena.send(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    return cid, arena.tx(0, "finalise", cid)


def test_rewards_are_split_commission_to_the_operator_the_rest_to_the_shares_by_pull(arena: ArenaChain) -> None:
    arena.tx(5, "set_commission", 2000)
    arena.tx(1, "set_commission", 1000)
    arena.chain.mine_empty(COMMISSION_DELAY_BLOCKS)
    delegate(arena, 9, 5, 50 * E18)  # 5: 100 own + 200 backing, 9 holds a quarter
    delegate(arena, 10, 5, 150 * E18)
    delegate(arena, 9, 1, 30 * E18)  # trainer 1: 10 own + 30 backing
    cid, result = run_competition(arena)

    rewarded = {e["operator"]: e for e in events(arena, result, "PoolRewarded")}
    assert set(rewarded) == {arena.hx(1), arena.hx(5)}
    for op, own, backing, commission_bps in ((5, 100 * E18, 200 * E18, 2000), (1, 10 * E18, 30 * E18, 1000)):
        e = rewarded[arena.hx(op)]
        part = e["reward"] * backing // (own + backing)
        assert e["commission"] == part * commission_bps // BPS
        assert e["delegators"] == part - e["commission"]
        assert arena.view("claimable", arena.addr(op)) == own + e["reward"] - e["delegators"]
        assert pool(arena, op)["reward_per_share"] == 1 + e["delegators"] * ONE // backing  # starts at 1
    ranked = {e["trainer"]: e["reward"] for e in events(arena, result, "Ranked")}
    settled = {e["validator"]: e["reward"] for e in events(arena, result, "ValidatorSettled")}
    assert rewarded[arena.hx(1)]["reward"] == ranked[arena.hx(1)]
    assert rewarded[arena.hx(5)]["reward"] == settled[arena.hx(5)]
    # 5 weighs 300 against 100 and 100: the backing earned its share of the validator pool
    assert settled[arena.hx(5)] == 3 * settled[arena.hx(6)]

    rps = pool(arena, 5)["reward_per_share"] - 1
    pending_9 = arena.view("pending_rewards", arena.addr(5), arena.addr(9))
    pending_10 = arena.view("pending_rewards", arena.addr(5), arena.addr(10))
    assert (pending_9, pending_10) == (50 * E18 * rps // ONE, 150 * E18 * rps // ONE)
    arena.tx(10, "collect", arena.addr(5))
    assert arena.view("claimable", arena.addr(10)) == pending_10
    assert arena.view("pending_rewards", arena.addr(5), arena.addr(10)) == 0
    # undelegating settles too: the rewards stay the holder's
    arena.tx(9, "undelegate", arena.addr(5), 50 * E18)
    assert arena.view("claimable", arena.addr(9)) == pending_9
    assert arena.reverts(9, "collect", arena.addr(5)) == "no shares"
    # a newcomer's shares get none of the rewards paid before it came
    delegate(arena, 11, 5, 10 * E18)
    assert arena.view("pending_rewards", arena.addr(5), arena.addr(11)) == 0


def test_the_backing_of_a_validator_that_does_not_reveal_is_slashed_like_its_own_stake(arena: ArenaChain) -> None:
    delegate(arena, 9, 7, 200 * E18)
    cid, result = run_competition(arena, reveal=(5, 6))
    cut = 200 * E18 * params()["slash_bps"] // BPS
    assert events(arena, result, "PoolSlashed") == [{"operator": arena.hx(7), "competition_id": cid, "amount": cut}]
    assert (pool(arena, 7)["stake"], pool(arena, 7)["locked"]) == (200 * E18 - cut, 0)
    # the slash went to the validators who revealed, not to the creator
    finalised = events(arena, result, "Finalised")[0]
    paid = sum(e["reward"] for e in events(arena, result, "ValidatorSettled"))
    own_cut = 100 * E18 * params()["slash_bps"] // BPS
    assert paid == 1000 * E18 * 3000 // BPS + own_cut + cut
    assert finalised["burned"] == 0
    # a newcomer pays the lowered share price: more shares per token
    minted = delegate(arena, 10, 7, 9 * E18)
    assert minted == 9 * E18 * (200 * E18) // (200 * E18 - cut)
    # every share lost the same fraction
    arena.tx(9, "undelegate", arena.addr(7), 200 * E18)
    unbonding = arena.view("get_unbonding", arena.addr(9))[0]
    assert unbonding == 200 * E18 * (200 * E18 - cut + 9 * E18) // (200 * E18 + minted)
    assert 200 * E18 - cut - unbonding <= 1  # rounding, in the pool's favour


def test_a_newcomer_backed_by_its_pool_takes_the_seat_of_the_smallest_validator(arena: ArenaChain) -> None:
    arena = ArenaChain(n_accounts=MAX_VALIDATORS + 3)
    newcomer, delegator = MAX_VALIDATORS + 1, MAX_VALIDATORS + 2
    delegate(arena, 1, 2, 50 * E18)  # seat 2 is backed: not the smallest
    cid = arena.create(CREATOR)
    for v in range(1, 1 + MAX_VALIDATORS):
        arena.join(cid, v, VALIDATOR, 100 * E18)
    arena.mine()
    # 100 own stake alone does not beat the smallest seat's 100
    assert arena.reverts(newcomer, "join", cid, VALIDATOR, 100 * E18, arena.vrf_pk(newcomer)) == "validator seats full"
    delegate(arena, delegator, newcomer, E18)
    result = arena.tx(newcomer, "join", cid, VALIDATOR, 100 * E18, arena.vrf_pk(newcomer))
    evicted = events(arena, result, "Evicted")
    assert [e["validator"] for e in evicted] == [arena.hx(1)]  # the earliest of the equal ones
    assert arena.view("backing", cid, arena.addr(newcomer)) == E18
    assert arena.view("get_competition", cid)[4] == (MAX_VALIDATORS * 100 + 50 + 1) * E18


def test_an_evicted_validator_s_backing_is_unlocked(arena: ArenaChain) -> None:
    arena = ArenaChain(n_accounts=MAX_VALIDATORS + 3)
    delegate(arena, MAX_VALIDATORS + 2, 1, 5 * E18)  # seat 1: 105, the smallest
    cid = arena.create(CREATOR)
    for v in range(1, 1 + MAX_VALIDATORS):
        arena.join(cid, v, VALIDATOR, 110 * E18 if v != 1 else 100 * E18)
    arena.mine()
    assert pool(arena, 1)["locked"] == 5 * E18
    newcomer = MAX_VALIDATORS + 1
    result = arena.tx(newcomer, "join", cid, VALIDATOR, 106 * E18, arena.vrf_pk(newcomer))
    assert [e["validator"] for e in events(arena, result, "Evicted")] == [arena.hx(1)]
    assert pool(arena, 1)["locked"] == 0
    assert arena.view("backing", cid, arena.addr(1)) == 0
    assert arena.view("get_competition", cid)[4] == ((MAX_VALIDATORS - 1) * 110 + 106) * E18
