"""The Arena's settlement against the reference rules on random competitions: weighted
medians, ranks with ties, rank rewards, closeness rewards, slashes and the creator's
refund, to the last token unit."""

from __future__ import annotations

from arena_chain import (
    BPS,
    E18,
    EVAL_SALT,
    EVAL_SET_HASH,
    PHASE_CLOSED,
    PHASE_REVEAL,
    PHASE_SCORE_COMMIT,
    PHASE_SCORE_REVEAL,
    PHASE_SUBMIT,
    TRAINER,
    VALIDATOR,
    ArenaChain,
    competition_params,
    model,
    params,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.chain.client.arena_settlement import settle

competitions = st.integers(1, 5).flatmap(
    lambda n_subs: st.fixed_dictionaries(
        {
            "n_subs": st.just(n_subs),
            # per validator: stake (in E18), revealed?, its score vector (small values: ties)
            "validators": st.lists(
                st.tuples(st.integers(100, 600), st.booleans(), st.lists(st.integers(0, 5), min_size=n_subs, max_size=n_subs)),
                min_size=1,
                max_size=5,
            ),
            "decay_bps": st.integers(1, BPS),
            "tolerance_bps": st.integers(1, BPS),
            "share_bps": st.integers(0, BPS),
        }
    )
)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(competitions)
def test_settlement_matches_the_reference(case: dict) -> None:
    n_subs, validators = case["n_subs"], case["validators"]
    trainers = list(range(1, 1 + n_subs))
    vals = list(range(1 + n_subs, 1 + n_subs + len(validators)))
    over = dict(
        expected_validators=16, rank_decay_bps=case["decay_bps"], tolerance_bps=case["tolerance_bps"],
        trainer_share_bps=case["share_bps"], validator_cap=400 * E18,
    )
    p = params(**over)
    arena = ArenaChain(n_accounts=1 + n_subs + len(validators))
    cid = arena.create(0, **over)
    for t in trainers:
        arena.join(cid, t, TRAINER, 10 * E18)
    for v, (stake, _, _) in zip(vals, validators, strict=True):
        arena.join(cid, v, VALIDATOR, stake * E18)
    arena.mine()
    for t in trainers:
        arena.commit_submission(cid, t, model(str(t)))
    arena.mine()
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)
    for v in vals:
        arena.send(v, "elect", cid, arena.proof(v, cid))  # expected 16: all of them
    arena.mine()
    arena.advance_to(cid, PHASE_REVEAL)
    for t in trainers:
        arena.reveal_submission(cid, t, model(str(t)))
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v, (_, _, scores) in zip(vals, validators, strict=True):
        arena.commit_scores(cid, v, scores)
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v, (_, revealed, scores) in zip(vals, validators, strict=True):
        if revealed:
            arena.reveal_scores(cid, v, scores)
    arena.send(0, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    events = arena.events(arena.tx(0, "finalise", cid))

    revealers = {k: scores for k, (_, revealed, scores) in enumerate(validators) if revealed}
    weights = {k: min(stake * E18, p["validator_cap"]) for k, (stake, revealed, _) in enumerate(validators) if revealed}
    slashes = {k: stake * E18 * p["slash_bps"] // BPS for k, (stake, revealed, _) in enumerate(validators) if not revealed}
    ranked = [e for name, e in events if name == "Ranked"]
    settled = [e for name, e in events if name == "ValidatorSettled"]
    (final,) = [e for name, e in events if name == "Finalised"]
    if not revealers:
        assert ranked == [] and all(e["reward"] == 0 for e in settled)
        assert final["burned"] == sum(slashes.values())
        assert final["creator_refund"] == p["reward_pool"] + p["creator_bond"]
        return
    expected = settle(revealers, weights, list(range(n_subs)), competition_params(**over), sum(slashes.values()))
    assert [(e["index"], e["rank"], e["median"], e["reward"]) for e in ranked] == [
        (i, k + 1, expected.medians[i], expected.trainer_rewards[k]) for k, i in enumerate(expected.order)
    ]
    assert [(e["revealed"], e["closeness"], e["reward"], e["slashed"]) for e in settled] == [
        (k in revealers, expected.closeness.get(k, 0), expected.validator_rewards.get(k, 0), slashes.get(k, 0))
        for k in range(len(validators))
    ]
    paid = sum(expected.trainer_rewards) + sum(expected.validator_rewards.values())
    assert final["creator_refund"] == p["reward_pool"] + sum(slashes.values()) - paid + p["creator_bond"]
    assert final["burned"] == 0
