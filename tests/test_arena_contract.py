"""The Arena contract on a scratch py-evm chain with the real ECVRF precompile: a whole
competition settled against the reference rules, every function and every revert."""

from __future__ import annotations

import pytest
from arena_chain import (
    BPS,
    E18,
    EVAL_SALT,
    EVAL_SET_HASH,
    ONE,
    PHASE_CLOSED,
    PHASE_FINALISED,
    PHASE_JOIN,
    PHASE_NONE,
    PHASE_REVEAL,
    PHASE_SCORE_COMMIT,
    PHASE_SCORE_REVEAL,
    PHASE_SUBMIT,
    TOKEN,
    TRAINER,
    VALIDATOR,
    ArenaChain,
    as_tuple,
    competition_params,
    model,
    params,
    salt,
)
from eth_utils import keccak

from flockd.chain.client.arena import MAX_TRAINERS, MAX_VALIDATORS, scores_digest, submission_digest
from flockd.chain.client.arena_settlement import settle

CREATOR = 0
TRAINERS = [1, 2, 3, 4]
VALIDATORS = [5, 6, 7, 8]
STAKES = {5: 100 * E18, 6: 200 * E18, 7: 300 * E18, 8: 1000 * E18}  # 8 is capped at 400


@pytest.fixture
def arena() -> ArenaChain:
    return ArenaChain()


def joined(arena: ArenaChain, **over) -> int:
    cid = arena.create(CREATOR, **over)
    for t in TRAINERS:
        arena.join(cid, t, TRAINER, 10 * E18)
    for v in VALIDATORS:
        arena.join(cid, v, VALIDATOR, STAKES[v])
    arena.mine()
    return cid


def elected(arena: ArenaChain, skip: tuple[int, ...] = (), **over) -> int:
    cid = joined(arena, **over)
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)  # blockhash(join_end) readable from the next block on
    for v in VALIDATORS:
        if v not in skip:
            arena.send(v, "elect", cid, arena.proof(v, cid))
    arena.mine()
    return cid


def submitted(arena: ArenaChain, models: dict[int, bytes], **over) -> int:
    """Trainers commit in the order of `models` (during the join phase), then reveal."""
    cid = joined(arena, **over)
    for t, m in models.items():
        arena.commit_submission(cid, t, m)
        arena.mine()  # one block each: commit order is the dict's order
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)
    for v in VALIDATORS:
        arena.send(v, "elect", cid, arena.proof(v, cid))
    arena.mine()
    arena.advance_to(cid, PHASE_REVEAL)
    for t, m in models.items():
        arena.reveal_submission(cid, t, m)
    arena.mine()
    return cid


# --- a whole competition ----------------------------------------------------------------------


