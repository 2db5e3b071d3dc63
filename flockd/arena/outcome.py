"""What `finalise` recorded for a competition: its Ranked and ValidatorSettled events,
read from the chain's logs and keyed the way the settlement rules key them."""

from __future__ import annotations

from dataclasses import dataclass

from flockd.arena.snapshot import BadChainData, CompetitionSnapshot
from flockd.chain.client.arena import Arena


@dataclass(frozen=True)
class Ranked:
    index: int
    rank: int
    median: int
    reward: int


@dataclass(frozen=True)
class Settled:
    revealed: bool
    closeness: int
    reward: int
    slashed: int


@dataclass(frozen=True)
class Outcome:
    ranked: list[Ranked]  # best first
    settled: dict[bytes, Settled]  # by elected validator


async def read_outcome(arena: Arena, snap: CompetitionSnapshot) -> Outcome:
    """The finalise events of `snap`'s competition (empty before it is finalised)."""
    head = await arena.client.block_number()
    events = await arena.events(snap.competition.start_block, head, ("Ranked", "ValidatorSettled"))
    mine = [e for e in events if e.args["competition_id"] == snap.competition_id]
    ranked = sorted(
        (Ranked(e.args["index"], e.args["rank"], e.args["median"], e.args["reward"]) for e in mine if e.name == "Ranked"),
        key=lambda r: r.rank,
    )
    settled = {
        bytes.fromhex(e.args["validator"][2:]): Settled(e.args["revealed"], e.args["closeness"], e.args["reward"], e.args["slashed"])
        for e in mine
        if e.name == "ValidatorSettled"
    }
    if any(not 0 <= r.index < len(snap.submissions) for r in ranked) or len(settled) > len(snap.elected):
        raise BadChainData(f"competition {snap.competition_id}: finalise events that do not fit it")
    return Outcome(ranked, settled)
