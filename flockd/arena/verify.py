"""arena_verify: recompute a finished competition from what anyone can get, and hold the
chain to it. Every counted submission is fetched (hash-checked) and scored on the
published evaluation set; the stake-weighted medians, the ranks and every payout are
recomputed from the revealed score vectors (flockd.chain.client.arena_settlement) and
compared with what finalise recorded. A median that differs from the recomputed score
means the validators holding the majority of the stake scored wrongly (or the recipe is
not deterministic across their machines): the check fails and says which submission."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eth_utils import to_checksum_address

from flockd.arena.outcome import read_outcome
from flockd.arena.roles import score_submissions
from flockd.arena.snapshot import CompetitionSnapshot
from flockd.arena.spec import ArenaSpec, ArenaSpecError
from flockd.chain.client.arena import ARENA_PHASE_FINALISED
from flockd.chain.client.arena_settlement import BPS, settle

if TYPE_CHECKING:
    from flockd.arena.service import ArenaService


def expected_settlement(snap: CompetitionSnapshot) -> tuple[dict[int, int], list[int], list[int], dict[bytes, int]]:
    """(medians, order, trainer rewards by rank, validator rewards) as finalise must
    compute them from the chain's revealed score vectors."""
    p = snap.params
    revealers = {k: snap.scores[v] for k, v in enumerate(snap.elected) if v in snap.scores}  # settle's keys: positions
    weights = {k: snap.weight(snap.elected[k]) for k in revealers}
    # a validator that did not reveal loses slash_bps of its own stake and of its backing
    slashed = sum(
        m.stake * p.slash_bps // BPS + snap.backing[v] * p.slash_bps // BPS
        for v, m in snap.members.items() if not m.revealed
    )
    if not revealers:
        return {}, [], [], {v: 0 for v in snap.elected}
    s = settle(revealers, weights, snap.counted(), p, slashed)
    return s.medians, s.order, s.trainer_rewards, {v: s.validator_rewards.get(k, 0) for k, v in enumerate(snap.elected)}

async def verify_competition(svc: ArenaService, snap: CompetitionSnapshot, spec: ArenaSpec) -> dict[str, Any]:
    problems: list[str] = []
    if snap.phase != ARENA_PHASE_FINALISED:
        problems.append(f"the competition is in its {snap.phase_name} phase, not finalised")
        return {"competition_id": snap.competition_id, "ok": False, "problems": problems}
    if spec.spec_hash != snap.params.recipe_hash:
        problems.append("the spec does not hash to the competition's recipe hash")
    if snap.competition.eval_set_hash == bytes(32):
        problems.append("the creator never published the evaluation set: no score can be recomputed")
    if problems:
        return {"competition_id": snap.competition_id, "ok": False, "problems": problems}

    try:
        recomputed = await score_submissions(svc, spec, snap)
    except ArenaSpecError as exc:  # no peer has the published set, or it does not fit
        return {"competition_id": snap.competition_id, "ok": False, "problems": [f"cannot recompute the scores: {exc}"]}
    outcome = await read_outcome(svc.arena, snap)
    medians, order, trainer_rewards, validator_rewards = expected_settlement(snap)

    for i in snap.counted():
        if recomputed[i] is None:  # the validators score 0 what nobody gives: only a 0 is consistent
            if not medians or medians[i] != 0:
                problems.append(f"submission {i}: no peer gave its model {snap.submissions[i].model_hash.hex()}")
        elif medians and medians[i] != recomputed[i]:
            problems.append(f"submission {i}: the median {medians[i]} is not its recomputed score {recomputed[i]}")
        if medians and snap.submissions[i].median != medians[i]:
            problems.append(f"submission {i}: the chain's median {snap.submissions[i].median}, recomputed {medians[i]}")
    expected_ranked = [(i, k + 1, medians[i], trainer_rewards[k]) for k, i in enumerate(order)]
    if [(r.index, r.rank, r.median, r.reward) for r in outcome.ranked] != expected_ranked:
        problems.append("the ranks or trainer rewards on chain differ from the recomputed ones")
    for v in snap.elected:
        got = outcome.settled.get(v)
        if got is None or got.reward != validator_rewards[v]:
            problems.append(f"validator {to_checksum_address(v)}: reward {got.reward if got else None}, recomputed {validator_rewards[v]}")

    return {
        "competition_id": snap.competition_id,
        "ok": not problems,
        "problems": problems,
        "submissions": [
            {"index": i, "trainer": to_checksum_address(s.trainer), "model_hash": "0x" + s.model_hash.hex(),
             "counted": i in snap.counted(), "recomputed_score": recomputed[i], "median": s.median, "rank": s.rank}
            for i, s in enumerate(snap.submissions)
        ],
        "validators": [
            {"address": to_checksum_address(v), "revealed": v in snap.scores,
             "largest_deviation": max((abs(snap.scores[v][i] - r) for i in snap.counted() if (r := recomputed[i]) is not None), default=0)
             if v in snap.scores else None,
             "reward": validator_rewards[v]}
            for v in snap.elected
        ],
    }
