"""The join policy: a daemon refuses, before staking, a task outside its [policy]."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio

from flockd.chain.client.registry import TaskParams
from flockd.config import ConfigError, PolicySection, config_from_dict
from flockd.rpc.errors import RPCError
from flockd.rpc.task import TASK_ERROR, TaskNamespace
from flockd.tasks.policy import PolicyError, check_join, violations

E18 = 10**18
FAIR = TaskParams(
    recipe="digits-mlp", recipe_hash=bytes(32), model_init_hash=bytes(32), rounds=10, min_participants=2,
    min_stake=E18, stake_unit=E18, expected_proposers=3, max_proposals=16, propose_blocks=8,
    commit_blocks=6, reveal_blocks=8, reward_pool=0, vote_mode=0, slash_bps=1000, proposer_share_bps=6000,
)


def test_a_fair_task_passes() -> None:
    assert violations(PolicySection(), FAIR, confirmations=2) == []
    check_join(PolicySection(), 1, FAIR, 2)


@pytest.mark.parametrize(
    ("over", "words"),
    [
        (dict(rounds=101), "rounds 101 > policy.max_rounds 100"),
        (dict(commit_blocks=2**32), "commit_blocks 4294967296 > policy.max_window_blocks 256"),
        (dict(reveal_blocks=4), "reveals could be squeezed out"),
        (dict(slash_bps=10_000), "slash_bps 10000 > policy.max_slash_bps 1000"),
        (dict(rounds=100, propose_blocks=200, commit_blocks=200), "policy.max_task_blocks"),
    ],
)
def test_a_hostile_task_is_refused_with_the_reason(over: dict[str, Any], words: str) -> None:
    with pytest.raises(PolicyError, match="task 7 is outside this node's \\[policy\\]") as info:
        check_join(PolicySection(), 7, replace(FAIR, **over), 2)
    assert words in str(info.value)


def test_reveal_window_must_clear_this_nodes_confirmations() -> None:
    assert violations(PolicySection(), FAIR, confirmations=4) == []
    (problem,) = violations(PolicySection(), FAIR, confirmations=5)  # 5 + 4 > 8
    assert problem.startswith("reveal_blocks 8 < 9")


def test_policy_section_in_config() -> None:
    cfg = config_from_dict({"policy": {"max_slash_bps": 2500, "max_rounds": 5}})
    assert cfg.policy == PolicySection(max_rounds=5, max_slash_bps=2500)
    with pytest.raises(ConfigError, match="policy.max_slash_bps"):
        config_from_dict({"policy": {"max_slash_bps": 10_001}})


class _Registry:
    async def get_params(self, task_id: int) -> TaskParams:
        return replace(FAIR, slash_bps=5000)


class _Ctx:
    confirmations = 2


class _NeverJoin:
    """The task service as far as task_join reaches it before the policy check."""

    registry = _Registry()
    ctx = _Ctx()

    async def join(self, *args: Any) -> dict[str, Any]:
        raise AssertionError("staked on a task the policy refuses")


def test_task_join_rpc_refuses_before_staking() -> None:
    rpc = TaskNamespace(_NeverJoin(), PolicySection())  # type: ignore[arg-type]
    with pytest.raises(RPCError) as info:
        trio.run(rpc.task_join, 3, {})
    assert info.value.code == TASK_ERROR
    assert "not joining: task 3 is outside this node's [policy]: slash_bps 5000" in info.value.message
