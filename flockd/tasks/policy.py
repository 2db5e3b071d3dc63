"""Which tasks this node agrees to join: its [policy] section against a task's parameters.

Joining locks the stake until the task ends, so a node refuses, before it stakes anything,
a task that would lock it too long (rounds, windows), slash too much, or leave its reveals
too little room over its own confirmation lag to land (the reveal squeeze). The registry
enforces looser caps of its own for everyone (protocol/spec/contracts.md).
"""

from __future__ import annotations

from flockd.chain.client.registry import TaskParams
from flockd.config import PolicySection

# Blocks a reveal needs beyond the confirmation lag: the one it lands in, plus room for
# two re-sends at a bumped tip after a block that left it out.
REVEAL_MARGIN_BLOCKS = 3


class PolicyError(Exception):
    """The task's parameters are outside what this node's [policy] accepts."""


def violations(policy: PolicySection, params: TaskParams, confirmations: int) -> list[str]:
    """Every way ``params`` breaks ``policy``, as sentences; [] if it does not."""
    out = []
    if params.rounds > policy.max_rounds:
        out.append(f"rounds {params.rounds} > policy.max_rounds {policy.max_rounds}")
    windows = {"propose_blocks": params.propose_blocks, "commit_blocks": params.commit_blocks,
               "reveal_blocks": params.reveal_blocks}
    for name, value in windows.items():
        if value > policy.max_window_blocks:
            out.append(f"{name} {value} > policy.max_window_blocks {policy.max_window_blocks}")
    least = max(policy.min_reveal_blocks, confirmations + 1 + REVEAL_MARGIN_BLOCKS)
    if params.reveal_blocks < least:
        out.append(f"reveal_blocks {params.reveal_blocks} < {least} (policy.min_reveal_blocks "
                   f"{policy.min_reveal_blocks}, or chain.confirmations {confirmations} + "
                   f"{1 + REVEAL_MARGIN_BLOCKS}): reveals could be squeezed out")
    if params.slash_bps > policy.max_slash_bps:
        out.append(f"slash_bps {params.slash_bps} > policy.max_slash_bps {policy.max_slash_bps}")
    # a round with no proposal may add a fallback propose window (protocol/spec/round.md)
    task_blocks = params.rounds * (2 * params.propose_blocks + params.commit_blocks + params.reveal_blocks)
    if task_blocks > policy.max_task_blocks:
        out.append(f"the task may lock stake for {task_blocks} blocks > policy.max_task_blocks "
                   f"{policy.max_task_blocks}")
    return out


def check_join(policy: PolicySection, task_id: int, params: TaskParams, confirmations: int) -> None:
    """Raise PolicyError naming every way the task breaks this node's policy."""
    problems = violations(policy, params, confirmations)
    if problems:
        raise PolicyError(f"task {task_id} is outside this node's [policy]: " + "; ".join(problems))
