"""No empty rounds: every decline carries a verified VRF proof, the registry keeps the
highest draw, and when the propose window ends with no proposal that decliner alone may
propose in a fallback window (FallbackOpened) before the round is voted and finalised."""

from __future__ import annotations

import pytest
from eth_utils import keccak
from test_contracts import PHASE_CLOSED, PHASE_COMMIT, PHASE_PROPOSE, Registry


@pytest.fixture
def reg() -> Registry:
    return Registry()


def _best(reg: Registry, task: int, r: int, who: list[int]) -> int:
    return max(who, key=lambda w: reg.draw(w, task, r))


def test_everyone_declines_the_best_draw_proposes_in_a_fallback_window(reg: Registry) -> None:
    task = reg.started([1, 2, 3], propose_blocks=20, commit_blocks=10, reveal_blocks=10)
    reg.decline(task, 0, 1)
    reg.decline(task, 0, 2)
    result = reg.decline(task, 0, 3)  # the last one: nobody proposed
    block = reg.chain.block_number
    best = _best(reg, task, 0, [1, 2, 3])
    events = reg.events(result)
    fallback = {"task_id": task, "round": 0, "proposer": reg.hx(best), "last_block": block + 20}
    assert ("FallbackOpened", fallback) in events
    assert [n for n, _ in events if n == "PhaseClosed"] == []
    assert reg.view("deadlines", task, 0) == (block + 20, block + 30, block + 40)
    assert reg.view("phase", task) == PHASE_PROPOSE
    others = [w for w in (1, 2, 3) if w != best]
    assert reg.reverts(others[0], "propose", task, 0, keccak(b"d"), reg.proof(others[0], task, 0)) == (
        "not the fallback proposer"
    )
    assert reg.reverts(others[1], "decline", task, 0, reg.proof(others[1], task, 0)) == "already declined"
    # the fallback proposer proposes although it declined (and was perhaps not elected)
    result = reg.propose(task, 0, best)
    assert [ev["phase"] for n, ev in reg.events(result) if n == "PhaseClosed"] == [PHASE_PROPOSE]
    assert reg.view("phase", task) == PHASE_COMMIT
    reg.vote_round(task, 0, {w: [1] for w in others})
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 1


def test_a_timed_out_empty_window_falls_back_at_finalise(reg: Registry) -> None:
    task = reg.started([1, 2, 3], propose_blocks=6)
    reg.decline(task, 0, 2)
    reg.decline(task, 0, 3)  # 1 stays silent: the window runs out with no proposal
    best = _best(reg, task, 0, [2, 3])
    reg.advance_to(task, 0, PHASE_CLOSED)
    result = reg.tx(0, "finalise", task, 0)
    block = reg.chain.block_number
    assert reg.events(result) == [
        ("FallbackOpened", {"task_id": task, "round": 0, "proposer": reg.hx(best), "last_block": block + 6})
    ]
    assert reg.view("get_state", task)[2] == 0  # still round 0
    reg.propose(task, 0, best)
    voters = [w for w in (1, 2, 3) if w != best]
    reg.vote_round(task, 0, {w: [-1] for w in voters})
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["n_proposals"] == 1 and "RoundOpened" in dict(events)


def test_a_silent_fallback_proposer_ends_the_round_once(reg: Registry) -> None:
    task = reg.started([1, 2], propose_blocks=4)
    reg.decline(task, 0, 1)
    reg.decline(task, 0, 2)
    reg.advance_to(task, 0, PHASE_CLOSED)
    names = [n for n, _ in reg.events(reg.tx(0, "finalise", task, 0))]
    assert names[0] == "RoundFinalised" and names[-1] == "RoundOpened"


def test_a_decline_needs_a_valid_proof_on_the_round_seed(reg: Registry) -> None:
    task = reg.started([1, 2, 3])
    assert reg.reverts(1, "decline", task, 0, reg.proof(2, task, 0)) == "vrf proof rejected"
    assert reg.reverts(1, "decline", task, 0, b"\x01" * 80) == "vrf proof rejected"
    assert reg.reverts(1, "decline", task, 0, b"\x01" * 79) == "vrf proof length"
    reg.decline(task, 0, 1)
    assert reg.view("has_declined", task, 0, reg.addr(1))
