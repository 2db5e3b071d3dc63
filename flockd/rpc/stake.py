"""stake_*: delegation, to a participant's stake pool in the task registry and to an
operator's pool in the Arena.

The task registry (contracts/TaskRegistry.vy `delegate`, `withdraw`):

    stake_delegate          add tokens to a participant's pool while the task is joining; the
                            delegator's shares take the pool's rewards and slashes pro rata
    stake_withdraw          redeem all of this node's shares of a pool (before the task starts
                            or after it ends): the stake with its rewards, less its slashes
    stake_balances          a holder's shares of a pool and what they are worth now

The registry pays rewards into the pools, so a delegator's rewards are claimed by
`stake_withdraw`.

The Arena (contracts/Arena.vy, docs/arena.md "Delegation"): an operator (a trainer or a
validator) has one pool across competitions; its free stake backs the operator's next
seat, and the pool's part of a reward, less the commission, is the delegators'.

    stake_arena_delegate    add tokens to an operator's pool (shares minted)
    stake_arena_undelegate  redeem shares (default all); the stake unbonds for UNBONDING_BLOCKS
    stake_arena_withdraw    once unbonded, release the stake and claim it (with whatever
                            else the Arena owes this node: its claim pays everything)
    stake_arena_balances    a holder's position in a pool: shares, value, pending rewards,
                            unbonding, claimable
    stake_arena_positions   a holder's positions in every pool it delegated to
    stake_arena_pool        an operator's pool (default this node's) and its commission
    stake_arena_commission  this node's commission as an operator: in force after
                            COMMISSION_DELAY_BLOCKS, at most one change per delay

Rewards of an Arena pool are pulled with rewards_claim (flockd/rpc/rewards.py).
Amounts and shares are token base units (an int, or text such as "25e18").
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from flockd.chain.client.arena import Arena
from flockd.chain.client.arena_pools import COMMISSION_DELAY_BLOCKS, MAX_COMMISSION_BPS, ArenaPools
from flockd.chain.client.registry import Registry, Token
from flockd.chain.node.genesis import GenesisError, parse_address, parse_amount
from flockd.rpc.arena import ARENA_ERROR
from flockd.rpc.arena import _ArenaErrors as ArenaErrors
from flockd.rpc.errors import INVALID_PARAMS, RPCError
from flockd.rpc.task import _TaskErrors as TaskErrors
from flockd.stats import Counters

MAX_POSITIONS = 64  # pools stake_arena_positions reads (3 views each) in one call


def parsed_param(name: str, value: str | int, parse: Any) -> Any:
    try:
        return parse(name, value)
    except GenesisError as exc:
        raise RPCError(INVALID_PARAMS, str(exc)) from None


def _task(task_id: int) -> int:
    if not 1 <= task_id < 2**64:
        raise RPCError(INVALID_PARAMS, f"task_id must be in [1, 2**64), got {task_id}")
    return task_id


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


async def pool_share(pools: ArenaPools, operator: bytes, holder: bytes) -> dict[str, Any]:
    """A holder's stake and uncollected rewards in an operator's Arena pool."""
    shares = await pools.shares_of(operator, holder)
    return {
        "operator": to_checksum_address(operator), "shares": shares,
        "value": (await pools.get_pool(operator)).value_of(shares),
        "pending_rewards": await pools.pending_rewards(operator, holder),
    }


async def owed(arena: Arena, holder: bytes) -> dict[str, Any]:
    """What the Arena holds for `holder` outside the pools: unbonding stake, and claimable."""
    unbonding = await ArenaPools(arena.client, arena.address).get_unbonding(holder)
    return {"unbonding": {"amount": unbonding.amount, "release_block": unbonding.release_block},
            "claimable": await arena.claimable(holder)}


async def arena_position(arena: Arena, operator: bytes, holder: bytes) -> dict[str, Any]:
    """A holder's stake and rewards in an operator's Arena pool, and what the Arena owes it."""
    share = await pool_share(ArenaPools(arena.client, arena.address), operator, holder)
    return {"operator": share["operator"], "holder": to_checksum_address(holder), **share, **await owed(arena, holder)}


class StakeNamespace:
    namespace = "stake"

    def __init__(self, registry: Registry, token: Token, arena: Arena | None = None, counters: Counters | None = None) -> None:
        self._registry = registry
        self._token = token
        self._arena = arena
        self.counters = counters or Counters()

    # -- the task registry ---------------------------------------------------------------

    async def stake_delegate(self, task_id: int, participant: str, amount: int | str) -> dict[str, Any]:
        """Delegate tokens to a participant of a task that is still joining."""
        pool = parsed_param("participant", participant, parse_address)
        value = parsed_param("amount", amount, parse_amount)
        with TaskErrors():
            await self._token.approve(self._registry.address, value)
            receipt = await self._registry.delegate(_task(task_id), pool, value)
            return {**await self._balance(task_id, pool, self._me), "tx_hash": _hex(receipt.tx_hash)}

    async def stake_withdraw(self, task_id: int, participant: str) -> dict[str, Any]:
        """Redeem all of this node's shares of a participant's pool (not while the task runs)."""
        pool = parsed_param("participant", participant, parse_address)
        with TaskErrors():
            before = await self._token.balance_of(self._me)
            receipt = await self._registry.withdraw(_task(task_id), pool)
            return {"task_id": task_id, "participant": to_checksum_address(pool),
                    "withdrawn": await self._token.balance_of(self._me) - before, "tx_hash": _hex(receipt.tx_hash)}

    async def stake_balances(self, task_id: int, participant: str, holder: str | None = None) -> dict[str, Any]:
        """A holder's (default this node's) shares of a participant's pool and their value."""
        pool = parsed_param("participant", participant, parse_address)
        who = self._me if holder is None else parsed_param("holder", holder, parse_address)
        with TaskErrors():
            return await self._balance(_task(task_id), pool, who)

    # -- the Arena's pools ---------------------------------------------------------------

    async def stake_arena_delegate(self, operator: str, amount: int | str) -> dict[str, Any]:
        """Add tokens to an operator's Arena pool: they back its next seats and share their
        rewards (less its commission) and slashes."""
        arena, op = self._arena_client(), self._operator(operator)
        value = parsed_param("amount", amount, parse_amount)
        with ArenaErrors():
            if await arena.token() != self._token.address:  # also fails here, unsigned, when no Arena is configured
                raise RPCError(ARENA_ERROR, f"the Arena at {to_checksum_address(arena.address)} takes another token than this node's")
            await self._token.approve(arena.address, value)
            minted = await ArenaPools(arena.client, arena.address).delegate(op, value)
            self.counters.incr("pool_delegations")
            return {**await arena_position(arena, op, self._me), "delegated": value, "minted_shares": minted}

    async def stake_arena_undelegate(self, operator: str, shares: int | str | None = None) -> dict[str, Any]:
        """Redeem shares (default all of this node's) of an operator's pool; their stake is
        withdrawable after the unbonding delay (a later undelegation restarts it for all)."""
        arena, op = self._arena_client(), self._operator(operator)
        pools = ArenaPools(arena.client, arena.address)
        with ArenaErrors():
            if shares is None:
                redeemed = await pools.shares_of(op, self._me)
                if redeemed == 0:
                    raise RPCError(ARENA_ERROR, f"this node holds no shares of {to_checksum_address(op)}'s pool")
            else:
                redeemed = parsed_param("shares", shares, parse_amount)
            amount = await pools.undelegate(op, redeemed)
            self.counters.incr("pool_undelegations")
            return {**await arena_position(arena, op, self._me), "undelegated_shares": redeemed, "amount": amount}

    async def stake_arena_withdraw(self) -> dict[str, Any]:
        """Once the unbonding delay has passed, release this node's undelegated stake and
        claim it (the claim pays everything the Arena owes this node)."""
        arena = self._arena_client()
        pools = ArenaPools(arena.client, arena.address)
        with ArenaErrors():
            unbonding = await pools.get_unbonding(self._me)
            if unbonding.amount == 0:
                raise RPCError(ARENA_ERROR, "nothing unbonding: undelegate first (stake_arena_undelegate)")
            head = await arena.client.block_number()
            if head + 1 < unbonding.release_block:  # a transaction sent now lands in head + 1
                raise RPCError(ARENA_ERROR, f"still unbonding: withdrawable from block {unbonding.release_block}, "
                                            f"{unbonding.release_block - head - 1} blocks from now")
            await pools.release_unbonded()
            claimed = await arena.claimable(self._me)
            receipt = await arena.claim()
            self.counters.incr("pool_withdrawals")
            return {"released": unbonding.amount, "claimed": claimed, "tx_hash": _hex(receipt.tx_hash)}

    async def stake_arena_balances(self, operator: str, holder: str | None = None) -> dict[str, Any]:
        """A holder's (default this node's) position in an operator's pool."""
        arena, op = self._arena_client(), parsed_param("operator", operator, parse_address)
        who = self._me if holder is None else parsed_param("holder", holder, parse_address)
        with ArenaErrors():
            return await arena_position(arena, op, who)

    async def stake_arena_positions(self, holder: str | None = None, from_block: int = 0) -> dict[str, Any]:
        """A holder's (default this node's) positions in every pool it delegated to since
        from_block (found in the Delegated events: a scan of the chain from there)."""
        arena = self._arena_client()
        who = self._me if holder is None else parsed_param("holder", holder, parse_address)
        pools = ArenaPools(arena.client, arena.address)
        with ArenaErrors():
            head = await arena.client.block_number()
            if not 0 <= from_block <= head:
                raise RPCError(INVALID_PARAMS, f"from_block must be in [0, {head}] (the head), got {from_block}")
            operators = await pools.delegated_to(who, from_block, head)
            if len(operators) > MAX_POSITIONS:
                raise RPCError(ARENA_ERROR, f"{len(operators)} pools since block {from_block}, over {MAX_POSITIONS}: "
                                            "give a later from_block, or an operator to stake_arena_balances")
            return {
                "holder": to_checksum_address(who), "from_block": from_block, "to_block": head,
                "positions": [await pool_share(pools, op, who) for op in operators], **await owed(arena, who),
            }

    async def stake_arena_pool(self, operator: str | None = None) -> dict[str, Any]:
        """An operator's (default this node's) pool: stake, shares, locked backing, commission."""
        arena = self._arena_client()
        op = self._me if operator is None else parsed_param("operator", operator, parse_address)
        with ArenaErrors():
            return await self._pool(arena, op)

    async def stake_arena_commission(self, commission_bps: int) -> dict[str, Any]:
        """Set this node's commission on its pool's part of its rewards; it applies from
        COMMISSION_DELAY_BLOCKS on, so delegators can leave before a raise bites."""
        arena = self._arena_client()
        if not 0 <= commission_bps <= MAX_COMMISSION_BPS:
            raise RPCError(INVALID_PARAMS, f"commission_bps must be in [0, {MAX_COMMISSION_BPS}], got {commission_bps}")
        pools = ArenaPools(arena.client, arena.address)
        with ArenaErrors():
            pending_from = (await pools.get_pool(self._me)).commission_from
            head = await arena.client.block_number()
            if head + 1 < pending_from:
                raise RPCError(ARENA_ERROR, f"commission change pending: the next change is allowed from block "
                                            f"{pending_from} (one change per {COMMISSION_DELAY_BLOCKS} blocks)")
            receipt = await pools.set_commission(commission_bps)
            self.counters.incr("commission_changes")
            return {**await self._pool(arena, self._me), "tx_hash": _hex(receipt.tx_hash)}

    # -- helpers -------------------------------------------------------------------------

    @property
    def _me(self) -> bytes:
        return self._token.client.address

    def _arena_client(self) -> Arena:
        if self._arena is None:
            raise RPCError(ARENA_ERROR, "this node has no Arena contract")
        return self._arena

    def _operator(self, operator: str) -> bytes:
        """An address to delegate to: not the zero address, not this node (its own stake is not a pool's)."""
        op = parsed_param("operator", operator, parse_address)
        if op in (bytes(20), self._me):
            raise RPCError(INVALID_PARAMS, f"operator {operator}: another node's address, not this node's or zero")
        return op

    async def _pool(self, arena: Arena, operator: bytes) -> dict[str, Any]:
        pools = ArenaPools(arena.client, arena.address)
        pool = await pools.get_pool(operator)
        return {
            "operator": to_checksum_address(operator), "stake": pool.stake, "total_shares": pool.total_shares,
            "locked": pool.locked, "free": pool.free, "commission_bps": await pools.commission(operator),
            "next_commission_bps": pool.next_commission_bps, "commission_from": pool.commission_from,
        }

    async def _balance(self, task_id: int, pool: bytes, holder: bytes) -> dict[str, Any]:
        return {
            "task_id": task_id, "participant": to_checksum_address(pool), "holder": to_checksum_address(holder),
            "shares": await self._registry.shares_of(task_id, pool, holder),
            "value": await self._registry.value_of(task_id, pool, holder),
        }
