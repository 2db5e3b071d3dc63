"""The registry closes a phase early once every expected message is in: the propose window
when every participant proposed or declined (or the cap is reached), the commit window when
every participant (proposers included) committed, the reveal window when every committed vote is revealed.
Each early close logs PhaseClosed and moves the later windows up by the same amount."""

from __future__ import annotations

import pytest
from test_contracts import (
    PHASE_CLOSED,
    PHASE_COMMIT,
    PHASE_PROPOSE,
    PHASE_REVEAL,
    Registry,
    salt,
)


@pytest.fixture
def reg() -> Registry:
    return Registry()


def test_decline_rules(reg: Registry) -> None:
    task = reg.started([1, 2, 3])
    assert reg.reverts(5, "decline", task, 0, reg.proof(5, task, 0)) == "not a participant"
    assert reg.reverts(1, "decline", task, 1, reg.proof(1, task, 1)) == "wrong round"
    reg.propose(task, 0, 1)
    assert reg.reverts(1, "decline", task, 0, reg.proof(1, task, 0)) == "already proposed"
    (name, ev), = reg.events(reg.decline(task, 0, 2))
    assert (name, ev["participant"]) == ("Declined", "0x" + reg.addr(2).hex())
    assert reg.view("has_declined", task, 0, reg.addr(2))
    assert reg.reverts(2, "decline", task, 0, reg.proof(2, task, 0)) == "already declined"
    assert reg.reverts(2, "propose", task, 0, b"\x01" * 32, reg.proof(2, task, 0)) == "declined this round"
    reg.advance_to(task, 0, PHASE_COMMIT)
    assert reg.reverts(3, "decline", task, 0, reg.proof(3, task, 0)) == "wrong phase"


def test_propose_closes_when_everyone_proposed_or_declined(reg: Registry) -> None:
    task = reg.started([1, 2, 3], propose_blocks=50, commit_blocks=10, reveal_blocks=10)
    reg.propose(task, 0, 1)
    reg.decline(task, 0, 2)
    assert reg.view("phase", task) == PHASE_PROPOSE  # participant 3 has not said yet
    result = reg.decline(task, 0, 3)
    closed = [ev for name, ev in reg.events(result) if name == "PhaseClosed"]
    block = reg.chain.block_number
    assert closed == [{"task_id": task, "round": 0, "phase": PHASE_PROPOSE, "last_block": block}]
    assert reg.view("deadlines", task, 0) == (block, block + 10, block + 20)
    assert reg.view("phase", task) == PHASE_COMMIT
    # a late proposal meets a closed window
    assert reg.reverts(3, "propose", task, 0, b"\x02" * 32, reg.proof(3, task, 0)) == "wrong phase"


def test_commit_and_reveal_close_when_every_vote_is_in(reg: Registry) -> None:
    task = reg.started([1, 2, 3], propose_blocks=50, commit_blocks=50, reveal_blocks=50)
    reg.propose(task, 0, 1)
    reg.decline(task, 0, 2)
    reg.decline(task, 0, 3)
    ballots = {1: [1], 2: [1], 3: [1]}
    reg.tx(2, "commit_vote", task, 0, reg.digest(2, ballots[2], salt(2, 0)), reg.judged(task, 0))
    reg.tx(3, "commit_vote", task, 0, reg.digest(3, ballots[3], salt(3, 0)), reg.judged(task, 0))
    assert reg.view("phase", task) == PHASE_COMMIT  # the proposer has not committed yet
    result = reg.tx(1, "commit_vote", task, 0, reg.digest(1, ballots[1], salt(1, 0)), reg.judged(task, 0))
    commit_closed = reg.chain.block_number
    assert [ev["phase"] for name, ev in reg.events(result) if name == "PhaseClosed"] == [PHASE_COMMIT]
    assert reg.view("deadlines", task, 0)[1:] == (commit_closed, commit_closed + 50)
    assert reg.view("phase", task) == PHASE_REVEAL
    reg.tx(2, "reveal_vote", task, 0, ballots[2], salt(2, 0))
    reg.tx(1, "reveal_vote", task, 0, ballots[1], salt(1, 0))
    assert reg.view("phase", task) == PHASE_REVEAL
    result = reg.tx(3, "reveal_vote", task, 0, ballots[3], salt(3, 0))
    assert [ev["phase"] for name, ev in reg.events(result) if name == "PhaseClosed"] == [PHASE_REVEAL]
    assert reg.view("phase", task) == PHASE_CLOSED
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 1
    # the whole round took a block per transaction (10), not 150
    assert reg.chain.block_number - reg.view("get_round", task, 0)[0] <= 10


def test_a_silent_voter_holds_the_commit_window_open(reg: Registry) -> None:
    task = reg.started([1, 2, 3], propose_blocks=50, commit_blocks=8, reveal_blocks=8)
    reg.propose(task, 0, 1)
    reg.decline(task, 0, 2)
    reg.decline(task, 0, 3)
    propose_end = reg.chain.block_number
    reg.tx(2, "commit_vote", task, 0, reg.digest(2, [1], salt(2, 0)), reg.judged(task, 0))
    # voter 3 never commits: the window runs its full length, then the one voter reveals
    assert reg.view("deadlines", task, 0)[1] == propose_end + 8
    reg.advance_to(task, 0, PHASE_REVEAL)
    result = reg.tx(2, "reveal_vote", task, 0, [1], salt(2, 0))
    assert [ev["phase"] for name, ev in reg.events(result) if name == "PhaseClosed"] == [PHASE_REVEAL]


def test_the_proposal_cap_closes_the_propose_window(reg: Registry) -> None:
    task = reg.started([1, 2, 3, 4], max_proposals=2, propose_blocks=50)
    reg.propose(task, 0, 1)
    result = reg.propose(task, 0, 2)
    assert [ev["phase"] for name, ev in reg.events(result) if name == "PhaseClosed"] == [PHASE_PROPOSE]
    assert reg.view("phase", task) == PHASE_COMMIT
