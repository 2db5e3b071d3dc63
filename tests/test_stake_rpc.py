"""stake_*: delegation to a participant's pool in the task registry, through the RPC
namespace on the embedded chain with the real contracts: delegate, balances, withdraw, and
every refusal the registry or the params checks give, with its reason."""

from __future__ import annotations

import pytest
from test_anvil import E18, MEMBERS, STAKE, embedded_env, task_params

from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.rpc.stake import StakeNamespace
from flockd.rpc.task import TASK_ERROR


async def test_delegate_balances_and_withdraw() -> None:
    async with embedded_env() as env:
        task = await env.registry(0).create_task(task_params(reward_pool=0))
        await env.token(1).approve(env.deployment.registry, STAKE)
        await env.registry(1).join(task, STAKE, MEMBERS[1].vrf_pk)
        delegator = StakeNamespace(env.registry(2), env.token(2))
        pool = MEMBERS[1].address.hex()

        held = await env.token(2).balance_of(MEMBERS[2].address)
        delegated = await delegator.stake_delegate(task, "0x" + pool, "50e18")
        assert (delegated["shares"], delegated["value"]) == (50 * E18, 50 * E18)
        balances = await StakeNamespace(env.registry(0), env.token(0)).stake_balances(task, "0x" + pool, "0x" + MEMBERS[2].address.hex())
        assert balances["value"] == 50 * E18
        assert (await env.registry(0).get_state(task)).total_stake == STAKE + 50 * E18

        with pytest.raises(RPCError) as refused:
            await delegator.stake_delegate(task, "0x" + MEMBERS[3].address.hex(), E18)
        assert refused.value.code == TASK_ERROR and "not a participant" in refused.value.message
        with pytest.raises(RPCError) as bad:
            await delegator.stake_delegate(task, "0x1234", E18)
        assert bad.value.code == INVALID_PARAMS
        with pytest.raises(RPCError) as bad:
            await delegator.stake_delegate(task, "0x" + pool, "-1")
        assert bad.value.code == INVALID_PARAMS

        # before the task starts the delegation comes back whole
        withdrawn = await delegator.stake_withdraw(task, "0x" + pool)
        assert withdrawn["withdrawn"] == 50 * E18
        assert await env.token(2).balance_of(MEMBERS[2].address) == held
        assert (await delegator.stake_balances(task, "0x" + pool))["shares"] == 0
        with pytest.raises(RPCError, match="nothing to withdraw"):
            await delegator.stake_withdraw(task, "0x" + pool)
