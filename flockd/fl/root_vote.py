"""The ``root-direction`` vote: each proposal against a reference update that every
honest voter computes alike.

Why. Under a per-proposal majority of the revealed stake, a cartel of stake share c
votes as one; an honest proposal passes only if more than (1/2 - 0)/(1 - c) of the honest
stake accepts it, and a poisoned one is stopped only if fewer than (1/2 - c)/(1 - c)
does: at c = 40%, honest voters must accept honest work more than 5/6 of the time and
poison less than 1/6. A vote judged on each voter's own skewed split splits the honest
voters on both (docs/learning.md, "The partition bench"). Here every honest voter judges
by the same public evidence, so the honest stake votes as one too.

How (after FLTrust, Cao et al., NDSS 2021). The task's root set (``root_rows`` in the task
spec: public rows every node derives alike, flockd.fl.data.root_sample) is trained on
from the round's global model exactly as a proposer trains, with a seed fixed by the task
and round; that update is the reference. A proposal is accepted when its update points
the same way (cosine above MIN_COSINE: a label-flipped or sign-flipped update points away
from learning the task) and is not far larger (L2 norm at most MAX_NORM_RATIO x the
reference's: a boosted or noisy update). Numpy only; deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from flockd.fl.codec import Delta
from flockd.fl.tensors import flat

# Measured on digits-mlp, 20 nodes, Dirichlet 0.1 and 0.5 (docs/learning.md, "The
# root-direction vote"): honest updates had cosines of 0.003 to 0.6 with a 100-row root
# update and norms of 0.1 to 1.6 times its norm (1.85 at most in later runs),
# label-flipped ones mostly below 0; an honest update boosted 4x (model replacement)
# lands beyond the norm bound. Late in a task a label flip's cosine is near 0 like
# converged honest work, but its norm is mostly 2 to 9 times the reference's (one was
# 1.68; honest work the voters' own splits accepted: 1.1 at most): at a bound of 3, three
# flips of 2.5-2.8 times passed in one round and cost 22 points. A trade, not a
# separation (docs/learning.md, "Sixteen expected proposers").
MIN_COSINE = 0.0
MAX_NORM_RATIO = 2.0


def direction_votes(
    reference: Mapping[str, np.ndarray],
    deltas: Sequence[Delta | None],
    *,
    min_cosine: float = MIN_COSINE,
    max_norm_ratio: float = MAX_NORM_RATIO,
) -> tuple[int, ...] | None:
    """+1 / -1 per delta (None, a missing or unusable one: -1); None when the reference
    cannot judge (no change, or not finite). Deltas must be in the reference's layout (the
    expanded updates)."""
    ref = flat(reference)
    ref_norm = float(np.linalg.norm(ref))
    if not (math.isfinite(ref_norm) and ref_norm > 0):
        return None
    votes: list[int] = []
    for delta in deltas:
        if delta is None or set(delta.tensors) != set(reference):
            votes.append(-1)
            continue
        vector = flat(delta.tensors)
        norm = float(np.linalg.norm(vector))
        if vector.shape != ref.shape or not (math.isfinite(norm) and norm > 0):
            votes.append(-1)
            continue
        cosine = float(vector @ ref) / (norm * ref_norm)
        votes.append(1 if cosine > min_cosine and norm <= max_norm_ratio * ref_norm else -1)
    return tuple(votes)
