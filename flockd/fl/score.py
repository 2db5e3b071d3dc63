"""How a voter scores a proposal: the global model with and without the delta, on the
voter's own validation split.

The score is the change in validation accuracy and loss; the model is evaluated once
without the delta (the baseline) and once per proposal. ``accepts`` is the default vote:
a proposal passes unless it makes the voter's validation accuracy or loss clearly worse.
A small validation split is noisy (one sample of 36 is ~3% accuracy), so the default
tolerates a little honest noise while sign-flipped, scaled, noisy or label-flipped updates
fall far outside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flockd.fl.aggregate import Rule, aggregate, apply
from flockd.fl.codec import Delta
from flockd.fl.data import Split
from flockd.fl.recipe import Metrics, Recipe
from flockd.fl.tensors import load_model_state, squared_norm
from flockd.fl.vote_scoring import ROOT_SCORINGS, VoteScoring, parse_vote_scoring

# Defaults of `accepts`: how much worse than the baseline an honest update may look.
# Measured (docs/learning.md): on IID digits an honest proposer's model scores at worst
# -0.08 accuracy / +0.20 loss on another node's validation split; a 2x sign flip or
# N(0, 0.2) noise scores -0.25 / +0.9 and -0.14 / +0.4 at the median.
MAX_ACCURACY_DROP = 0.10
MAX_LOSS_RISE = 0.25
# On a small validation split those bounds are finer than the split can resolve: with 14
# rows (20 nodes on digits) two rows are 0.14 accuracy, and one row turning confidently
# wrong raises the mean loss by ~0.2. Measured in flockd.sim (20 nodes, 45% collude, 12
# rounds, docs/benchmarks.md), honest voters rejected 16% of honest proposals on such
# noise, and once every participant votes a 55% honest majority needs all of them. So a
# voter tolerates at least what NOISE_ROWS rows of its own split are worth: NOISE_ROWS / n
# accuracy (two rows pass, three do not) and NOISE_ROWS x LOSS_PER_ROW / n loss (a row
# moved from right to confidently wrong: ln 10 = 2.3 nats is chance on ten classes).
# From ~25 rows on the fixed bounds above are the larger ones and hold unchanged.
NOISE_ROWS = 2.5
LOSS_PER_ROW = 2.5

# How a per-proposal vote judges (the names, numpy-free): flockd/fl/vote_scoring.py.


# ``guarded-contribution``, measured on digits-mlp, 20 nodes, 8 proposals a round
# (docs/learning.md, "Voter scoring"). A delta's leave-one-out change is about 1/n of its
# own departure from the others' mean, so a sign flip among several honest deltas moves
# it little; the guards catch what dilution hides, far from where honest work lands:
# - norm: an honest delta's L2 norm was at most 2.8x the round's median on Dirichlet 0.5
#   (once 5.9x); sign-flip:4 is ~4x, noise:0.2 ~10x, noise:1 ~50x. An outlier keeps the
#   default (own-model) verdict, which rejects those attacks;
# - own model: honest work on a foreign Dirichlet-0.5 split raised the loss by +2.3 at
#   the 95th percentile (+6.4 worst), a label flipper by +2.7 at the median and noise:1 by
#   +47. Only a rise beyond GUARD_LOSS_FACTOR x the voter's own loss bound is a reject
#   (2.5 nats from 25 rows up): 1-1.4% of the honest votes measured went beyond it.
# The contribution of each delta that passes both is then judged with its loss change
# scaled by CONTRIBUTION_WEIGHT x n (half its departure, n the deltas that passed), and
# counts only when their aggregate does not hurt the voter's split; whatever the default
# vote accepts stays accepted.
GUARD_NORM_FACTOR = 3.0
GUARD_LOSS_FACTOR = 10.0
CONTRIBUTION_WEIGHT = 0.5


@dataclass(frozen=True)
class Score:
    baseline: Metrics  # the current global model on the voter's validation split
    candidate: Metrics  # global + delta on the same split

    @property
    def accuracy_gain(self) -> float:
        return self.candidate["accuracy"] - self.baseline["accuracy"]

    @property
    def loss_gain(self) -> float:
        """Positive when the delta lowers the loss."""
        return self.baseline["loss"] - self.candidate["loss"]


class Scorer:
    """Scores any number of deltas against one global model and one validation split."""

    def __init__(
        self, recipe: Recipe, global_state: Mapping[str, np.ndarray], validation: Split
    ) -> None:
        self._recipe = recipe
        self._global = dict(global_state)
        self._validation = validation
        self._model = recipe.build_model(0)
        load_model_state(self._model, self._global)
        self.baseline = recipe.evaluate(self._model, validation)

    def evaluate(self, delta: Mapping[str, np.ndarray]) -> Metrics:
        """Metrics of global + ``delta`` on the validation split."""
        load_model_state(self._model, apply(self._global, delta))
        return self._recipe.evaluate(self._model, self._validation)

    def score(self, delta: Mapping[str, np.ndarray]) -> Score:
        return Score(self.baseline, self.evaluate(delta))

    @property
    def max_loss_rise(self) -> float | None:
        """The recipe's own bound on a loss rise (``max_loss_rise``: a language model's, in
        bits per character), in place of the row-scaled default; None: the default."""
        return getattr(self._recipe, "max_loss_rise", None)

    @property
    def rows(self) -> int:
        """Rows of the validation split (what the voting bounds scale with)."""
        return len(self._validation)


def widened(
    max_accuracy_drop: float, max_loss_rise: float, rows: int | None
) -> tuple[float, float]:
    """The accuracy and loss bounds on a split of ``rows`` rows: each at least what
    NOISE_ROWS of its rows are worth (see above); unchanged when ``rows`` is None."""
    if rows is not None and rows > 0:
        max_accuracy_drop = max(max_accuracy_drop, NOISE_ROWS / rows)
        max_loss_rise = max(max_loss_rise, NOISE_ROWS * LOSS_PER_ROW / rows)
    return max_accuracy_drop, max_loss_rise


def accepts(
    score: Score,
    *,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    max_loss_rise: float = MAX_LOSS_RISE,
    rows: int | None = None,
    loss_weight: float = 1.0,
) -> bool:
    """Accept unless validation accuracy drops by more than ``max_accuracy_drop`` or the
    loss rises by more than ``max_loss_rise`` (both absolute). ``rows``: the size of the
    validation split scored on; each bound is then at least what NOISE_ROWS of its rows
    are worth (see above). ``loss_weight`` multiplies the loss change first."""
    max_accuracy_drop, max_loss_rise = widened(max_accuracy_drop, max_loss_rise, rows)
    return (
        score.accuracy_gain >= -max_accuracy_drop
        and -score.loss_gain * loss_weight <= max_loss_rise
    )


def leave_one_out(
    scorer: Scorer, deltas: Sequence[Delta], rule: Rule | str = "fedavg"
) -> dict[bytes, Score]:
    """Each delta's contribution to the round's aggregate, by delta hash: the global model
    plus the aggregate of all deltas (candidate) against plus the aggregate of the others
    (baseline; the bare global model when there are no others). Under non-IID data a
    single honest node's model can look poor on a foreign validation split while its
    contribution to the aggregate is still positive."""
    everything = scorer.evaluate(aggregate(deltas, rule))
    scores: dict[bytes, Score] = {}
    for delta in deltas:
        others = [d for d in deltas if d.hash != delta.hash]
        without = scorer.evaluate(aggregate(others, rule)) if others else scorer.baseline
        scores[delta.hash] = Score(without, everything)
    return scores


def guarded_votes(
    scorer: Scorer,
    deltas: Sequence[Delta],
    rule: Rule | str,
    max_accuracy_drop: float,
    max_loss_rise: float,
    rows: int | None,
) -> dict[bytes, bool]:
    """``guarded-contribution``, by delta hash. A delta the default vote accepts (its own
    model, global + delta) is accepted. A delta whose L2 norm is more than
    GUARD_NORM_FACTOR x the median norm of ``deltas`` (a boosted or noise delta), or whose
    own model raises the voter's loss by more than GUARD_LOSS_FACTOR x the loss bound (a
    departure no honest non-IID work made), keeps the default's verdict. Each other delta
    is also accepted on its leave-one-out contribution among those others (under the usual
    bounds, its loss change scaled by CONTRIBUTION_WEIGHT x their number) when their
    aggregate does not hurt the voter's split."""
    norms = {d.hash: math.sqrt(squared_norm(d.tensors)) for d in deltas}
    median_norm = float(np.median(list(norms.values()))) if norms else 0.0
    _, loss_bound = widened(max_accuracy_drop, max_loss_rise, rows)

    def fits(score: Score, loss_weight: float = 1.0) -> bool:
        return accepts(
            score,
            max_accuracy_drop=max_accuracy_drop,
            max_loss_rise=max_loss_rise,
            rows=rows,
            loss_weight=loss_weight,
        )

    verdicts: dict[bytes, bool] = {}  # first what the default vote says
    guarded: list[Delta] = []
    for d in deltas:
        own = scorer.score(d.tensors)
        verdicts[d.hash] = fits(own)
        # Proposers choose the norms, so the median is theirs to pull down: an outlier
        # keeps the default's verdict, never a plain reject.
        if (
            norms[d.hash] <= GUARD_NORM_FACTOR * median_norm
            and -own.loss_gain <= GUARD_LOSS_FACTOR * loss_bound
        ):
            guarded.append(d)
    if not guarded:
        return verdicts
    contributions = leave_one_out(scorer, guarded, rule)
    # The round's guarded aggregate must not hurt the voter's split either: when
    # attackers are most of a round's proposals they are each other's reference, and
    # each one's contribution looks small.
    round_ok = fits(Score(scorer.baseline, contributions[guarded[0].hash].candidate))
    weight = max(1.0, CONTRIBUTION_WEIGHT * len(guarded))
    for d in guarded:
        verdicts[d.hash] = verdicts[d.hash] or (round_ok and fits(contributions[d.hash], weight))
    return verdicts


