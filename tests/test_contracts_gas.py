"""Gas used by every contract function, and the worst call (finalise settling a batch of
SETTLE_BATCH = 256 voters on 16 proposals) fitting comfortably in a block.

    .venv/bin/python tests/test_contracts_gas.py      # prints the markdown table
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth_utils import keccak
from test_contracts import (
    E18,
    PHASE_COMMIT,
    PHASE_REVEAL,
    REGISTRY,
    TOKEN,
    Registry,
    as_tuple,
    params,
    salt,
)

from flockd import sortition
from flockd.chain.client.contract import TxPolicy
from flockd.chain.node.deploy import SCRATCH_GAS_LIMIT, TxResult
from flockd.chain.node.embedded import MAX_TX_GAS

Row = tuple[str, int, str]


def _ok(results: list[TxResult]) -> list[TxResult]:
    assert all(r.ok for r in results), [r.computation.error for r in results if not r.ok]
    return results


def small_task_rows() -> list[Row]:
    reg = Registry()
    rows: list[Row] = []
    chain = reg.chain
    holders = [a.address for a in reg.accounts[:3]]
    res = chain.transact(reg.accounts[0].key, b"", TOKEN.deploy_data("S", "S", holders, [1, 1, 1]))
    rows.append(("StakeToken constructor (3 holders)", res.gas_used, "deploy"))
    res = chain.transact(reg.accounts[0].key, b"", REGISTRY.deploy_data(reg.token, bytes(20)))
    rows.append(("TaskRegistry constructor", res.gas_used, f"deploy, runtime {len(REGISTRY.bytecode_runtime)} B"))
    data = TOKEN.encode_call("transfer", reg.addr(1), E18)
    rows.append(("token.transfer", chain.transact(reg.accounts[0].key, reg.token, data).gas_used, ""))
    data = TOKEN.encode_call("approve", reg.addr(1), E18)
    rows.append(("token.approve", chain.transact(reg.accounts[0].key, reg.token, data).gas_used, ""))

    rows.append(("create_task", reg.tx(0, "create_task", as_tuple(params())).gas_used, "pulls the reward pool"))
    task = 1
    rows.append(("join", reg.join(task, 1).gas_used, "first participant"))
    rows.append(("join", reg.join(task, 2).gas_used, "later participant"))
    for who in (3, 4, 5):
        reg.join(task, who)
    rows.append(("delegate", reg.tx(6, "delegate", task, reg.addr(1), E18).gas_used, ""))
    rows.append(("withdraw", reg.tx(6, "withdraw", task, reg.addr(1)).gas_used, "delegator, before start"))
    rows.append(("start_task", reg.tx(0, "start_task", task).gas_used, "opens round 0"))
    rows.append(("propose", reg.propose(task, 0, 1).gas_used, "first of the round: fixes the seed; VRF precompile"))
    rows.append(("propose", reg.propose(task, 0, 2).gas_used, "later"))
    rows.append(("decline", reg.decline(task, 0, 3).gas_used, ""))
    reg.decline(task, 0, 4)
    rows.append(("decline", reg.decline(task, 0, 5).gas_used, "the last one: closes the propose window"))
    ballots = {1: [1, -1], 2: [-1, 1], 3: [1, -1], 4: [1, -1], 5: [1, 1]}  # proposers vote too
    reg.advance_to(task, 0, PHASE_COMMIT)
    for who, votes in ballots.items():
        reg.send(who, "commit_vote", task, 0, reg.digest(who, votes, salt(who, 0)), reg.judged(task, 0))
    commits = _ok(reg.chain.mine())
    rows.append(("commit_vote", commits[0].gas_used, ""))
    rows.append(("commit_vote", commits[-1].gas_used, "the last one: closes the commit window"))
    reg.advance_to(task, 0, PHASE_REVEAL)
    for who, votes in ballots.items():
        reg.send(who, "reveal_vote", task, 0, votes, salt(who, 0))
    reveals = _ok(reg.chain.mine())
    rows.append(("reveal_vote", reveals[0].gas_used, "per-proposal mode, 2 proposals, first revealer"))
    rows.append(("reveal_vote", reveals[-1].gas_used, "the last one: closes the reveal window"))
    reg.advance_to(task, 0, 5)
    res = reg.tx(0, "finalise", task, 0)
    rows.append(("finalise", res.gas_used, "5 participants, 2 proposals (1 accepted), opens next round"))
    rows.append(("record_model", reg.tx(3, "record_model", task, 0, keccak(b"m")).gas_used, "attestation, no majority yet"))
    rows.append(("record_model", reg.tx(1, "record_model", task, 0, keccak(b"m")).gas_used, "attestation reaching the majority"))

    other = reg.create()
    rows.append(("cancel_task", reg.tx(0, "cancel_task", other).gas_used, "refunds the pool"))

    whole = reg.started([1, 2, 3], vote_mode=1)
    reg.propose(whole, 0, 1)
    reg.advance_to(whole, 0, PHASE_COMMIT)
    reg.tx(2, "commit_vote", whole, 0, reg.digest(2, [-1], salt(2, 0)), reg.judged(whole, 0))
    reg.advance_to(whole, 0, PHASE_REVEAL)
    res = reg.tx(2, "reveal_vote", whole, 0, [-1], salt(2, 0))
    rows.append(("reveal_vote", res.gas_used, "whole-round mode, one -1"))
    return rows


SETTLE_BATCH = 256  # voters settled by one finalise call (contracts/TaskRegistry.vy)
N_WORST = SETTLE_BATCH + 44  # a task that takes two finalise calls
UNREVEALED = range(N_WORST - 10, N_WORST)  # commit, never reveal: slashed in the last call


def _worst_case_registry() -> tuple[Registry, int, list[int]]:
    """N_WORST participants and a VRF key set under which at least 16 of them are elected."""
    n = N_WORST
    for attempt in range(20):
        reg = Registry(n_accounts=n, vrf_salt=b"%d" % attempt)
        task = reg.started(list(range(n)), expected_proposers=16, stake_unit=100 * E18)
        seed, total = reg.seed(task, 0), reg.view("get_state", task)[3]
        elected = [
            who for who in range(n)
            if sortition.elect(
                reg.accounts[who].vrf_sk, seed, sortition.Stakes(100 * E18, total, 100 * E18, 16)
            ).elected
        ]
        if len(elected) >= 16:
            return reg, task, elected[:16]
    raise AssertionError("no key set elected 16 proposers")


def _in_blocks(reg: Registry, task: int, calls: list[tuple[Any, ...]], per_block: int = 64) -> list[TxResult]:
    """Send round-0 calls (fn, who, *args) of `task` a block at a time; every 8M-gas
    transaction must fit what is left of a 30M-gas block."""
    results: list[TxResult] = []
    for start in range(0, len(calls), per_block):
        for fn, who, *args in calls[start:start + per_block]:
            reg.send(who, fn, task, 0, *args)
        results += _ok(reg.chain.mine())
    return results


def _expected_voter_rewards(reg: Registry, task: int, ballots: dict[int, list[int]], mask: int) -> dict[bytes, int]:
    """Each revealed voter's share in one pass over all of them: budget x stake x votes
    matching the verdict / the sum of that product (every stake is 100 tokens in round 0)."""
    p = params(expected_proposers=16, stake_unit=100 * E18)
    budget = reg.view("get_state", task)[4] // p["rounds"]
    voter_budget = budget - budget * p["proposer_share_bps"] // 10_000
    agreed = {
        who: sum((v == 1) == bool(mask >> i & 1) for i, v in enumerate(votes))
        for who, votes in ballots.items() if who not in UNREVEALED
    }
    total = sum(agreed.values())
    return {reg.addr(who): voter_budget * a // total for who, a in agreed.items() if voter_budget * a // total}


def worst_case_rows() -> list[Row]:
    """Every participant votes (the proposers too) on 16 proposals: even ones accepted, odd
    rejected, every 4th voter the other way (unpaid). Settling takes two finalise calls; the
    first, SETTLE_BATCH voters each paid or slashed, is the heaviest call of the protocol."""
    reg, task, proposers = _worst_case_registry()
    for who in proposers:
        reg.send(who, "propose", task, 0, keccak(b"%d" % who), reg.proof(who, task, 0))
    _ok(reg.chain.mine())
    ballots = {
        who: [(1 if i % 2 == 0 else -1) * (-1 if who % 4 == 0 else 1) for i in range(16)]
        for who in range(N_WORST)
    }
    reg.advance_to(task, 0, PHASE_COMMIT)
    judged = reg.judged(task, 0)
    _in_blocks(reg, task, [
        ("commit_vote", who, reg.digest(who, votes, salt(who, 0)), judged) for who, votes in ballots.items()
    ])
    reveal = _in_blocks(reg, task, [
        ("reveal_vote", who, votes, salt(who, 0)) for who, votes in ballots.items() if who not in UNREVEALED
    ])
    reg.advance_to(task, 0, 5)
    mask = int("01" * 8, 2)
    expected = _expected_voter_rewards(reg, task, ballots, mask)
    first = reg.tx(0, "finalise", task, 0)
    first_events = reg.events(first)
    assert ("VotersSettled", {"task_id": task, "round": 0, "settled": SETTLE_BATCH, "n_participants": N_WORST}) in first_events
    assert "RoundFinalised" not in dict(first_events)
    assert reg.reverts(1, "record_model", task, 0, keccak(b"m")) == "round not finalised"
    last = reg.tx(1, "finalise", task, 0)  # anyone may go on
    last_events = reg.events(last)
    assert dict(last_events)["RoundFinalised"]["accepted_mask"] == mask
    assert dict(last_events)["RoundOpened"]["round"] == 1
    events = first_events + last_events
    paid = {ev["participant"]: ev["amount"] for name, ev in events if name == "Rewarded" and ev["kind"] == 2}
    assert {bytes.fromhex(a[2:]) if isinstance(a, str) else a: v for a, v in paid.items()} == expected
    slashed = {ev["participant"] for name, ev in events if name == "Slashed" and ev["reason"] == 3}
    assert len(slashed) == len(UNREVEALED)
    assert reg.reverts(0, "finalise", task, 0) == "wrong round"
    return [
        ("reveal_vote", reveal[-1].gas_used, "per-proposal mode, 16 proposals, last revealer"),
        ("finalise", first.gas_used,
         f"worst call: the first of two for {N_WORST} participants, {SETTLE_BATCH} voters settled, 16 proposals"),
        ("finalise", last.gas_used,
         f"the last call: {N_WORST - SETTLE_BATCH} voters ({len(UNREVEALED)} slashed), 16 proposers, opens the next round"),
    ]


def gas_table() -> list[Row]:
    return small_task_rows() + worst_case_rows()


def test_gas_table_and_worst_case_fits_a_block() -> None:
    rows = gas_table()
    assert all(gas > 21_000 for _, gas, _ in rows)
    worst = max(gas for name, gas, _ in rows if name == "finalise")
    assert worst < SCRATCH_GAS_LIMIT // 4
    # The embedded chain's per-tx cap admits it with the contract client's margin.
    assert worst * (100 + TxPolicy().gas_margin_percent) // 100 <= MAX_TX_GAS


def main(table: Callable[[], list[Row]] = gas_table) -> None:
    print("| function | gas | case |")
    print("| --- | ---: | --- |")
    for name, gas, note in table():
        print(f"| `{name}` | {gas:,} | {note} |")


if __name__ == "__main__":
    main()
