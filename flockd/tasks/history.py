"""A task's round history: one line per finalised round in the node's store, written once.

The chain's logs say who proposed and what was accepted (`RoundRecords`, kept while the
round runs: the round machine forgets a round once the next one is under way); the line
is written when the round completes (`round_line`), with the test metrics of its model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flockd import round as rnd
from flockd.fl.recipe import Metrics
from flockd.tasks.abc import TaskLog
from flockd.tasks.bridge import as_address
from flockd.tasks.context import hex0x


@dataclass
class RoundRecord:
    """What the chain said of one round, kept for its history line."""

    round: int
    started_block: int | None = None
    finished_block: int | None = None
    finished_hash: bytes | None = None  # a line whose finishing block a reorg replaced is written again
    started_at: float = field(default_factory=time.time)
    proposers: dict[int, bytes] = field(default_factory=dict)  # by proposal index
    accepted_mask: int = 0
    gas_used: int = 0  # by this node's own transactions of the round


class RoundRecords:
    """The records of the rounds not yet written, from the logs fed to the machine."""

    def __init__(self) -> None:
        self._rounds: dict[int, RoundRecord] = {}

    def clear(self) -> None:
        """Before a rebuild: the logs are read again."""
        self._rounds = {}

    def note(self, entry: TaskLog, canonical: dict[int, bytes]) -> None:
        """Take in one log; ``canonical`` holds the checked hash of its block."""
        args = entry.args
        r = args.get("round", 0)
        record = self._rounds.setdefault(r, RoundRecord(r))
        if entry.name == "RoundOpened":
            record.started_block = args["open_block"]
        elif entry.name == "Proposed":
            record.proposers[args["index"]] = as_address(args["proposer"])
        elif entry.name == "RoundFinalised":
            record.accepted_mask, record.finished_block = args["accepted_mask"], entry.block_number
            record.finished_hash = canonical[entry.block_number]

    def add_gas(self, r: int, gas_used: int) -> None:
        # Only to a record still kept: a receipt that comes after the round's line was
        # written must not bring its record back (it would never be dropped again).
        record = self._rounds.get(r)
        if record is not None:
            record.gas_used += gas_used

    def pop(self, r: int) -> RoundRecord:
        return self._rounds.pop(r, RoundRecord(r))


def round_line(complete: rnd.RoundComplete, record: RoundRecord, metrics: Metrics) -> dict[str, Any]:
    """The history line of a completed round."""
    proposers = [record.proposers[i] for i in sorted(record.proposers)]
    accepted = [p for i, p in sorted(record.proposers.items()) if record.accepted_mask >> i & 1]
    return {
        "round": complete.round,
        "model_hash": hex0x(complete.model_hash),
        "proposals": len(proposers),
        "accepted": len(accepted),
        "rejected": len(proposers) - len(accepted),
        "proposers": [hex0x(p) for p in proposers],
        "accepted_proposers": [hex0x(p) for p in accepted],
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "started_block": record.started_block,
        "finished_block": record.finished_block,
        "finished_block_hash": None if record.finished_hash is None else hex0x(record.finished_hash),
        "seconds": round(time.time() - record.started_at, 2),
        "gas_used": record.gas_used,
    }


def round_history(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A task's history log as one line per round, in round order: a round written again
    after a reorg changed its outcome (another model) is told by its newest line."""
    by_round: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            by_round[int(line["round"])] = line
        except (KeyError, TypeError, ValueError):
            continue  # not a round line
    return [by_round[r] for r in sorted(by_round)]


def is_written(lines: list[dict[str, Any]], complete: rnd.RoundComplete) -> bool:
    """The round's newest history line is for this model (a round a reorg gave another
    outcome is written again: its newest line tells it)."""
    line = {int(x["round"]): x for x in round_history(lines)}.get(complete.round)
    return line is not None and line.get("model_hash") == hex0x(complete.model_hash)
