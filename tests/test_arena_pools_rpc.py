"""stake_arena_* and rewards_*: the Arena's delegation pools through the RPC namespaces, on
the embedded chain with the Arena in its genesis. The refusals first (bad params, a
non-operator, a withdrawal before the unbonding delay, a pending commission change, stake
locked in a competition), each with its reason; then a competition that pays a backed
validator, whose pool's share reaches the delegator by rewards_claim."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from eth_utils import keccak, to_checksum_address
from test_anvil import E18, MEMBERS, POLICY, Env
from test_arena_anvil import EVAL_SALT, EVAL_SET_HASH, advance_to, arena_env, competition_params

from flockd import vrf
from flockd.chain.client.abc import ChainBackend
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    ROLE_TRAINER,
    ROLE_VALIDATOR,
    Arena,
    scores_digest,
    submission_digest,
)
from flockd.chain.client.arena_pools import COMMISSION_DELAY_BLOCKS, UNBONDING_BLOCKS, ArenaPools
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.placement import place_contract
from flockd.ctl import main as flockctl_main
from flockd.ctl import with_whole_units
from flockd.rpc.arena import ARENA_ERROR
from flockd.rpc.dispatch import Dispatcher
from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.rpc.rewards import RewardsNamespace
from flockd.rpc.server import serve_ipc
from flockd.rpc.stake import StakeNamespace
from flockd.stats import Counters

CREATOR, TRAINER, DELEGATOR, VALIDATOR = 0, 1, 2, 3


class TopicsIgnored(ChainBackend):
    """A chain node that answers eth_getLogs with every log of the address, whatever the topics."""

    def __init__(self, inner: ChainBackend) -> None:
        self.inner = inner

    async def request(self, method: str, params: list[Any]) -> Any:
        if method == "eth_getLogs":
            params = [{k: v for k, v in params[0].items() if k != "topics"}]
        return await self.inner.request(method, params)

    async def aclose(self) -> None:
        return None


def hx(who: int) -> str:
    return "0x" + MEMBERS[who].address.hex()


def stake(env: Env, address: bytes, who: int) -> StakeNamespace:
    return StakeNamespace(env.registry(who), env.token(who), Arena(env.client(who), address), Counters())


def rewards(env: Env, address: bytes, who: int) -> RewardsNamespace:
    return RewardsNamespace(Arena(env.client(who), address))


async def test_bad_params_and_non_operators_are_refused_naming_the_param() -> None:
    async with arena_env("embedded", None) as (env, address):
        me = stake(env, address, DELEGATOR)
        for call, param in [
            (me.stake_arena_delegate("0x1234", E18), "operator"),
            (me.stake_arena_delegate(hx(VALIDATOR), "-1"), "amount"),
            (me.stake_arena_delegate(hx(VALIDATOR), "1.5"), "amount"),
            (me.stake_arena_delegate(hx(DELEGATOR), E18), "operator"),  # itself: not a pool
            (me.stake_arena_delegate("0x" + "00" * 20, E18), "operator"),
            (me.stake_arena_undelegate(hx(VALIDATOR), "0"), "shares"),
            (me.stake_arena_balances(hx(VALIDATOR), "nobody"), "holder"),
            (me.stake_arena_commission(5001), "commission_bps"),
            (me.stake_arena_commission(-1), "commission_bps"),
            (me.stake_arena_positions(from_block=10**9), "from_block"),
            (rewards(env, address, DELEGATOR).rewards_pending("0xzz"), "operator"),
        ]:
            with pytest.raises(RPCError, match=param) as bad:
                await call
            assert bad.value.code == INVALID_PARAMS

        # the contract's own refusals come back with its reason
        with pytest.raises(RPCError, match="holds no shares") as none:
            await me.stake_arena_undelegate(hx(VALIDATOR))
        assert none.value.code == ARENA_ERROR
        with pytest.raises(RPCError, match="the arena refused: not enough shares") as more:
            await me.stake_arena_undelegate(hx(VALIDATOR), 1)
        assert more.value.code == ARENA_ERROR
        with pytest.raises(RPCError, match="the arena refused: no shares"):
            await rewards(env, address, DELEGATOR).rewards_claim(hx(VALIDATOR))
        with pytest.raises(RPCError, match="nothing to claim"):
            await rewards(env, address, DELEGATOR).rewards_claim()
        with pytest.raises(RPCError, match="nothing unbonding"):
            await me.stake_arena_withdraw()

        # an external chain with no Arena configured: refused before anything is signed
        nowhere = Arena(*place_contract(env.client(DELEGATOR), external=True, configured="", genesis=address,
                                        name="Arena", key="arena"))
        unplaced = StakeNamespace(env.registry(DELEGATOR), env.token(DELEGATOR), nowhere)
        nonce = await env.backend.request("eth_getTransactionCount", [hx(DELEGATOR), "pending"])
        with pytest.raises(RPCError, match="no Arena on this external chain") as unset:
            await unplaced.stake_arena_delegate(hx(VALIDATOR), E18)
        assert unset.value.code == ARENA_ERROR
        assert await env.backend.request("eth_getTransactionCount", [hx(DELEGATOR), "pending"]) == nonce

        # through the dispatcher: JSON types are checked, the param named
        dispatcher = Dispatcher([me, rewards(env, address, DELEGATOR)])
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "stake_arena_commission", "params": {"commission_bps": "9"}})
        error = json.loads(await dispatcher.handle_line(line.encode()) or b"{}")["error"]
        assert error["code"] == INVALID_PARAMS and "commission_bps" in error["message"]


async def test_a_pool_from_delegation_through_a_paid_competition_to_withdrawal() -> None:
    """One chain for every step, the unbonding delay mined once (1024 blocks: the cost of this file)."""
    async with arena_env("embedded", None) as (env, address):
        arena = {who: Arena(env.client(who), address) for who in range(4)}
        for who in (CREATOR, TRAINER, VALIDATOR):
            await env.token(who).approve(address, 2**256 - 1)
        validator = MEMBERS[VALIDATOR].address
        delegator, operator = stake(env, address, DELEGATOR), stake(env, address, VALIDATOR)
        held = await env.token(DELEGATOR).balance_of(MEMBERS[DELEGATOR].address)

        # the operator raises its commission: pending for COMMISSION_DELAY_BLOCKS, one change at a time
        set_at = await env.client(0).block_number() + 1
        changed = await operator.stake_arena_commission(2000)
        commission_from = set_at + COMMISSION_DELAY_BLOCKS
        assert (changed["commission_bps"], changed["next_commission_bps"], changed["commission_from"]) == (0, 2000, commission_from)
        with pytest.raises(RPCError, match=f"commission change pending: .* from block {commission_from}") as pending:
            await operator.stake_arena_commission(1000)
        assert pending.value.code == ARENA_ERROR

        delegated = await delegator.stake_arena_delegate(hx(VALIDATOR), "300e18")
        assert (delegated["minted_shares"], delegated["shares"], delegated["value"]) == (300 * E18,) * 3
        seen = await stake(env, address, CREATOR).stake_arena_balances(hx(VALIDATOR), hx(DELEGATOR))
        assert (seen["shares"], seen["pending_rewards"], seen["claimable"]) == (300 * E18, 0, 0)

        cid = await arena[CREATOR].create(competition_params())
        await arena[TRAINER].join(cid, ROLE_TRAINER, 10 * E18)
        await arena[VALIDATOR].join(cid, ROLE_VALIDATOR, 100 * E18, vrf.public_key(MEMBERS[VALIDATOR].vrf_sk))
        pool = await stake(env, address, CREATOR).stake_arena_pool(hx(VALIDATOR))
        assert (pool["stake"], pool["total_shares"], pool["locked"], pool["free"]) == (300 * E18, 300 * E18, 300 * E18, 0)
        with pytest.raises(RPCError, match="the arena refused: stake locked in a competition"):
            await delegator.stake_arena_undelegate(hx(VALIDATOR))

        model, salt = keccak(b"model"), keccak(b"salt")
        await arena[TRAINER].commit_submission(cid, submission_digest(cid, MEMBERS[TRAINER].address, model, salt))
        await advance_to(env, arena[CREATOR], cid, ARENA_PHASE_SUBMIT)
        await arena[VALIDATOR].elect(cid, vrf.prove(MEMBERS[VALIDATOR].vrf_sk, await arena[CREATOR].seed(cid)))
        await advance_to(env, arena[CREATOR], cid, ARENA_PHASE_REVEAL)
        await arena[TRAINER].reveal_submission(cid, model, salt)
        await advance_to(env, arena[CREATOR], cid, ARENA_PHASE_SCORE_COMMIT)
        await arena[VALIDATOR].commit_scores(cid, scores_digest(cid, validator, [800], salt))
        await advance_to(env, arena[CREATOR], cid, ARENA_PHASE_SCORE_REVEAL)
        await arena[VALIDATOR].reveal_scores(cid, [800], salt)
        await arena[CREATOR].publish_eval(cid, EVAL_SET_HASH, EVAL_SALT)
        await advance_to(env, arena[CREATOR], cid, ARENA_PHASE_CLOSED)
        await arena[CREATOR].finalise(cid)

        # the validator's reward is 300 (30% of the pool); the backing (300 of 400) earned
        # 3/4 of it, all the delegator's (the 20% commission was still pending)
        pulled = rewards(env, address, DELEGATOR)
        pending_rewards = await pulled.rewards_pending(hx(VALIDATOR))
        assert (pending_rewards["pending"], pending_rewards["claimable"]) == (225 * E18, 0)
        claim = await pulled.rewards_claim(hx(VALIDATOR))
        assert (claim["collected"], claim["claimed"]) == (225 * E18, 225 * E18)
        assert (await pulled.rewards_pending(hx(VALIDATOR)))["pending"] == 0
        assert (await operator.stake_arena_pool())["locked"] == 0  # finalised: free to leave

        # positions: from the Delegated events, each rechecked (a node may ignore the filter)
        await ArenaPools(env.client(CREATOR), address).delegate(MEMBERS[TRAINER].address, E18)
        unfiltered = ContractClient(TopicsIgnored(env.backend), MEMBERS[DELEGATOR].account, POLICY)
        listed = await StakeNamespace(env.registry(DELEGATOR), env.token(DELEGATOR), Arena(unfiltered, address)).stake_arena_positions()
        assert [(p["operator"], p["value"], p["pending_rewards"]) for p in listed["positions"]] == [
            (to_checksum_address(validator), 300 * E18, 0)
        ]
        assert (await stake(env, address, CREATOR).stake_arena_positions(hx(DELEGATOR), listed["to_block"]))["positions"] == []

        out = await delegator.stake_arena_undelegate(hx(VALIDATOR), "100e18")
        assert (out["amount"], out["shares"]) == (100 * E18, 200 * E18)
        with pytest.raises(RPCError, match="still unbonding: withdrawable from block") as early:
            await delegator.stake_arena_withdraw()
        assert early.value.code == ARENA_ERROR
        rest = await delegator.stake_arena_undelegate(hx(VALIDATOR))  # default: all the shares left
        release = await env.client(0).block_number() + UNBONDING_BLOCKS  # the later one restarts the wait
        assert (rest["amount"], rest["shares"], rest["unbonding"]) == (200 * E18, 0, {"amount": 300 * E18, "release_block": release})
        await env.mine(release - 2 - await env.client(0).block_number())  # a tx sent now lands in release - 1
        with pytest.raises(RPCError, match=f"still unbonding: withdrawable from block {release}, 1 blocks from now"):
            await delegator.stake_arena_withdraw()
        await env.mine(1)
        withdrawn = await delegator.stake_arena_withdraw()
        assert (withdrawn["released"], withdrawn["claimed"]) == (300 * E18, 300 * E18)
        assert await env.token(DELEGATOR).balance_of(MEMBERS[DELEGATOR].address) == held + 225 * E18
        assert delegator.counters.snapshot() == {"pool_delegations": 1, "pool_undelegations": 2, "pool_withdrawals": 1}

        # the raise applies from commission_from on: 2048 blocks more to mine, so that side is
        # the contract's test (tests/test_arena_pools.py); still pending here
        assert (await operator.stake_arena_pool())["commission_bps"] == 0
        with pytest.raises(RPCError, match=f"commission change pending: .* from block {commission_from}"):
            await operator.stake_arena_commission(1000)

def test_flockctl_shows_pool_amounts_in_whole_tokens_beside_base_units() -> None:
    shown = with_whole_units({"value": 225 * E18, "pending_rewards": 5 * 10**17, "shares": 7, "commission_bps": 2000})
    assert shown == {"value": f"{225 * E18} (225)", "pending_rewards": f"{5 * 10**17} (0.5)", "shares": 7, "commission_bps": 2000}


async def test_flockctl_reaches_the_pools_through_the_control_socket(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with arena_env("embedded", None) as (env, address), trio.open_nursery() as nursery:
        socket = short_tmp / "flockd.ipc"
        dispatcher = Dispatcher([stake(env, address, DELEGATOR), rewards(env, address, DELEGATOR)])
        await nursery.start(partial(serve_ipc, socket, dispatcher))

        async def flockctl(*argv: str) -> int:
            return await trio.to_thread.run_sync(flockctl_main, ["--datadir", str(short_tmp), *argv])

        capsys.readouterr()
        assert await flockctl("stake_arena_delegate", f"operator={hx(VALIDATOR)}", "amount=300e18") == 0
        shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
        assert (shown["value"], shown["delegated"]) == (f"{300 * E18} (300)",) * 2
        assert await flockctl("stake_arena_positions") == 0
        table = capsys.readouterr().out
        assert "positions" in table.splitlines() and "operator" in table  # a table under its name (cells fold)
        assert await flockctl("stake_arena_withdraw") == 1
        assert "flockctl: error -32050: nothing unbonding" in capsys.readouterr().err
        assert await flockctl("stake_arena_commission", "commission_bps=9000") == 1
        assert "error -32602: commission_bps must be in [0, 5000]" in capsys.readouterr().err
        nursery.cancel_scope.cancel()
