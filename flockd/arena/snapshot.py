"""One competition as the chain shows it now, read through the Arena client and checked:
whatever a chain node returns is hostile until it fits the contract's own bounds."""

from __future__ import annotations

from dataclasses import dataclass

from flockd.chain.client.arena import (
    MAX_ELECTED,
    MAX_SCORE,
    MAX_TRAINERS,
    Arena,
    ArenaMember,
    Competition,
    CompetitionParams,
    PhaseEnds,
    Submission,
)
from flockd.chain.client.arena_pools import ArenaPools
from flockd.chain.client.backends import ChainError

PHASE_NAMES = ("none", "join", "submit", "reveal", "score-commit", "score-reveal", "closed", "finalised")


class BadChainData(ChainError):
    """A chain node returned values the Arena contract cannot hold."""


@dataclass(frozen=True)
class CompetitionSnapshot:
    competition_id: int
    params: CompetitionParams
    competition: Competition
    phase: int
    ends: PhaseEnds
    submissions: list[Submission]
    elected: list[bytes]
    members: dict[bytes, ArenaMember]  # the elected validators'
    scores: dict[bytes, list[int]]  # of the elected validators that revealed
    backing: dict[bytes, int]  # the pool stake locked to each elected validator's seat

    def weight(self, validator: bytes) -> int:
        """What the contract weighs a validator by: own stake plus backing, capped."""
        return min(self.members[validator].stake + self.backing[validator], self.params.validator_cap)

    @property
    def phase_name(self) -> str:
        return PHASE_NAMES[self.phase]

    def counted(self) -> list[int]:
        """Indices of the submissions that count: revealed, not a copy."""
        return [i for i, s in enumerate(self.submissions) if s.revealed and not s.duplicate]


async def read_competition(arena: Arena, competition_id: int) -> CompetitionSnapshot | None:
    """The competition, or None when there is no such competition."""
    comp = await arena.get_competition(competition_id)
    if comp.creator == bytes(20):
        return None
    params = await arena.get_params(competition_id)
    phase = await arena.phase(competition_id)
    subs = await arena.get_submissions(competition_id)
    elected = await arena.get_elected(competition_id)
    if not 0 < phase < len(PHASE_NAMES):
        raise BadChainData(f"competition {competition_id}: phase {phase}")
    if len(subs) > MAX_TRAINERS or len(elected) > MAX_ELECTED or len(set(elected)) != len(elected):
        raise BadChainData(f"competition {competition_id}: {len(subs)} submissions, {len(elected)} elected")
    members = {v: await arena.get_member(competition_id, v) for v in elected}
    scores = {}
    for v, m in members.items():
        if m.revealed:
            vector = await arena.get_scores(competition_id, v)
            if len(vector) != len(subs) or any(not 0 <= s <= MAX_SCORE for s in vector):
                raise BadChainData(f"competition {competition_id}: a score vector that does not fit")
            scores[v] = vector
    pools = ArenaPools(arena.client, arena.address)
    backing = {v: await pools.backing(competition_id, v) for v in elected}
    if any(b < 0 for b in backing.values()):
        raise BadChainData(f"competition {competition_id}: a negative backing")
    return CompetitionSnapshot(
        competition_id, params, comp, phase, await arena.deadlines(competition_id), subs, elected, members, scores, backing
    )
