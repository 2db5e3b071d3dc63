"""`scripts/bench lm --train-overhead N`: the daemon's training path against a bare script.

The same training, node 0's round-0 training of the testnet's lm-lora task, run N times
each way, the two ways taking turns (A B B A ...) so the machine's other load falls on
both alike:

- **bare**: ``Worker.train`` in this process, one torch thread (what a script that only
  trains would do);
- **daemon path**: ``ChildTrainedWork.train``, what a daemon's task runner calls for a
  recipe with ``train_in_child``: the base sent as safetensors to the task's training
  process (``python -m flockd.tasks.trainer``), trained there, the delta's codec bytes
  read back. The child is started once before the timed runs, as a daemon keeps it
  across rounds; its start-up is reported apart, and the bare way trains once untimed too
  (the first training in a process is the slowest).

Both must return the same delta bytes (checked), so their tokens are the same and the
overhead is the ratio of their seconds. What this leaves out: the daemon's own event loop,
chain and p2p run in another process than the child, so in a live daemon they compete
with training only for the cores, which a bare script on a loaded machine also does.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from structlog.testing import capture_logs

from flockd.fl.recipe import limit_torch_threads
from flockd.tasks.spec import TaskSpec
from flockd.tasks.trainer import ChildTrainedWork
from flockd.tasks.work import Worker


def train_overhead(config: dict[str, Any], nodes: int, pairs: int) -> str:
    """The table of both ways' seconds and tokens/s, and the overhead (median of the
    per-pair ratios daemon path / bare, minus one)."""
    limit_torch_threads(1)
    worker = Worker(TaskSpec("lm-lora", config=config, num_nodes=nodes, seed=0), 0)
    state = worker.initial_model()
    child = ChildTrainedWork(worker)
    tokens = 0
    try:
        started = time.perf_counter()
        reference = child.train(state, 0)  # starts the child: once per task in a daemon
        child_start = time.perf_counter() - started
        if worker.train(state, 0) != reference:  # and warms this process up as the child is
            raise SystemExit("the two ways trained different deltas: the comparison is void")
        bare: list[float] = []
        piped: list[float] = []
        for i in range(2 * pairs):
            use_child = (i % 4) in (1, 2)  # A B B A: neither way always goes first
            started = time.perf_counter()
            if use_child:
                wire = child.train(state, 0)
            else:
                with capture_logs() as logged:  # the recipe's own count of the tokens it ran
                    wire = worker.train(state, 0)
                tokens = next((int(e["tokens"]) for e in logged if e.get("event") == "lm trained"), tokens)
            (piped if use_child else bare).append(time.perf_counter() - started)
            if wire != reference:
                raise SystemExit("the two ways trained different deltas: the comparison is void")
    finally:
        child.close()
    ratios = [p / b for p, b in zip(piped, bare, strict=True)]
    rows = [
        "| way | trainings | median s | min–max s | tokens/s (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, seconds in (("bare script (`Worker.train`)", bare), ("daemon path (`ChildTrainedWork.train`)", piped)):
        median = statistics.median(seconds)
        rate = f"{tokens / median:,.0f}" if tokens else "?"
        rows.append(f"| {name} | {len(seconds)} | {median:.2f} | {min(seconds):.2f}–{max(seconds):.2f} | {rate} |")
    overhead = statistics.median(ratios) - 1
    return "\n".join([
        *rows, "",
        f"Tokens per training: {tokens:,}. The training process's start (first training included): "
        f"{child_start:.1f} s, once per task. Overhead of the daemon path, the median of {pairs} paired "
        f"ratios minus one: {overhead:+.1%} (pairs from {min(ratios) - 1:+.1%} to {max(ratios) - 1:+.1%}).",
    ])
