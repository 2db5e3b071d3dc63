"""How an honest voter scores a proposal in a per-proposal round: the names only, without
numpy, so a config can be checked and a daemon start without loading the learning stack.

``local-model``: the proposer's own model (global + delta) on the voter's validation
split. ``contribution`` (a prototype): the round's aggregate with and without the delta.
``guarded-contribution``: the contribution of each delta that passes two coarse guards
(`flockd.fl.score.guarded_votes`). ``root-direction``: each delta's direction and size
against an update trained on the task's public root set (`flockd.fl.root_vote`);
``root-or-local-model``: accepted by either ``root-direction`` or ``local-model``. A task
with no root set is voted on as ``local-model`` by both. Each voter's own choice, not a consensus rule
(protocol/spec/round.md, "Scoring a proposal")."""

from __future__ import annotations

from typing import Literal

VoteScoring = Literal["local-model", "contribution", "guarded-contribution", "root-direction", "root-or-local-model"]
VOTE_SCORINGS: tuple[VoteScoring, ...] = (
    "local-model", "contribution", "guarded-contribution", "root-direction", "root-or-local-model",
)
# The scorings that judge against the task's root set (a task without one: local-model).
ROOT_SCORINGS: tuple[VoteScoring, ...] = ("root-direction", "root-or-local-model")
# Every honest voter judges alike on the task's root set, and its own split rescues the
# converged honest work whose direction is noise (docs/learning.md, "Root direction or the
# voter's own split"); on a task without a root set it is local-model.
DEFAULT_VOTE_SCORING: VoteScoring = "root-or-local-model"


# The root set a task gets when none is asked for (task_create, the testnet, the simulation
# and the bench under a root vote): about ten rows a class on digits (FLTrust's root sets
# were of 100 rows). A recipe without bundled data has none whatever the spec says.
DEFAULT_ROOT_ROWS = 100


def root_rows_for(scoring: str, rows: int | None, default: int = DEFAULT_ROOT_ROWS) -> int:
    """The root set's rows: ``rows`` when given, else ``default`` (the recipe's
    ``root_rows_default``) for the votes against a root set and none for the others."""
    if rows is not None:
        return rows
    return default if scoring in ROOT_SCORINGS else 0


def parse_vote_scoring(text: str) -> VoteScoring:
    """``text`` as a VoteScoring; ValueError naming the known ones otherwise."""
    for known in VOTE_SCORINGS:
        if text == known:
            return known
    raise ValueError(f"vote scoring must be one of {', '.join(VOTE_SCORINGS)}, not {text!r}")
