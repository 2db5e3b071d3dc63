"""The round machines as the round_status RPC shows them: JSON-ready, hashes and addresses
as 0x hex. The machines (flockd/round/) keep bytes and enums; formatting lives here."""

from __future__ import annotations

from typing import Any

from flockd.round import RoundMachine, TaskMachine


def round_view(machine: RoundMachine) -> dict[str, Any]:
    """One round as this node sees it: phase, role, step, windows, proposals, votes."""
    deadlines, votes, accepted = machine.deadlines, machine.my_votes, machine.accepted
    abstained = machine.abstain_reason
    return {
        "round": machine.round,
        "phase": machine.phase.value,
        "role": machine.role.value,
        "step": machine.step.value,
        "head": machine.head,
        "open_block": machine.open_block,
        "deadlines": list(deadlines) if deadlines else None,
        "proposals": [
            {
                "index": p.index,
                "proposer": _hex(p.proposer),
                "delta_hash": _hex(p.delta_hash),
                "received": machine.has_delta(p.delta_hash),
            }
            for p in machine.proposals
        ],
        "votes_committed": sorted(_hex(v) for v in machine.votes_committed),
        "votes_revealed": {_hex(v): list(ballot) for v, ballot in sorted(machine.votes_revealed.items())},
        "my_votes": list(votes) if votes is not None else None,
        "abstained": abstained.value if abstained is not None else None,
        "accepted": list(accepted) if accepted is not None else None,
        "model_hash": _hex_or_none(machine.model_hash),
        "recorded_model_hash": _hex_or_none(machine.recorded_model_hash),
    }


def task_view(machine: TaskMachine) -> dict[str, Any]:
    """A task's rounds as this node follows them."""
    return {
        "task_id": machine.config.task_id,
        "current_round": machine.current_round,
        "rounds": machine.config.rounds,
        "finished": machine.finished,
        "model_hash": _hex_or_none(machine.model_hash),
        "live_rounds": [round_view(live) for live in machine.live_rounds],
    }


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _hex_or_none(value: bytes | None) -> str | None:
    return None if value is None else _hex(value)


def current_round_view(machine: TaskMachine) -> dict[str, Any]:
    """The task's current round (round_status); a stub until a round opens."""
    current = machine.current_round
    live = machine.machine(current) if current is not None else None
    if live is None:
        return {"round": current, "phase": "waiting_for_open", "role": None, "proposals": []}
    return round_view(live)
