"""The lower bound an LM federation must beat: each node alone on its own domain.

For the testnet's report: one node per domain of the demo corpus trains its own adapter
on its own training split for as many rounds as the task ran, through the daemon's own
code (``Worker.train`` from the task's initial state, then ``Worker.aggregate`` of that
one delta, which carries the adapter on exactly as a federation of one would), with the
training seeds the task's node would have used. Each lone model is measured on every
domain's test split; the figure to beat is their mean, as ``scripts/bench lm`` reports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from flockd.fl.recipe import LocalData
from flockd.fl.tensors import Tensors, load_model_state
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker


def alone(spec: TaskSpec, node_index: int, rounds: int) -> tuple[Worker, Tensors]:
    """Node ``node_index`` of ``spec`` after ``rounds`` rounds on its own."""
    worker = Worker(spec, node_index)
    state = worker.initial_model()
    for round_number in range(rounds):
        state = worker.aggregate(state, [worker.train(state, round_number)])
    return worker, state


def local_only_bpc(spec: TaskSpec, rounds: int, tests: Sequence[LocalData]) -> dict[str, Any]:
    """Bits per character of each domain's lone node on every domain's test text (``tests``,
    one per domain, in the recipe's domain order): their mean per domain, the mean over
    domains, and each lone model on its own domain."""
    per_node: list[list[float]] = []
    for index in range(min(len(tests), spec.num_nodes)):
        worker, state = alone(spec, index, rounds)
        model = worker.recipe.build_model(spec.seed)
        load_model_state(model, worker.recipe.model_weights(state))
        per_node.append([worker.recipe.evaluate(model, text)["loss"] for text in tests])
    # node i holds domain i (flockd.lm.recipe: node i takes domains[i % len(domains)])
    by_domain = [math.fsum(column) / len(column) for column in zip(*per_node, strict=True)]
    return {
        "nodes": len(per_node),
        "bpc_by_domain": by_domain,
        "bpc_mean": math.fsum(by_domain) / len(by_domain),
        "own_domain_mean": math.fsum(per_node[i][i] for i in range(len(per_node))) / len(per_node),
    }
