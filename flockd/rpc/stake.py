"""stake_*: delegation to a participant's stake pool in the task registry (on chain since
the registry's first version; contracts/TaskRegistry.vy `delegate`, `withdraw`).

    stake_delegate   add tokens to a participant's pool while the task is joining; the
                     delegator's shares take the pool's rewards and slashes pro rata
    stake_withdraw   redeem all of this node's shares of a pool (before the task starts
                     or after it ends): the stake with its rewards, less its slashes
    stake_balances   a holder's shares of a pool and what they are worth now

The registry pays rewards into the pools, so a delegator's rewards are claimed by
`stake_withdraw`. Amounts are token base units (an int, or text such as "25e18").
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from flockd.chain.client.registry import Registry, Token
from flockd.chain.node.genesis import GenesisError, parse_address, parse_amount
from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.rpc.task import _TaskErrors as TaskErrors


def _parsed(name: str, value: str | int, parse: Any) -> Any:
    try:
        return parse(name, value)
    except GenesisError as exc:
        raise RPCError(INVALID_PARAMS, str(exc)) from None


def _task(task_id: int) -> int:
    if not 1 <= task_id < 2**64:
        raise RPCError(INVALID_PARAMS, f"task_id must be in [1, 2**64), got {task_id}")
    return task_id


class StakeNamespace:
    namespace = "stake"

    def __init__(self, registry: Registry, token: Token) -> None:
        self._registry = registry
        self._token = token

    async def stake_delegate(self, task_id: int, participant: str, amount: int | str) -> dict[str, Any]:
        """Delegate tokens to a participant of a task that is still joining."""
        pool = _parsed("participant", participant, parse_address)
        value = _parsed("amount", amount, parse_amount)
        with TaskErrors():
            await self._token.approve(self._registry.address, value)
            receipt = await self._registry.delegate(_task(task_id), pool, value)
            return {**await self._balance(task_id, pool, self._token.client.address), "tx_hash": "0x" + receipt.tx_hash.hex()}

    async def stake_withdraw(self, task_id: int, participant: str) -> dict[str, Any]:
        """Redeem all of this node's shares of a participant's pool (not while the task runs)."""
        pool = _parsed("participant", participant, parse_address)
        me = self._token.client.address
        with TaskErrors():
            before = await self._token.balance_of(me)
            receipt = await self._registry.withdraw(_task(task_id), pool)
            return {"task_id": task_id, "participant": to_checksum_address(pool),
                    "withdrawn": await self._token.balance_of(me) - before, "tx_hash": "0x" + receipt.tx_hash.hex()}

    async def stake_balances(self, task_id: int, participant: str, holder: str | None = None) -> dict[str, Any]:
        """A holder's (default this node's) shares of a participant's pool and their value."""
        pool = _parsed("participant", participant, parse_address)
        who = self._token.client.address if holder is None else _parsed("holder", holder, parse_address)
        with TaskErrors():
            return await self._balance(_task(task_id), pool, who)

    async def _balance(self, task_id: int, pool: bytes, holder: bytes) -> dict[str, Any]:
        return {
            "task_id": task_id, "participant": to_checksum_address(pool), "holder": to_checksum_address(holder),
            "shares": await self._registry.shares_of(task_id, pool, holder),
            "value": await self._registry.value_of(task_id, pool, holder),
        }
