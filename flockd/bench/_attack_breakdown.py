"""Where a flockd round's time goes (`scripts/bench attack --breakdown`): one per-proposal
`flockd.sim` run with its main parts (py-evm sealing, contract reads, signing, VRF proofs,
round state machines, training, scoring, ...) wrapped in exclusive wall-time clocks."""

from __future__ import annotations

import functools
import importlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# (module, class or None, attribute) -> what it is. Each is timed exclusively: while one
# runs inside another (a block sealed by create_task), only the inner one's clock runs.
_BREAKDOWN: tuple[tuple[str, str | None, str, str], ...] = (
    ("flockd.sim.chain", "SimChain", "seal", "py-evm: execute and seal each block's transactions"),
    ("flockd.sim.chain", "SimChain", "view", "py-evm: contract reads (stakes for sortition)"),
    ("flockd.sim.chain", "SimChain", "send", "sign transactions (secp256k1)"),
    ("flockd.sim.actions", None, "elect", "ECVRF proofs (sortition)"),
    ("flockd.round", "TaskMachine", "handle", "round state machines (every node)"),
    ("flockd.sim.learn", "Learner", "train", "training (proposers)"),
    ("flockd.sim.learn", "Learner", "score", "scoring every proposal (voters)"),
    ("flockd.sim.learn", "Learner", "aggregate", "aggregation"),
    ("flockd.sim.learn", "Learner", "evaluate", "test-split evaluation (measurement only)"),
    ("flockd.sim.chain", "SimChain", "__init__", "set-up: genesis, contract deployment"),
    ("flockd.sim.chain", "SimChain", "create_task", "set-up: create the task, every node joins"),
)


class _Clocks:
    """Exclusive wall time per label: entering a timed call pauses the caller's clock,
    except inside a set-up label, which keeps everything it calls (its blocks, its sends)."""

    def __init__(self, absorbing: frozenset[str]) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self._absorbing = absorbing
        self._stack: list[list[Any]] = []  # [label, started]

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if any(outer[0] in self._absorbing for outer in self._stack):
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if self._stack:
                outer = self._stack[-1]
                self.parts[outer[0]] += now - outer[1]
            self._stack.append([label, now])
            try:
                return fn(*args, **kwargs)
            finally:
                done = time.perf_counter()
                inner = self._stack.pop()
                self.parts[inner[0]] += done - inner[1]
                if self._stack:
                    self._stack[-1][1] = done

        return timed


def breakdown(
    nodes: int, rounds: int, proposers: int, fraction: float, attack: str
) -> dict[str, Any]:
    """One flockd per-proposal run with the main parts of its work timed (a wrapper per
    call, no profiler): where the wall time of a round goes."""
    from flockd.fl.attacks import assign_behaviours
    from flockd.fl.recipe import limit_torch_threads
    from flockd.sim import SimConfig, run_simulation

    limit_torch_threads(1)
    run_simulation(SimConfig(nodes=3, rounds=1, expected_proposers=1))  # imports, caches
    clocks = _Clocks(frozenset(label for *_, label in _BREAKDOWN if label.startswith("set-up")))
    restore: list[tuple[Any, str, Any]] = []
    for module_name, class_name, attr, label in _BREAKDOWN:
        owner: Any = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name, None)
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            continue  # the simulation changed shape: leave that part in "everything else"
        restore.append((owner, attr, original))
        setattr(owner, attr, clocks.wrap(label, original))
    cfg = SimConfig(
        nodes=nodes,
        rounds=rounds,
        expected_proposers=proposers,
        behaviours=assign_behaviours(nodes, fraction, attack, 0),
    )
    try:
        started = time.perf_counter()
        result = run_simulation(cfg, on_round=None)
        total = time.perf_counter() - started
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    parts = {label: clocks.parts.get(label, 0.0) for *_, label in _BREAKDOWN}
    parts["everything else"] = max(0.0, total - sum(parts.values()))
    return {
        "nodes": nodes,
        "rounds": rounds,
        "proposers": proposers,
        "fraction": fraction,
        "attack": attack,
        "wall_seconds": total,
        "transactions": result.transactions,
        "blocks": result.blocks,
        "parts": parts,
    }


def breakdown_table(b: dict[str, Any]) -> str:
    lines = [
        "| part | seconds | share | per round (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = b["wall_seconds"]
    for label, seconds in sorted(b["parts"].items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f}% | {seconds / b['rounds']:.3f} |"
        )
    lines.append(f"| **whole run** | {total:.2f} | 100% | {total / b['rounds']:.3f} |")
    return "\n".join(lines)