def test_a_whole_competition_settles_by_the_reference_rules(arena: ArenaChain) -> None:
    models = {1: model("a"), 2: model("b"), 3: model("c"), 4: model("a")}  # 4 copies 1
    cid = submitted(arena, models)
    subs = arena.view("get_submissions", cid)
    assert [s[4] for s in subs] == [False, False, False, True]  # the later "a" is a duplicate

    # honest validators agree up to noise; 5 is lazy (random scores); 8 never reveals
    vectors = {
        5: [100, 950, 20, 999],
        6: [900, 700, 800, 5],
        7: [910, 690, 800, 5],
        8: [905, 695, 805, 5],
    }
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v, s in vectors.items():
        arena.commit_scores(cid, v, s)
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v in (5, 6, 7):
        arena.reveal_scores(cid, v, vectors[v])
    arena.send(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    arena.mine()
    assert arena.view("get_competition", cid)[3] == EVAL_SET_HASH

    arena.advance_to(cid, PHASE_CLOSED)
    before = {who: arena.balance(who) for who in range(9)}
    result = arena.tx(1, "finalise", cid)
    assert arena.view("phase", cid) == PHASE_FINALISED

    p = params()
    elected_order = [arena.addr(v) for v in VALIDATORS]
    assert list(arena.view("get_elected", cid)) == ["0x" + a.hex() for a in elected_order]
    weights = {v: min(STAKES[v], p["validator_cap"]) for v in (5, 6, 7)}
    slash = STAKES[8] * p["slash_bps"] // BPS
    expected = settle({v: vectors[v] for v in (5, 6, 7)}, weights, [0, 1, 2], competition_params(), slash)
    assert expected.medians == {0: 900, 1: 690, 2: 800}  # 5's random vector moved none of them
    assert expected.order == [0, 2, 1]

    events = arena.events(result)
    ranked = [e for name, e in events if name == "Ranked"]
    assert [(r["index"], r["rank"], r["median"], r["reward"]) for r in ranked] == [
        (i, k + 1, expected.medians[i], expected.trainer_rewards[k]) for k, i in enumerate(expected.order)
    ]
    settled = {e["validator"]: e for name, e in events if name == "ValidatorSettled"}
    for v in (5, 6, 7):
        assert settled[arena.hx(v)]["reward"] == expected.validator_rewards[v]
        assert settled[arena.hx(v)]["closeness"] == expected.closeness[v]
    assert settled[arena.hx(8)] == {
        "competition_id": cid,
        "validator": arena.hx(8), "revealed": False, "closeness": 0, "reward": 0, "slashed": slash
    }
    # the lazy validator is paid less per unit of stake than the honest ones
    per_stake = {v: expected.validator_rewards[v] / weights[v] for v in (5, 6, 7)}
    assert per_stake[5] < min(per_stake[6], per_stake[7]) / 2

    # everything is claimable: stakes back (less 8's slash), rewards, the bond and the dust
    for who in range(9):
        if arena.view("claimable", arena.addr(who)):
            arena.send(who, "claim")
    arena.mine()
    gained = {who: arena.balance(who) - before[who] for who in range(9)}
    assert gained[1] == 10 * E18 + expected.trainer_rewards[0]
    assert gained[3] == 10 * E18 + expected.trainer_rewards[1]
    assert gained[2] == 10 * E18 + expected.trainer_rewards[2]
    assert gained[4] == 10 * E18  # the copy earns nothing
    assert gained[8] == STAKES[8] - slash
    assert gained[5] == STAKES[5] + expected.validator_rewards[5]
    paid = sum(expected.trainer_rewards) + sum(expected.validator_rewards.values())
    assert gained[CREATOR] == p["reward_pool"] + slash - paid + p["creator_bond"]
    assert arena.arena_balance() == 0
    assert arena.view("burned") == 0


def test_a_creator_that_does_not_publish_loses_its_bond(arena: ArenaChain) -> None:
    cid = submitted(arena, {1: model("a"), 2: model("b")})
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v in VALIDATORS:
        arena.commit_scores(cid, v, [10, 20])
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v in VALIDATORS:
        arena.reveal_scores(cid, v, [10, 20])
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    result = arena.tx(3, "finalise", cid)
    final = dict(arena.events(result))["Finalised"]
    assert final["burned"] == params()["creator_bond"]
    assert arena.view("burned") == params()["creator_bond"]
    assert arena.view("get_submissions", cid)[1][6] == 1  # "b" (20) ranks first
    # the token balance held equals what is owed plus what is burned
    owed = sum(arena.view("claimable", arena.addr(w)) for w in range(9))
    assert arena.arena_balance() == owed + params()["creator_bond"]


def test_when_no_validator_reveals_the_pool_returns_and_the_slashes_burn(arena: ArenaChain) -> None:
    cid = submitted(arena, {1: model("a")})
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    arena.commit_scores(cid, 5, [1])
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    arena.tx(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    arena.advance_to(cid, PHASE_CLOSED)
    result = arena.tx(1, "finalise", cid)
    final = dict(arena.events(result))["Finalised"]
    slashes = sum(STAKES[v] * params()["slash_bps"] // BPS for v in VALIDATORS)  # elected, none revealed
    assert final["ranked"] == 0 and final["revealed_weight"] == 0
    assert final["burned"] == slashes
    assert final["creator_refund"] == params()["reward_pool"] + params()["creator_bond"]
    assert arena.view("get_submissions", cid)[0][6] == 0  # unranked


def scores_revealed(arena: ArenaChain, cid: int, vectors: dict[int, list[int]]) -> None:
    """Every validator in `vectors` commits its score vector, then reveals it."""
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v, s in vectors.items():
        arena.commit_scores(cid, v, s)
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v, s in vectors.items():
        arena.reveal_scores(cid, v, s)


def scored_and_finalised(arena: ArenaChain, models: dict[int, bytes], vectors: dict[int, list[int]]) -> tuple[int, list]:
    """Every validator commits and reveals its vector, the set is published, then finalise:
    (the competition, finalise's events)."""
    cid = submitted(arena, models)
    scores_revealed(arena, cid, vectors)
    arena.send(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    return cid, arena.events(arena.tx(9, "finalise", cid))


def claimed(arena: ArenaChain) -> dict[int, int]:
    """Every member and the creator claim: what each gained."""
    before = {who: arena.balance(who) for who in range(9)}
    for who in range(9):
        if arena.view("claimable", arena.addr(who)):
            arena.send(who, "claim")
    arena.mine()
    return {who: arena.balance(who) - before[who] for who in range(9)}


def test_a_withheld_submission_is_not_ranked_nor_paid(arena: ArenaChain) -> None:
    """Trainer 3 commits a model hash and never serves the model: every honest validator
    scores it 0, and 5 (the least stake, a friend of 3) scores it high. Its median is 0:
    it gets no rank and no reward; the trainers' pool is shared by the two ranked ones as
    if it had never entered, and the validators that scored it 0 are the close ones."""
    vectors = {5: [800, 600, 900], 6: [800, 600, 0], 7: [810, 590, 0], 8: [805, 600, 0]}
    cid, events = scored_and_finalised(arena, {1: model("a"), 2: model("b"), 3: model("withheld")}, vectors)

    p = params()
    weights = {v: min(STAKES[v], p["validator_cap"]) for v in VALIDATORS}
    expected = settle(vectors, weights, [0, 1, 2], competition_params(), 0)
    assert expected.medians == {0: 805, 1: 600, 2: 0}
    assert expected.order == [0, 1]  # the withheld one is counted, not ranked
    trainer_pool = p["reward_pool"] * p["trainer_share_bps"] // BPS
    two = trainer_pool * ONE // (ONE + ONE // 2)  # rank 1 of two: all of the pool goes to the ranked
    assert expected.trainer_rewards == [two, trainer_pool * (ONE // 2) // (ONE + ONE // 2)]

    ranked = [e for name, e in events if name == "Ranked"]
    assert [(r["index"], r["rank"], r["median"], r["reward"]) for r in ranked] == [
        (0, 1, 805, expected.trainer_rewards[0]), (1, 2, 600, expected.trainer_rewards[1]),
    ]
    assert [(s[5], s[6]) for s in arena.view("get_submissions", cid)] == [(805, 1), (600, 2), (0, 0)]
    final = dict(events)["Finalised"]
    assert final["ranked"] == 2
    settled = {e["validator"]: e for name, e in events if name == "ValidatorSettled"}
    for v in VALIDATORS:  # closeness counts the withheld one: scoring it 0 was right
        assert (settled[arena.hx(v)]["closeness"], settled[arena.hx(v)]["reward"]) == (
            expected.closeness[v], expected.validator_rewards[v])
    assert expected.closeness[5] < min(expected.closeness[v] for v in (6, 7, 8)) - BPS // 2

    gained = claimed(arena)
    assert gained[3] == 10 * E18  # its stake back, nothing more
    assert gained[1] == 10 * E18 + expected.trainer_rewards[0]
    assert gained[2] == 10 * E18 + expected.trainer_rewards[1]
    paid = sum(expected.trainer_rewards) + sum(expected.validator_rewards.values())
    assert gained[CREATOR] == p["reward_pool"] - paid + p["creator_bond"] == final["creator_refund"]
    assert arena.arena_balance() == 0 and arena.view("burned") == 0  # nothing created, nothing lost


def test_when_every_median_is_0_no_trainer_is_paid_and_their_pool_returns(arena: ArenaChain) -> None:
    """No submission is served (or all are worthless): finalise still settles, ranks none,
    pays the validators for their (right) zeros and gives the trainers' pool back to the
    creator, as when nothing was submitted."""
    vectors = {5: [0, 3], 6: [0, 0], 7: [0, 0], 8: [0, 0]}
    cid, events = scored_and_finalised(arena, {1: model("a"), 2: model("b")}, vectors)

    p = params()
    weights = {v: min(STAKES[v], p["validator_cap"]) for v in VALIDATORS}
    expected = settle(vectors, weights, [0, 1], competition_params(), 0)
    assert expected.medians == {0: 0, 1: 0} and expected.order == [] and expected.trainer_rewards == []
    assert [name for name, _ in events].count("Ranked") == 0
    assert [s[6] for s in arena.view("get_submissions", cid)] == [0, 0]
    final = dict(events)["Finalised"]
    assert final["ranked"] == 0 and final["burned"] == 0
    validator_pool = p["reward_pool"] - p["reward_pool"] * p["trainer_share_bps"] // BPS
    assert 0 < sum(expected.validator_rewards.values()) <= validator_pool
    settled = {e["validator"]: e for name, e in events if name == "ValidatorSettled"}
    assert [settled[arena.hx(v)]["reward"] for v in VALIDATORS] == [expected.validator_rewards[v] for v in VALIDATORS]

    gained = claimed(arena)
    assert gained[1] == gained[2] == 10 * E18
    refund = p["reward_pool"] - sum(expected.validator_rewards.values())
    assert final["creator_refund"] == refund + p["creator_bond"] == gained[CREATOR]
    assert arena.arena_balance() == 0 and arena.view("burned") == 0


def test_ties_go_to_the_earlier_commit(arena: ArenaChain) -> None:
    cid = submitted(arena, {3: model("x"), 1: model("y"), 2: model("z")})  # commit order 3, 1, 2
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v in VALIDATORS:
        arena.commit_scores(cid, v, [50, 50, 60])
    arena.mine()
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v in VALIDATORS:
        arena.reveal_scores(cid, v, [50, 50, 60])
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    arena.tx(1, "finalise", cid)
    ranks = [s[6] for s in arena.view("get_submissions", cid)]
    assert ranks == [2, 3, 1]  # trainer 3 committed before trainer 1 at the same median


def test_a_copy_revealed_first_is_still_the_copy(arena: ArenaChain) -> None:
    """Of identical model hashes the earliest commit counts, whatever the reveal order."""
    cid = arena.create(CREATOR)
    for t in (1, 2):
        arena.join(cid, t, TRAINER, 10 * E18)
    arena.mine()
    arena.commit_submission(cid, 1, model("a"))
    arena.mine()
    arena.commit_submission(cid, 2, model("a"))
    arena.mine()
    arena.advance_to(cid, PHASE_REVEAL)
    arena.reveal_submission(cid, 2, model("a"))
    arena.mine()
    assert [s[4] for s in arena.view("get_submissions", cid)] == [False, False]
    result = arena.tx(1, "reveal_submission", cid, model("a"), salt(1))
    assert ("Duplicate", {"competition_id": cid, "index": 1, "original": 0}) in arena.events(result)
    assert [s[4] for s in arena.view("get_submissions", cid)] == [False, True]


def test_a_copied_commit_cannot_be_revealed(arena: ArenaChain) -> None:
    """The digest binds the sender: trainer 2 replays trainer 1's commit, and learns its
    model hash and salt when 1 reveals, yet cannot open the copy."""
    cid = arena.create(CREATOR)
    for t in (1, 2):
        arena.join(cid, t, TRAINER, 10 * E18)
    arena.mine()
    digest = submission_digest(cid, arena.addr(1), model("a"), salt(1))
    arena.send(1, "commit_submission", cid, digest)
    arena.send(2, "commit_submission", cid, digest)
    arena.mine()
    arena.advance_to(cid, PHASE_REVEAL)
    arena.reveal_submission(cid, 1, model("a"))
    arena.mine()
    assert arena.reverts(2, "reveal_submission", cid, model("a"), salt(1)) == "reveal does not match commitment"


# --- election --------------------------------------------------------------------------------


def test_election_is_linear_in_capped_stake(arena: ArenaChain) -> None:
    cid = joined(arena, expected_validators=1)
    total = sum(min(s, 400 * E18) for s in STAKES.values())  # 1000 counts as 400
    assert arena.view("get_competition", cid)[4] == total
    for v in VALIDATORS:
        assert arena.view("election_threshold", cid, arena.addr(v)) == min(STAKES[v], 400 * E18) * ONE // total
    assert arena.view("election_threshold", cid, arena.addr(1)) == 0  # a trainer is never elected
    # splitting a stake in two changes nothing: 100 + 100 draws twice at 100's threshold
    halves = 2 * arena.view("election_threshold", cid, arena.addr(5))
    assert 0 <= arena.view("election_threshold", cid, arena.addr(6)) - halves <= 1  # floor rounding


def test_only_draws_below_the_threshold_are_elected(arena: ArenaChain) -> None:
    cid = joined(arena, expected_validators=1)
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)
    assert arena.view("seed", cid) == arena.seed(cid)
    outcomes = {}
    for v in VALIDATORS:
        threshold = arena.view("election_threshold", cid, arena.addr(v))
        draw = arena.draw(v, cid)
        if draw < threshold:
            result = arena.tx(v, "elect", cid, arena.proof(v, cid))
            assert arena.events(result) == [
                ("Elected", {"competition_id": cid, "validator": arena.hx(v), "seed": arena.seed(cid), "draw": draw})
            ]
        else:
            assert arena.reverts(v, "elect", cid, arena.proof(v, cid)) == "not elected"
        outcomes[v] = draw < threshold
    assert list(arena.view("get_elected", cid)) == [arena.hx(v) for v in VALIDATORS if outcomes[v]]
    assert arena.view("get_competition", cid)[2] == arena.seed(cid)  # fixed by the first election


def test_more_winners_than_seats_find_the_seats_full() -> None:
    """Expected 16 of 32 equal validators: when the draws elect more than 16 (the first VRF
    key salt for which they do), the seventeenth to prove it finds the seats full."""
    for attempt in range(20):
        arena = ArenaChain(n_accounts=33, vrf_salt=b"%d" % attempt)
        cid = arena.create(CREATOR)
        for v in range(1, 33):
            arena.join(cid, v, VALIDATOR, 100 * E18)
        arena.mine()
        arena.advance_to(cid, PHASE_SUBMIT)
        arena.chain.mine_empty(1)
        threshold = arena.view("election_threshold", cid, arena.addr(1))
        assert threshold == ONE // 2
        winners = [v for v in range(1, 33) if arena.draw(v, cid) < threshold]
        if len(winners) > 16:
            break
    assert len(winners) > 16
    for v in winners[:16]:
        arena.send(v, "elect", cid, arena.proof(v, cid))
    arena.mine()
    assert arena.reverts(winners[16], "elect", cid, arena.proof(winners[16], cid)) == "validator seats full"


# --- every revert ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"eval_commitment": bytes(32)}, "empty eval commitment"),
        ({"base_model_hash": bytes(32)}, "empty base model hash"),
        ({"join_blocks": 0}, "join_blocks"),
        ({"join_blocks": 1025}, "join_blocks"),
        ({"submit_blocks": 1}, "submit_blocks"),
        ({"submit_blocks": 257}, "submit_blocks"),
        ({"reveal_blocks": 7}, "reveal_blocks"),
        ({"reveal_blocks": 1025}, "reveal_blocks"),
        ({"score_commit_blocks": 0}, "score_commit_blocks"),
        ({"score_commit_blocks": 1025}, "score_commit_blocks"),
        ({"score_reveal_blocks": 7}, "score_reveal_blocks"),
        ({"score_reveal_blocks": 1025}, "score_reveal_blocks"),
        ({"reward_pool": 0}, "empty reward pool"),
        ({"creator_bond": 0}, "no creator bond"),
        ({"trainer_stake": 0}, "zero stake"),
        ({"validator_stake": 0}, "zero stake"),
        ({"validator_cap": 99 * E18}, "validator cap below the minimum stake"),
        ({"expected_validators": 0}, "expected_validators"),
        ({"expected_validators": 17}, "expected_validators"),
        ({"trainer_share_bps": BPS + 1}, "trainer_share_bps"),
        ({"rank_decay_bps": 0}, "rank_decay_bps"),
        ({"rank_decay_bps": BPS + 1}, "rank_decay_bps"),
        ({"tolerance_bps": 0}, "tolerance_bps"),
        ({"tolerance_bps": BPS + 1}, "tolerance_bps"),
        ({"slash_bps": 5001}, "slash_bps"),
        ({"reward_pool": 10**7 * E18}, "insufficient balance"),
    ],
)
def test_create_reverts(arena: ArenaChain, over: dict, reason: str) -> None:
    assert arena.reverts(CREATOR, "create", as_tuple(params(**over))) == reason


def test_create_pulls_pool_and_bond_and_needs_an_allowance(arena: ArenaChain) -> None:
    before = arena.balance(CREATOR)
    cid = arena.create(CREATOR)
    assert cid == 1 and arena.view("competition_count") == 1
    assert before - arena.balance(CREATOR) == 1200 * E18
    assert arena.view("get_params", cid) == as_tuple(params())
    assert arena.view("phase", cid) == PHASE_JOIN
    assert arena.view("phase", 2) == PHASE_NONE
    arena.chain.transact(arena.accounts[9], arena.token, TOKEN.encode_call("approve", arena.address, 0)).check()
    assert arena.reverts(9, "create", as_tuple(params())) == "insufficient allowance"


def test_join_reverts(arena: ArenaChain) -> None:
    cid = arena.create(CREATOR)
    pk = arena.vrf_pk(5)
    assert arena.reverts(1, "join", 99, TRAINER, 10 * E18, bytes(32)) == "no such competition"
    assert arena.reverts(CREATOR, "join", cid, TRAINER, 10 * E18, bytes(32)) == "the creator cannot join"
    assert arena.reverts(1, "join", cid, TRAINER, 10 * E18 - 1, bytes(32)) == "stake below the minimum"
    assert arena.reverts(5, "join", cid, VALIDATOR, 100 * E18 - 1, pk) == "stake below the minimum"
    assert arena.reverts(5, "join", cid, VALIDATOR, 100 * E18, bytes(32)) == "empty vrf key"
    assert arena.reverts(5, "join", cid, 3, 100 * E18, pk) == "unknown role"
    assert arena.reverts(5, "join", cid, 0, 100 * E18, pk) == "unknown role"
    arena.tx(5, "join", cid, VALIDATOR, 100 * E18, pk)
    assert arena.reverts(5, "join", cid, TRAINER, 10 * E18, bytes(32)) == "already joined"  # one role
    assert arena.view("get_member", cid, arena.addr(5)) == (VALIDATOR, 100 * E18, pk, False, bytes(32), False)
    assert list(arena.view("get_validators", cid)) == [arena.hx(5)]
    arena.advance_to(cid, PHASE_SUBMIT)
    assert arena.reverts(1, "join", cid, TRAINER, 10 * E18, bytes(32)) == "wrong phase"


def test_trainer_and_validator_seats_fill_up() -> None:
    arena = ArenaChain(n_accounts=59)
    cid = arena.create(CREATOR, join_blocks=20)
    for t in range(1, 1 + MAX_TRAINERS):
        arena.join(cid, t, TRAINER, 10 * E18)
    for v in range(25, 25 + MAX_VALIDATORS):
        arena.join(cid, v, VALIDATOR, 100 * E18)
    arena.mine()
    assert len(arena.view("get_trainers", cid)) == MAX_TRAINERS
    assert len(arena.view("get_validators", cid)) == MAX_VALIDATORS
    assert arena.reverts(57, "join", cid, TRAINER, 10 * E18, bytes(32)) == "trainer seats full"
    assert arena.reverts(58, "join", cid, VALIDATOR, 100 * E18, arena.vrf_pk(58)) == "validator seats full"


def test_full_validator_seats_go_to_more_stake() -> None:
    """Cheap sybils that join first do not keep the seats: more stake takes the seat of
    the smallest validator (the earliest of equals), whose stake is released at once."""
    arena = ArenaChain(n_accounts=35)
    cid = arena.create(CREATOR, join_blocks=20)
    for v in range(1, 1 + MAX_VALIDATORS):
        arena.join(cid, v, VALIDATOR, (100 if v != 1 else 150) * E18)
    arena.mine()
    weight = arena.view("get_competition", cid)[4]
    assert arena.reverts(33, "join", cid, VALIDATOR, 100 * E18, arena.vrf_pk(33)) == "validator seats full"
    result = arena.tx(33, "join", cid, VALIDATOR, 101 * E18, arena.vrf_pk(33))
    assert arena.events(result)[0] == ("Evicted", {"competition_id": cid, "validator": arena.hx(2), "stake": 100 * E18})
    seats = list(arena.view("get_validators", cid))
    assert len(seats) == MAX_VALIDATORS and arena.hx(33) in seats and arena.hx(2) not in seats
    assert arena.view("get_competition", cid)[4] == weight + E18
    assert arena.view("get_member", cid, arena.addr(2))[0] == 0  # no role: it may join again
    assert arena.view("claimable", arena.addr(2)) == 100 * E18
    arena.tx(2, "claim")
    arena.tx(2, "join", cid, VALIDATOR, 102 * E18, arena.vrf_pk(2))  # and takes the next smallest seat
    assert arena.hx(3) not in list(arena.view("get_validators", cid))


def test_commit_submission_reverts(arena: ArenaChain) -> None:
    cid = joined(arena)
    digest = submission_digest(cid, arena.addr(1), model("a"), salt(1))
    assert arena.reverts(1, "commit_submission", 99, digest) == "no such competition"
    assert arena.reverts(5, "commit_submission", cid, digest) == "not a trainer"
    assert arena.reverts(9, "commit_submission", cid, digest) == "not a trainer"
    assert arena.reverts(1, "commit_submission", cid, bytes(32)) == "empty digest"
    result = arena.tx(1, "commit_submission", cid, digest)
    assert arena.events(result) == [
        ("SubmissionCommitted", {"competition_id": cid, "trainer": arena.hx(1), "index": 0, "digest": digest})
    ]
    assert arena.reverts(1, "commit_submission", cid, digest) == "already committed"
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.tx(2, "commit_submission", cid, keccak(b"2"))  # the submit phase takes commits too
    arena.advance_to(cid, PHASE_REVEAL)
    assert arena.reverts(3, "commit_submission", cid, keccak(b"3")) == "wrong phase"


def test_elect_reverts(arena: ArenaChain) -> None:
    cid = joined(arena)
    assert arena.reverts(5, "elect", cid, bytes(80)) == "wrong phase"
    arena.advance_to(cid, PHASE_SUBMIT)
    assert arena.reverts(5, "elect", cid, bytes(80)) == "seed not yet readable"  # lands in block join_end
    proof = arena.proof(5, cid)
    assert arena.reverts(1, "elect", cid, proof) == "not a validator"
    assert arena.reverts(5, "elect", cid, proof[:79]) == "vrf proof length"
    assert arena.reverts(5, "elect", cid, arena.proof(6, cid)) == "vrf proof rejected"
    assert arena.reverts(5, "elect", cid, bytes(80)) == "vrf proof rejected"
    arena.tx(5, "elect", cid, proof)
    assert arena.reverts(5, "elect", cid, proof) == "already elected"
    assert arena.reverts(5, "elect", 99, proof) == "no such competition"


def test_reveal_submission_reverts(arena: ArenaChain) -> None:
    cid = joined(arena)
    arena.commit_submission(cid, 1, model("a"))
    arena.send(2, "commit_submission", cid, submission_digest(cid, arena.addr(2), bytes(32), salt(2)))
    arena.mine()
    assert arena.reverts(1, "reveal_submission", cid, model("a"), salt(1)) == "wrong phase"
    arena.advance_to(cid, PHASE_REVEAL)
    assert arena.reverts(3, "reveal_submission", cid, model("a"), salt(3)) == "no commitment"
    assert arena.reverts(1, "reveal_submission", cid, model("b"), salt(1)) == "reveal does not match commitment"
    assert arena.reverts(1, "reveal_submission", cid, model("a"), salt(2)) == "reveal does not match commitment"
    assert arena.reverts(2, "reveal_submission", cid, bytes(32), salt(2)) == "empty model hash"
    result = arena.tx(1, "reveal_submission", cid, model("a"), salt(1))
    assert arena.events(result) == [
        (
            "SubmissionRevealed",
            {"competition_id": cid, "trainer": arena.hx(1), "index": 0, "model_hash": model("a"), "salt": salt(1)},
        )
    ]
    assert arena.reverts(1, "reveal_submission", cid, model("a"), salt(1)) == "already revealed"


def test_commit_scores_reverts(arena: ArenaChain) -> None:
    cid = elected(arena, skip=(8,))
    digest = scores_digest(cid, arena.addr(5), [], salt(5, b"scores"))
    assert arena.reverts(5, "commit_scores", cid, digest) == "wrong phase"
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    assert arena.reverts(1, "commit_scores", cid, digest) == "not an elected validator"
    assert arena.reverts(8, "commit_scores", cid, digest) == "not an elected validator"  # joined, never elected
    assert arena.reverts(5, "commit_scores", cid, bytes(32)) == "empty digest"
    result = arena.tx(5, "commit_scores", cid, digest)
    assert arena.events(result) == [("ScoresCommitted", {"competition_id": cid, "validator": arena.hx(5), "digest": digest})]
    assert arena.reverts(5, "commit_scores", cid, digest) == "already committed"


def test_reveal_scores_reverts(arena: ArenaChain) -> None:
    cid = submitted(arena, {1: model("a"), 2: model("b")})
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    arena.commit_scores(cid, 5, [1, 2])
    arena.commit_scores(cid, 6, [1])  # one score short
    arena.commit_scores(cid, 7, [1, 2**128 + 1])
    arena.mine()
    assert arena.reverts(5, "reveal_scores", cid, [1, 2], salt(5, b"scores")) == "wrong phase"
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    assert arena.reverts(8, "reveal_scores", cid, [1, 2], salt(8, b"scores")) == "no commitment"
    assert arena.reverts(5, "reveal_scores", cid, [1, 3], salt(5, b"scores")) == "reveal does not match commitment"
    assert arena.reverts(6, "reveal_scores", cid, [1], salt(6, b"scores")) == "one score per submission"
    assert arena.reverts(7, "reveal_scores", cid, [1, 2**128 + 1], salt(7, b"scores")) == "score too large"
    result = arena.tx(5, "reveal_scores", cid, [1, 2], salt(5, b"scores"))
    assert arena.events(result)[0][0] == "ScoresRevealed"
    assert list(arena.view("get_scores", cid, arena.addr(5))) == [1, 2]
    assert arena.reverts(5, "reveal_scores", cid, [1, 2], salt(5, b"scores")) == "already revealed"


def test_publish_eval_reverts(arena: ArenaChain) -> None:
    cid = joined(arena)
    assert arena.reverts(CREATOR, "publish_eval", 99, EVAL_SET_HASH, EVAL_SALT) == "no such competition"
    arena.advance_to(cid, PHASE_SCORE_COMMIT)  # not before every score is committed
    assert arena.reverts(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT) == "wrong phase"
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    assert arena.reverts(1, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT) == "not the creator"
    assert arena.reverts(CREATOR, "publish_eval", cid, keccak(b"another set"), EVAL_SALT) == "does not match the commitment"
    assert arena.reverts(CREATOR, "publish_eval", cid, EVAL_SET_HASH, keccak(b"x")) == "does not match the commitment"
    assert arena.reverts(CREATOR, "publish_eval", cid, bytes(32), EVAL_SALT) == "empty eval set hash"
    result = arena.tx(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT)
    assert arena.events(result) == [
        ("EvalPublished", {"competition_id": cid, "eval_set_hash": EVAL_SET_HASH, "salt": EVAL_SALT})
    ]
    assert arena.reverts(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT) == "already published"
    arena.advance_to(cid, PHASE_CLOSED)
    assert arena.reverts(CREATOR, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT) == "wrong phase"


def test_finalise_and_claim_reverts(arena: ArenaChain) -> None:
    cid = joined(arena)
    assert arena.reverts(1, "claim") == "nothing to claim"
    assert arena.reverts(1, "finalise", 99) == "no such competition"
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    assert arena.reverts(1, "finalise", cid) == "wrong phase"
    arena.advance_to(cid, PHASE_CLOSED)
    arena.tx(1, "finalise", cid)
    assert arena.reverts(1, "finalise", cid) == "wrong phase"  # once
    # nobody was elected or submitted: every stake, the pool and the bond go back
    assert arena.view("claimable", arena.addr(1)) == 10 * E18
    assert arena.view("claimable", arena.addr(8)) == 1000 * E18
    assert arena.view("claimable", arena.addr(CREATOR)) == 1000 * E18  # the bond burns: unpublished
    before = arena.balance(8)
    result = arena.tx(8, "claim")
    assert arena.events(result) == [("Claimed", {"account": arena.hx(8), "amount": 1000 * E18})]
    assert arena.balance(8) - before == 1000 * E18
    assert arena.reverts(8, "claim") == "nothing to claim"


def test_phases_follow_the_block_windows(arena: ArenaChain) -> None:
    cid = arena.create(CREATOR)
    start = arena.view("get_competition", cid)[1]
    p = params()
    ends = arena.view("deadlines", cid)
    join_end = start + p["join_blocks"]
    assert ends[0] == join_end
    assert ends[4] == join_end + p["submit_blocks"] + p["reveal_blocks"] + p["score_commit_blocks"] + p["score_reveal_blocks"]
    assert arena.view("seed", cid) == bytes(32)  # blockhash(join_end) is not there yet
    for phase in (PHASE_SUBMIT, PHASE_REVEAL, PHASE_SCORE_COMMIT, PHASE_SCORE_REVEAL, PHASE_CLOSED):
        arena.advance_to(cid, phase)
    assert arena.view("seed", cid) == arena.seed(cid)  # readable, not yet fixed
    arena.chain.mine_empty(join_end + 257 - arena.chain.block_number)
    assert arena.view("seed", cid) == bytes(32)  # never fixed, and no longer readable


def test_a_validator_far_from_every_median_is_paid_nothing_and_not_slashed(arena: ArenaChain) -> None:
    cid = submitted(arena, {1: model("a")})
    scores_revealed(arena, cid, {5: [2**128], 6: [10], 7: [10], 8: [10]})
    arena.mine()
    arena.advance_to(cid, PHASE_CLOSED)
    settled = {e["validator"]: e for name, e in arena.events(arena.tx(1, "finalise", cid)) if name == "ValidatorSettled"}
    assert settled[arena.hx(5)] | {"competition_id": 0} == {
        "competition_id": 0, "validator": arena.hx(5), "revealed": True, "closeness": 0, "reward": 0, "slashed": 0
    }
    assert arena.view("claimable", arena.addr(5)) == STAKES[5]  # its whole stake back
