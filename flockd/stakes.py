"""Where a task's settlement left the honest nodes' stakes, in one line: the simulation's
CLI and the testnet's report say it the same way."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StakeSpread:
    """The honest nodes' stake changes, start to end, as fractions of their start."""

    count: int
    below_start: int
    lowest: float
    median: float  # the upper one of an even count
    highest: float

    @classmethod
    def of(cls, changes: Sequence[float]) -> StakeSpread | None:
        ordered = sorted(changes)
        if not ordered:
            return None
        return cls(len(ordered), sum(c < 0 for c in ordered), ordered[0], ordered[len(ordered) // 2], ordered[-1])

    def line(self) -> str:
        return (f"honest nodes' stake, start to end: lowest {100 * self.lowest:+.2f}%, median "
                f"{100 * self.median:+.2f}%, highest {100 * self.highest:+.2f}%; "
                f"{self.below_start} of {self.count} ended below their start")
