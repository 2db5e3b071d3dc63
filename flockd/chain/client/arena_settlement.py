"""The Arena's settlement rules off chain, to the last token unit: what `finalise` computes
from the revealed score vectors, so a node can recompute every median, rank and payout
(the core of a later `arena_verify`). tests/test_arena_settlement.py holds the contract to
it on random competitions. Spec: protocol/spec/contracts.md, "Arena".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flockd.chain.client.arena import CompetitionParams

BPS = 10_000
ONE = 2**64  # fixed point of the rank weights


def weighted_median(values: Sequence[int], weights: Sequence[int]) -> int:
    """The least value whose cumulative weight (values ascending) reaches half the total."""
    total = sum(weights)
    cumulative = 0
    for value, weight in sorted(zip(values, weights, strict=True), key=lambda vw: vw[0]):
        cumulative += weight
        if 2 * cumulative >= total:
            return value
    return 0


def closeness(score: int, median: int, tolerance_bps: int) -> int:
    """BPS on the median, half of it at `tolerance_bps` relative error, towards 0 beyond."""
    error_bps = abs(score - median) * BPS // max(median, 1)
    return BPS * tolerance_bps // (tolerance_bps + error_bps)


def rank_rewards(n: int, pool: int, decay_bps: int) -> list[int]:
    """Rewards by rank: rank k's weight is decay^k of rank 0's, floored as on chain."""
    weights = []
    w = ONE
    for _ in range(n):
        weights.append(w)
        w = w * decay_bps // BPS
    return [pool * w // sum(weights) for w in weights]


@dataclass(frozen=True)
class Settlement:
    medians: dict[int, int]  # submission index -> median
    order: list[int]  # the ranked submissions (median > 0), best first
    trainer_rewards: list[int]  # by rank
    validator_rewards: dict[int, int]  # by the revealers' keys
    closeness: dict[int, int]


def settle(
    scores: Mapping[int, Sequence[int]],
    weights: Mapping[int, int],
    counted: Sequence[int],
    params: CompetitionParams,
    slashed: int,
) -> Settlement:
    """`scores` and capped-stake `weights` of the validators that revealed (any keys, e.g.
    their position among the elected); `counted` the submissions that count (revealed,
    not duplicates); `slashed` what the validators that did not reveal lost. At least one
    validator revealed (else nothing is ranked and every pool goes back).

    Only a median above 0 is ranked and paid: validators score 0 what nobody serves (or
    what is worthless), and a withheld model must earn nothing. Closeness still runs over
    every counted submission: a validator that scored a withheld model 0 was right."""
    medians = {i: weighted_median([s[i] for s in scores.values()], [weights[v] for v in scores]) for i in counted}
    order = sorted((i for i in counted if medians[i] > 0), key=lambda i: (-medians[i], i))
    trainer_pool = params.reward_pool * params.trainer_share_bps // BPS
    validator_pool = params.reward_pool - trainer_pool + slashed
    close = {
        v: sum(closeness(s[i], medians[i], params.tolerance_bps) for i in counted) if counted else BPS
        for v, s in scores.items()
    }
    shares = {v: weights[v] * close[v] for v in scores}
    total = sum(shares.values())
    return Settlement(
        medians,
        order,
        rank_rewards(len(order), trainer_pool, params.rank_decay_bps),
        {v: validator_pool * shares[v] // total if total else 0 for v in scores},
        close,
    )