def vote_on_proposals(
    scorer: Scorer,
    deltas: Sequence[Delta | None],
    *,
    scoring: VoteScoring = "local-model",
    rule: Rule | str = "fedavg",
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
) -> tuple[int, ...]:
    """+1 / -1 per delta (None, a missing or unusable delta: -1), by ``accepts`` on the
    score ``scoring`` names. ``contribution`` scores each delta within the aggregate of all
    the usable ones, so a node with other labels than the voter's is judged by what it adds
    to the round, not by how its own model does on a split it never saw;
    ``guarded-contribution`` does so after two coarse guards (``guarded_votes``). The root
    votes need the task's root set: the Worker casts them (ValueError here)."""
    if parse_vote_scoring(scoring) in ROOT_SCORINGS:
        raise ValueError(f"{scoring} is voted by the Worker, against the task's root set")
    present = [d for d in deltas if d is not None]
    rows, own_rise = scorer.rows, scorer.max_loss_rise
    # A recipe's own loss bound replaces the row-scaled default.
    max_loss_rise, scaled_rows = (MAX_LOSS_RISE, rows) if own_rise is None else (own_rise, None)
    if scoring == "guarded-contribution":
        verdicts = guarded_votes(
            scorer, present, rule, max_accuracy_drop, max_loss_rise, scaled_rows
        )
    else:
        if scoring == "local-model":
            scores = {d.hash: scorer.score(d.tensors) for d in present}
        else:
            scores = leave_one_out(scorer, present, rule) if present else {}
        verdicts = {
            h: accepts(
                score,
                max_accuracy_drop=max_accuracy_drop,
                max_loss_rise=max_loss_rise,
                rows=scaled_rows,
            )
            for h, score in scores.items()
        }
    return tuple(1 if d is not None and verdicts[d.hash] else -1 for d in deltas)
