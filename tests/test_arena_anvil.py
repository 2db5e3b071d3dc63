"""One Arena competition, two chains: the Arena client (flockd.chain.client.arena) drives
the contract on the embedded chain (InProcessBackend, the ECVRF precompile; the Arena in a
genesis that asks for it, as the embedded chain runs no contract created later) and on a
real anvil node (HttpBackend, the EcvrfVerifier contract; the Arena deployed on demand)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from eth_utils import keccak
from test_anvil import (  # noqa: F401  (anvil: the fixture)
    E18,
    MEMBERS,
    Env,
    anvil,
    anvil_env,
    embedded_env,
    genesis,
)

from flockd import vrf
from flockd.chain.client.addresses import ARENA_ADDRESS
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_FINALISED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    ROLE_TRAINER,
    ROLE_VALIDATOR,
    Arena,
    CompetitionParams,
    deploy_arena,
    eval_commitment,
    scores_digest,
    submission_digest,
)
from flockd.chain.client.contract import ContractRevert

CREATOR, TRAINERS, VALIDATOR = 0, (1, 2), 3
EVAL_SET_HASH, EVAL_SALT = keccak(b"held-out set"), keccak(b"eval salt")
MODELS = {1: keccak(b"model of 1"), 2: keccak(b"model of 2")}
SCORES = [700, 900]  # submission 1 (trainer 2) scores higher


def competition_params() -> CompetitionParams:
    return CompetitionParams(
        recipe_hash=keccak(b"recipe"), base_model_hash=keccak(b"base"),
        eval_commitment=eval_commitment(EVAL_SET_HASH, EVAL_SALT),
        join_blocks=16, submit_blocks=8, reveal_blocks=8, score_commit_blocks=8, score_reveal_blocks=8,
        reward_pool=1000 * E18, creator_bond=100 * E18, trainer_stake=10 * E18, validator_stake=100 * E18,
        validator_cap=1000 * E18, expected_validators=16,
    )


@asynccontextmanager
async def arena_env(backend: str, node: object) -> AsyncIterator[tuple[Env, bytes]]:
    """The environment and the Arena's address in it."""
    if backend == "anvil":
        async with anvil_env(node) as env:  # type: ignore[arg-type]
            yield env, await deploy_arena(env.client(0), env.deployment.token, env.deployment.verifier)
        return
    async with embedded_env(genesis(arena=True)) as env:
        yield env, ARENA_ADDRESS


async def advance_to(env: Env, arena: Arena, cid: int, phase: int) -> None:
    """Mine until a transaction sent now lands in `phase`."""
    ends = await arena.deadlines(cid)
    first = {
        ARENA_PHASE_SUBMIT: ends.join + 1,  # + 1: blockhash(join_end) must be readable
        ARENA_PHASE_REVEAL: ends.submit,
        ARENA_PHASE_SCORE_COMMIT: ends.reveal,
        ARENA_PHASE_SCORE_REVEAL: ends.score_commit,
        ARENA_PHASE_CLOSED: ends.score_reveal,
    }[phase]
    missing = first - (await env.client(0).block_number() + 1)
    if missing > 0:
        await env.mine(missing)
    assert await arena.phase(cid) == phase


