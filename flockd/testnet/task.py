"""Run one learning task across a running testnet: create, join everywhere, start, watch."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flockd.testnet.cluster import START_WAVE, Cluster, ClusterError, Daemon

# These calls return once their transactions are mined (task_join: approve, then join), so
# they take blocks, and longer on a busy machine: far more than a plain query's 10 s.
TX_TIMEOUT = 120.0


def scaled_windows(nodes: int) -> dict[str, int]:
    """The task's windows (TaskPlan's defaults: propose 8, commit 6, reveal 8 blocks), times
    nodes/8 above 15 nodes. 32 daemons on 2 cores run blocks 5-30 s apart with bursts after
    a stall, and voters whose clocks passed the 8-block reveal window before they could
    open their votes were slashed: 10 and 13 of 32 honest nodes ended below their stake.
    A window closes early once every message is in, so a longer one costs time only when
    a node is late."""
    scale = max(1, nodes // 8)
    plan = TaskPlan()
    return {"propose_blocks": plan.propose_blocks * scale, "commit_blocks": plan.commit_blocks * scale,
            "reveal_blocks": plan.reveal_blocks * scale}


@dataclass(frozen=True)
class TaskPlan:
    recipe: str = "digits-mlp"
    rounds: int = 8
    partition: str = "iid"
    rule: str = "fedavg"
    expected_proposers: int = 3
    propose_blocks: int = 8
    commit_blocks: int = 6
    reveal_blocks: int = 8  # the registry's MIN_REVEAL_BLOCKS
    vote_mode: str = "per-proposal"
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the recipe's (lm-lora: its base hash)
    competition: int | None = None  # an Arena competition whose winner is round 0's base
    root_rows: int = 0  # a public root set for the root-direction vote (TaskSpec.root_rows)


def create_and_join(cluster: Cluster, plan: TaskPlan, before_start: Callable[[int], object] | None = None,
                    members: list[Daemon] | None = None) -> int:
    """`before_start(task_id)` runs once every node joined (a delegation must come then);
    `members`: the nodes that take part (default all; the first creates the task)."""
    daemons = cluster.daemons if members is None else members
    nodes = len(daemons)
    created = daemons[0].call("task_create", {
        "recipe": plan.recipe, "rounds": plan.rounds, "partition": plan.partition, "rule": plan.rule,
        "num_nodes": nodes, "seed": plan.seed, "expected_proposers": min(plan.expected_proposers, nodes),
        "min_participants": nodes, "propose_blocks": plan.propose_blocks, "commit_blocks": plan.commit_blocks,
        "reveal_blocks": plan.reveal_blocks, "vote_mode": plan.vote_mode, "config": plan.config,
        **({} if plan.competition is None else {"competition": plan.competition}),
        **({"root_rows": plan.root_rows} if plan.root_rows else {}),
    }, timeout=TX_TIMEOUT)
    task_id: int = created["task_id"]
    # A node that has not imported the creating block yet would answer "no task".
    cluster.wait_for(lambda: all(d.call("task_status", {"task_id": task_id}) for d in daemons),
                     TX_TIMEOUT, f"every node to see task {task_id}")
    # In waves, as the daemons start: joining builds the task's spec, which imports torch and
    # loads the data, and 31 daemons doing it at once on 2 cores left one without an answer
    # within TX_TIMEOUT (a 32-node run, load 35).
    with ThreadPoolExecutor(max_workers=START_WAVE) as pool:
        for first in range(0, nodes, START_WAVE):
            joins = [
                pool.submit(d.call, "task_join", {"task_id": task_id, "spec": created["spec"]}, TX_TIMEOUT)
                for d in daemons[first : first + START_WAVE]
            ]
            for future in joins:
                future.result()
    if before_start is not None:
        before_start(task_id)
    daemons[0].call("task_start", {"task_id": task_id}, timeout=TX_TIMEOUT)
    return task_id


def poll_interval(cluster: Cluster, members: list[Daemon] | None = None) -> float:
    """Seconds between polls of every node: task_status reads the registry (about 20 ms of
    a daemon's CPU on an idle machine), and at one poll a second 32 daemons spent a third
    of 2 cores answering the testnet."""
    return max(1.0, len(cluster.daemons if members is None else members) / 8)


def poll(cluster: Cluster, task_id: int, members: list[Daemon] | None = None,
         ) -> tuple[list[dict[str, Any] | None], list[dict[str, Any] | None]]:
    statuses: list[dict[str, Any] | None] = []
    rounds: list[dict[str, Any] | None] = []
    for d in cluster.daemons if members is None else members:
        try:
            statuses.append(d.call("task_status", {"task_id": task_id}))
        except Exception:
            statuses.append(None)
        try:
            rounds.append(d.call("round_status", {"task_id": task_id}))
        except Exception:
            rounds.append(None)
    return statuses, rounds


def wait_finished(
    cluster: Cluster, task_id: int, plan: TaskPlan, timeout: float,
    on_poll: Callable[[list[dict[str, Any] | None], list[dict[str, Any] | None]], None],
    members: list[Daemon] | None = None,
) -> list[dict[str, Any]]:
    """Poll until every node (of `members`) finished every round; returns each one's task_status."""
    deadline = time.monotonic() + timeout
    interval = poll_interval(cluster, members)
    while time.monotonic() < deadline:
        statuses, rounds = poll(cluster, task_id, members)
        on_poll(statuses, rounds)
        if all(s is not None and _done(s, plan.rounds) for s in statuses):
            return [s for s in statuses if s is not None]
        for d in cluster.daemons:
            if d.process is not None and not d.alive():
                raise ClusterError(f"node{d.index} died: {cluster.last_words(d)}")
        time.sleep(interval)
    raise ClusterError(f"the task did not finish within {timeout:.0f}s")


def wait_models_on_chain(cluster: Cluster, task_id: int, timeout: float,
                         members: list[Daemon] | None = None) -> list[dict[str, Any]] | None:
    """After the task: poll until every node holds the model the chain recorded (a node
    restarted late may still be replaying rounds when the chain says finished); returns
    the last complete set of task_status replies, agreeing or not (None if never complete)."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] | None = None
    while True:
        statuses, _ = poll(cluster, task_id, members)
        if all(s is not None for s in statuses):
            last = [s for s in statuses if s is not None]
            if all(_on_chain(s) for s in last):
                return last
        if time.monotonic() >= deadline:
            return last
        time.sleep(poll_interval(cluster, members))


def _done(status: dict[str, Any], rounds: int) -> bool:
    """The chain says finished, and the node recorded every round or holds the final model
    anyway (under chaos a round can be missing from a node's history: see docs/testnet.md)."""
    return status["state"] == "finished" and (len(status["history"]) >= rounds or _on_chain(status))


def _on_chain(status: dict[str, Any]) -> bool:
    model, chain = status.get("model_hash"), status.get("chain_model_hash")
    return isinstance(model, str) and isinstance(chain, str) and model.lower() == chain.lower()
