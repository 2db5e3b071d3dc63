"""Per-round figures from the registry's logs, as the chain saw each round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flockd.fl.recipe import Metrics
from flockd.sim.chain import REGISTRY, SimChain
from flockd.sim.config import RoundFigures
from flockd.tasks.bridge import as_address


@dataclass
class _Round:
    opened_block: int
    opened_at: float
    proposers: dict[int, int] = field(default_factory=dict)  # proposal index -> node index
    mask: int = 0
    finalised_block: int | None = None
    gas: int = 0


def pools(chain: SimChain, task_id: int, addresses: Iterable[bytes]) -> dict[bytes, tuple[int, bool]]:
    """Each address's stake in the task's pool and whether it is active, from the registry
    (`get_participant`) at the chain's head."""
    # Fields by name from the ABI, so a Participant struct that gains fields still reads.
    fields = [c["name"] for c in REGISTRY.function("get_participant")["outputs"][0]["components"]]
    at_stake, at_active = fields.index("stake"), fields.index("active")
    found = {}
    for a in addresses:
        pool = chain.view("get_participant", task_id, a)
        found[a] = (int(pool[at_stake]), bool(pool[at_active]))
    return found


def stake_share(chain: SimChain, task_id: int, addresses: Iterable[bytes], participants: Iterable[bytes]) -> float:
    """The share of the task's active stake that ``addresses`` hold, at the chain's head."""
    stake = {a: amount if active else 0 for a, (amount, active) in pools(chain, task_id, participants).items()}
    total = sum(stake.values())
    return sum(stake.get(a, 0) for a in addresses) / total if total else 0.0


class Ledger:
    """Follows one task's logs; a round's RoundFigures is ready when its model is recorded."""

    def __init__(
        self, index_of: Mapping[bytes, int], malicious: list[int], evaluate: Callable[[bytes], Metrics],
        done: Callable[[RoundFigures], None],
    ) -> None:
        self._index_of, self._malicious = index_of, set(malicious)
        self._evaluate, self._done = evaluate, done
        self._rounds: dict[int, _Round] = {}

    def gas(self, r: int, used: int) -> None:
        if r in self._rounds:
            self._rounds[r].gas += used

    def log(self, name: str, args: dict[str, Any], number: int) -> None:
        r = args.get("round", 0)
        if name == "RoundOpened":
            self._rounds[r] = _Round(number, time.perf_counter())
        elif name == "Proposed":
            self._rounds[r].proposers[args["index"]] = self._index_of[as_address(args["proposer"])]
        elif name == "RoundFinalised":
            self._rounds[r].mask, self._rounds[r].finalised_block = args["accepted_mask"], number
        elif name == "ModelRecorded":
            self._done(self._figures(r, args["model_hash"]))

    def _figures(self, r: int, digest: bytes) -> RoundFigures:
        info = self._rounds[r]
        metrics = self._evaluate(digest)
        proposers = [info.proposers[i] for i in sorted(info.proposers)]
        accepted = [info.proposers[i] for i in sorted(info.proposers) if info.mask >> i & 1]
        return RoundFigures(
            round=r, accuracy=metrics["accuracy"], loss=metrics["loss"],
            seconds=round(time.perf_counter() - info.opened_at, 3), proposers=proposers, accepted=accepted,
            malicious_proposers=len(self._malicious.intersection(proposers)),
            malicious_accepted=len(self._malicious.intersection(accepted)),
            blocks=(info.finalised_block or info.opened_block) - info.opened_block, gas_used=info.gas,
            model_hash="0x" + digest.hex(),
        )
