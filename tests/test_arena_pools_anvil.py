"""The Arena's delegation pools through their client (flockd.chain.client.arena_pools) on
two chains: the embedded chain (the Arena in its genesis) and a real anvil node."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from test_anvil import E18, MEMBERS, anvil  # noqa: F401  (anvil: the fixture)
from test_arena_anvil import EVAL_SALT, EVAL_SET_HASH, advance_to, arena_env, competition_params

from flockd import vrf
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    ROLE_TRAINER,
    ROLE_VALIDATOR,
    Arena,
    scores_digest,
    submission_digest,
)
from flockd.chain.client.arena_pools import UNBONDING_BLOCKS, ArenaPools, Pool, Unbonding
from flockd.chain.client.contract import ContractRevert

DELEGATOR, TRAINER, VALIDATOR = 0, 1, 3  # 0 also creates: any address may delegate


@pytest.mark.parametrize("backend", ["embedded", "anvil"])
async def test_a_delegated_validator_through_the_client(backend: str, anvil: object) -> None:  # noqa: F811
    async with arena_env(backend, anvil) as (env, address):
        arena = {who: Arena(env.client(who), address) for who in range(4)}
        pools = {who: ArenaPools(env.client(who), address) for who in range(4)}
        for who in range(4):
            await env.token(who).approve(address, 2**256 - 1)
        validator = MEMBERS[VALIDATOR].address
        first_block = await env.client(0).block_number()

        await pools[VALIDATOR].set_commission(2000)  # pending: no effect on this competition
        assert await pools[0].commission(validator) == 0
        with pytest.raises(ContractRevert, match="commission change pending"):
            await pools[VALIDATOR].set_commission(1000)
        assert await pools[DELEGATOR].delegate(validator, 300 * E18) == 300 * E18
        with pytest.raises(ContractRevert, match="not an operator"):
            await pools[VALIDATOR].delegate(validator, E18)

        cid = await arena[0].create(competition_params())
        await arena[TRAINER].join(cid, ROLE_TRAINER, 10 * E18)
        await arena[VALIDATOR].join(cid, ROLE_VALIDATOR, 100 * E18, vrf.public_key(MEMBERS[VALIDATOR].vrf_sk))
        assert await pools[0].backing(cid, validator) == 300 * E18
        assert (await arena[0].get_competition(cid)).validator_weight == 400 * E18
        with pytest.raises(ContractRevert, match="stake locked in a competition"):
            await pools[DELEGATOR].undelegate(validator, 1)

        model, salt = keccak(b"model"), keccak(b"salt")
        await arena[TRAINER].commit_submission(cid, submission_digest(cid, MEMBERS[TRAINER].address, model, salt))
        await advance_to(env, arena[0], cid, ARENA_PHASE_SUBMIT)
        await arena[VALIDATOR].elect(cid, vrf.prove(MEMBERS[VALIDATOR].vrf_sk, await arena[0].seed(cid)))
        await advance_to(env, arena[0], cid, ARENA_PHASE_REVEAL)
        await arena[TRAINER].reveal_submission(cid, model, salt)
        await advance_to(env, arena[0], cid, ARENA_PHASE_SCORE_COMMIT)
        await arena[VALIDATOR].commit_scores(cid, scores_digest(cid, validator, [800], salt))
        await advance_to(env, arena[0], cid, ARENA_PHASE_SCORE_REVEAL)
        await arena[VALIDATOR].reveal_scores(cid, [800], salt)
        await arena[0].publish_eval(cid, EVAL_SET_HASH, EVAL_SALT)
        await advance_to(env, arena[0], cid, ARENA_PHASE_CLOSED)
        await arena[0].finalise(cid)

        # the validator's 300 (30% of the pool): 3/4 earned by the backing, no commission yet
        rewarded = await arena[0].events(first_block, await env.client(0).block_number(), ["PoolRewarded"])
        assert [(e.args["reward"], e.args["commission"], e.args["delegators"]) for e in rewarded] == [
            (300 * E18, 0, 225 * E18)
        ]
        assert await arena[0].claimable(validator) == 100 * E18 + 75 * E18
        pool = await pools[0].get_pool(validator)
        assert pool == Pool(300 * E18, 300 * E18, 0, 1 + 225 * E18 * 2**64 // (300 * E18), 0, 2000, pool.commission_from)
        assert await pools[0].pending_rewards(validator, MEMBERS[DELEGATOR].address) == 225 * E18
        await pools[DELEGATOR].collect(validator)
        assert await pools[0].pending_rewards(validator, MEMBERS[DELEGATOR].address) == 0

        assert await pools[DELEGATOR].undelegate(validator, 300 * E18) == 300 * E18
        unbonding = await pools[0].get_unbonding(MEMBERS[DELEGATOR].address)
        assert unbonding == Unbonding(300 * E18, await env.client(0).block_number() + UNBONDING_BLOCKS)
        with pytest.raises(ContractRevert, match="still unbonding"):
            await pools[DELEGATOR].release_unbonded()
        await env.mine(unbonding.release_block - await env.client(0).block_number())
        await pools[DELEGATOR].release_unbonded()
        with pytest.raises(ContractRevert, match="nothing unbonding"):
            await pools[DELEGATOR].release_unbonded()
        # the creator's refund, the delegator's rewards and its stake, in one claim
        before = await env.token(0).balance_of(MEMBERS[DELEGATOR].address)
        await arena[DELEGATOR].claim()
        gained = await env.token(0).balance_of(MEMBERS[DELEGATOR].address) - before
        assert gained == 100 * E18 + 225 * E18 + 300 * E18  # bond back (the pool all paid out), rewards, stake