@pytest.mark.parametrize("backend", ["embedded", "anvil"])
async def test_a_competition_through_the_client(backend: str, anvil: object) -> None:  # noqa: F811
    async with arena_env(backend, anvil) as (env, address):
        arena = {who: Arena(env.client(who), address) for who in range(4)}
        for who in range(4):
            await env.token(who).approve(address, 2**256 - 1)
        assert await arena[0].token() == env.deployment.token
        first_block = await env.client(0).block_number()

        cid = await arena[CREATOR].create(competition_params())
        assert (await arena[0].get_params(cid)) == competition_params()
        for t in TRAINERS:
            await arena[t].join(cid, ROLE_TRAINER, 10 * E18)
        await arena[VALIDATOR].join(cid, ROLE_VALIDATOR, 100 * E18, vrf.public_key(MEMBERS[VALIDATOR].vrf_sk))
        with pytest.raises(ContractRevert, match="already joined"):
            await arena[VALIDATOR].join(cid, ROLE_TRAINER, 10 * E18)
        salts = {t: keccak(b"salt %d" % t) for t in TRAINERS}
        for t in TRAINERS:
            digest = submission_digest(cid, MEMBERS[t].address, MODELS[t], salts[t])
            assert await arena[t].commit_submission(cid, digest) == TRAINERS.index(t)

        assert await arena[0].competition_count() == cid
        assert await arena[0].get_trainers(cid) == [MEMBERS[t].address for t in TRAINERS]
        assert await arena[0].get_validators(cid) == [MEMBERS[VALIDATOR].address]
        member = await arena[0].get_member(cid, MEMBERS[VALIDATOR].address)
        assert (member.role, member.stake, member.elected) == (ROLE_VALIDATOR, 100 * E18, False)
        assert await arena[0].election_threshold(cid, MEMBERS[VALIDATOR].address) == 2**64  # the only one
        await advance_to(env, arena[0], cid, ARENA_PHASE_SUBMIT)
        ends = await arena[0].deadlines(cid)
        seed = await arena[0].seed(cid)
        assert seed == keccak(await env.client(0).block_hash(ends.join) + cid.to_bytes(32, "big"))
        await arena[VALIDATOR].elect(cid, vrf.prove(MEMBERS[VALIDATOR].vrf_sk, seed))
        assert await arena[0].get_elected(cid) == [MEMBERS[VALIDATOR].address]

        await advance_to(env, arena[0], cid, ARENA_PHASE_REVEAL)
        for t in TRAINERS:
            await arena[t].reveal_submission(cid, MODELS[t], salts[t])
        await advance_to(env, arena[0], cid, ARENA_PHASE_SCORE_COMMIT)
        score_salt = keccak(b"score salt")
        await arena[VALIDATOR].commit_scores(cid, scores_digest(cid, MEMBERS[VALIDATOR].address, SCORES, score_salt))
        await advance_to(env, arena[0], cid, ARENA_PHASE_SCORE_REVEAL)
        await arena[VALIDATOR].reveal_scores(cid, SCORES, score_salt)
        assert await arena[0].get_scores(cid, MEMBERS[VALIDATOR].address) == SCORES
        await arena[CREATOR].publish_eval(cid, EVAL_SET_HASH, EVAL_SALT)

        await advance_to(env, arena[0], cid, ARENA_PHASE_CLOSED)
        await arena[1].finalise(cid)
        assert await arena[0].phase(cid) == ARENA_PHASE_FINALISED
        subs = await arena[0].get_submissions(cid)
        assert [(s.trainer, s.median, s.rank) for s in subs] == [
            (MEMBERS[1].address, 700, 2), (MEMBERS[2].address, 900, 1)
        ]
        # 70% of the pool to trainers by rank (halving), 30% to the one validator
        ranked = await arena[0].events(first_block, await env.client(0).block_number(), ["Ranked"])
        assert [(e.args["index"], e.args["reward"]) for e in ranked] == [(1, 1400 * E18 // 3), (0, 700 * E18 // 3)]
        competition = await arena[0].get_competition(cid)
        assert competition.finalised and competition.eval_set_hash == EVAL_SET_HASH

        assert await arena[0].claimable(MEMBERS[VALIDATOR].address) == 400 * E18
        assert await arena[0].burned() == 0
        before = {who: await env.token(0).balance_of(MEMBERS[who].address) for who in range(4)}
        for who in range(4):
            await arena[who].claim()
        gained = {who: await env.token(0).balance_of(MEMBERS[who].address) - before[who] for who in range(4)}
        assert gained[2] == 10 * E18 + 1400 * E18 // 3
        assert gained[VALIDATOR] == 100 * E18 + 300 * E18
        assert gained[CREATOR] == 1000 * E18 - 700 * E18 // 3 - 1400 * E18 // 3 - 300 * E18 + 100 * E18
        with pytest.raises(ContractRevert, match="nothing to claim"):
            await arena[1].claim()

        names = [e.name for e in await arena[0].events(first_block, await env.client(0).block_number())]
        for name in ("CompetitionCreated", "Joined", "SubmissionCommitted", "Elected", "SubmissionRevealed",
                     "ScoresCommitted", "ScoresRevealed", "EvalPublished", "Ranked", "ValidatorSettled",
                     "Finalised", "Claimed"):
            assert name in names, name
