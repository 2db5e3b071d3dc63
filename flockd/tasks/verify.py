"""model_verify: rebuild a task's model lineage from the chain and the deltas, hash by hash.

model_-1 is the recipe's initial model (its hash is on chain; the worker's, so for a task
seeded by an Arena competition the winner's, flockd.arena.handoff); model_r is model_{r-1} plus
the aggregate of round r's accepted deltas in canonical order, and must hash to the model
hash the chain recorded for round r. Every delta must hash to its on-chain commitment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from flockd.chain.client.registry import Registry
from flockd.fl.checkpoint import model_hash
from flockd.store import Store, StoreError
from flockd.tasks.abc import TaskWork
from flockd.tasks.start import initial_state


async def verify_lineage(
    registry: Registry,
    store: Store,
    worker: TaskWork,
    task_id: int,
    fetch_delta: Callable[[bytes], Awaitable[bytes | None]],
    start: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`fetch_delta(hash)` asks peers for a delta this node does not hold (a node that took
    a round's model from a peer never saw its deltas); it must return hash-checked bytes.
    `start`: the spec's (flockd.tasks.start), when the task starts from another's model."""
    import trio

    params = await registry.get_params(task_id)
    state = await registry.get_state(task_id)
    problems: list[str] = []
    try:  # start hook: a task started from another's model (flockd.tasks.start)
        model = await trio.to_thread.run_sync(initial_state, worker, store, start or {})
    except StoreError as exc:  # nothing to replay from
        model, problems = {}, [str(exc)]
    current = initial = model_hash(model)
    if model and current != params.model_init_hash:
        problems.append(f"initial model {current.hex()} != on-chain {params.model_init_hash.hex()}")
    checked = []
    for r in range(state.current_round + (1 if state.status == 3 else 0) if model else 0):
        info = await registry.get_round(task_id, r)
        if not info.finalised or not any(info.model_hash):
            break  # the newest round is still being voted on or attested: nothing to check yet
        proposals = await registry.get_proposals(task_id, r)
        accepted = [p for i, p in enumerate(proposals) if info.accepted_mask >> i & 1]
        deltas = []
        for p in accepted:
            data = store.get_delta(p.delta_hash) or await fetch_delta(p.delta_hash)
            if data is None:
                problems.append(f"round {r}: no peer has delta {p.delta_hash.hex()} of {p.proposer.hex()}")
                break
            deltas.append(data)
        else:
            model = await trio.to_thread.run_sync(worker.aggregate, model, deltas)
            current = model_hash(model)
            if current != info.model_hash:
                problems.append(f"round {r}: replayed model {current.hex()} != recorded {info.model_hash.hex()}")
            checked.append({"round": r, "accepted": len(accepted), "model_hash": "0x" + current.hex()})
            continue
        break
    return {
        "task_id": task_id,
        "start": dict(start) if start else None,  # start hook: what the lineage continues from
        "ok": not problems and bool(checked),
        "complete": len(checked) == params.rounds,
        "rounds_checked": len(checked),
        "initial_model_hash": "0x" + initial.hex(),
        "final_model_hash": "0x" + current.hex(),
        "rounds": checked,
        "problems": problems,
    }
