"""Gas used by every Arena function, and the worst case (24 submissions scored by 16
elected validators) fitting the embedded chain's per-transaction cap.

    .venv/bin/python tests/test_arena_gas.py      # prints the markdown table
"""

from __future__ import annotations

from arena_chain import (
    ARENA_ARTIFACT,
    E18,
    EVAL_SALT,
    EVAL_SET_HASH,
    PHASE_CLOSED,
    PHASE_REVEAL,
    PHASE_SCORE_COMMIT,
    PHASE_SCORE_REVEAL,
    PHASE_SUBMIT,
    TRAINER,
    VALIDATOR,
    ArenaChain,
    as_tuple,
    model,
    params,
)
from test_contracts_gas import main as print_table

from flockd.chain.client.arena import MAX_ELECTED, MAX_TRAINERS, MAX_VALIDATORS
from flockd.chain.client.arena_pools import UNBONDING_BLOCKS
from flockd.chain.client.contract import TxPolicy
from flockd.chain.node.embedded import MAX_TX_GAS

Row = tuple[str, int, str]


def run_competition(n_trainers: int, n_validators: int, constructor: bool = False, backed: bool = False) -> list[Row]:
    """A whole competition, every member acting: the first and the last call of each
    function (they differ where the first one initialises storage). `backed`: one
    delegator backs every member's pool first (each with a commission), and collects,
    undelegates and releases after."""
    arena = ArenaChain(n_accounts=1 + n_trainers + n_validators + int(backed))
    out: list[Row] = []
    trainers = list(range(1, 1 + n_trainers))
    validators = list(range(1 + n_trainers, 1 + n_trainers + n_validators))
    delegator = 1 + n_trainers + n_validators
    backing_note = "; backed by a pool" if backed else ""

    def record(name: str, results: list, note: str) -> None:
        first = "; ".join(part for part in ("first", note) if part)
        out.append((name, results[0].gas_used, first if len(results) > 1 else note))
        if len(results) > 1:
            out.append((name, results[-1].gas_used, f"last of {len(results)}"))

    if constructor:
        res = arena.chain.transact(arena.accounts[0], b"", ARENA_ARTIFACT.deploy_data(arena.token, bytes(20)))
        out.append(("Arena constructor", res.gas_used, f"deploy, runtime {len(ARENA_ARTIFACT.bytecode_runtime)} B"))
    if backed:
        for member in trainers + validators:
            arena.send(member, "set_commission", 1000)
        record("set_commission", arena.mine(), "")
        for member in trainers + validators:
            arena.send(delegator, "delegate", arena.addr(member), 50 * E18)
        record("delegate", arena.mine(), "a new pool")
        out.append(("delegate", arena.tx(delegator, "delegate", arena.addr(trainers[0]), E18).gas_used, "more shares"))
    res = arena.tx(0, "create", as_tuple(params(join_blocks=20, expected_validators=n_validators)))
    out.append(("create", res.gas_used, "pulls the pool and the bond"))
    cid = arena.view("competition_count")
    for t in trainers:
        arena.join(cid, t, TRAINER, 10 * E18)
    record("join", arena.mine(), "trainer" + backing_note)
    for v in validators:
        arena.join(cid, v, VALIDATOR, 100 * E18)
    record("join", arena.mine(), "validator" + backing_note)
    for t in trainers:
        arena.commit_submission(cid, t, model(str(t)))
    record("commit_submission", arena.mine(), "")
    arena.advance_to(cid, PHASE_SUBMIT)
    arena.chain.mine_empty(1)
    for v in validators:
        arena.send(v, "elect", cid, arena.proof(v, cid))
    record("elect", arena.mine(), "the first fixes the seed; VRF precompile")
    arena.advance_to(cid, PHASE_REVEAL)
    for t in trainers:
        arena.reveal_submission(cid, t, model(str(t)))
    record("reveal_submission", arena.mine(), "")
    # the most sorting work: each submission's scores arrive in descending order, and each
    # median beats every earlier one
    vectors = {v: [1000 + 100 * i - k for i in range(n_trainers)] for k, v in enumerate(validators)}
    arena.advance_to(cid, PHASE_SCORE_COMMIT)
    for v in validators:
        arena.commit_scores(cid, v, vectors[v])
    record("commit_scores", arena.mine(), "")
    arena.advance_to(cid, PHASE_SCORE_REVEAL)
    for v in validators:
        arena.reveal_scores(cid, v, vectors[v])
    record("reveal_scores", arena.mine(), f"{n_trainers} scores")
    out.append(("publish_eval", arena.tx(0, "publish_eval", cid, EVAL_SET_HASH, EVAL_SALT).gas_used, ""))
    arena.advance_to(cid, PHASE_CLOSED)
    res = arena.tx(0, "finalise", cid)
    out.append(("finalise", res.gas_used, f"{n_trainers} submissions, {n_validators} validators{backing_note}"))
    out.append(("claim", arena.tx(1, "claim").gas_used, ""))
    if backed:
        out.append(("collect", arena.tx(delegator, "collect", arena.addr(trainers[0])).gas_used, ""))
        shares = arena.view("shares_of", arena.addr(trainers[0]), arena.addr(delegator))
        out.append(("undelegate", arena.tx(delegator, "undelegate", arena.addr(trainers[0]), shares).gas_used, "all shares"))
        arena.chain.mine_empty(UNBONDING_BLOCKS)
        out.append(("release_unbonded", arena.tx(delegator, "release_unbonded").gas_used, ""))
    return out


def eviction_row() -> Row:
    arena = ArenaChain(n_accounts=1 + MAX_VALIDATORS + 1)
    cid = arena.create(0)
    for v in range(1, 1 + MAX_VALIDATORS):
        arena.join(cid, v, VALIDATOR, 100 * E18)
    arena.mine()
    newcomer = 1 + MAX_VALIDATORS
    res = arena.tx(newcomer, "join", cid, VALIDATOR, 101 * E18, arena.vrf_pk(newcomer))
    return ("join", res.gas_used, f"validator, {MAX_VALIDATORS} seats full: takes the smallest one's seat")


def gas_table() -> list[Row]:
    small = run_competition(4, 3, constructor=True) + [eviction_row()]
    pooled = [row for row in run_competition(4, 3, backed=True) if row[0] not in UNCHANGED_BY_POOLS]
    worst = [row for row in run_competition(MAX_TRAINERS, MAX_ELECTED) if row[0] in ("reveal_scores", "finalise")]
    worst += [row for row in run_competition(MAX_TRAINERS, MAX_ELECTED, backed=True) if row[0] == "finalise"]
    return small + pooled + [(name, gas, f"worst case: {note}") for name, gas, note in worst if "first" not in note]


# what a pool does not touch: measured once, without pools
UNCHANGED_BY_POOLS = frozenset({
    "create", "commit_submission", "elect", "reveal_submission", "commit_scores", "reveal_scores", "publish_eval", "claim",
})


def test_gas_table_and_worst_case_fits_a_transaction() -> None:
    rows = gas_table()
    assert all(gas > 21_000 for _, gas, _ in rows)
    worst = max(gas for name, gas, _ in rows if name == "finalise")
    # The embedded chain's per-tx cap admits it with the contract client's margin.
    assert worst * (100 + TxPolicy().gas_margin_percent) // 100 <= MAX_TX_GAS
    assert len(ARENA_ARTIFACT.bytecode_runtime) <= 24_576  # EIP-170


if __name__ == "__main__":
    print_table(gas_table)
