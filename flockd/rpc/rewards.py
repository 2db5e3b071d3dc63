"""rewards_*: rewards a delegator pulls from an operator's Arena pool (docs/arena.md,
"Delegation").

    rewards_pending  what a holder's shares of an operator's pool have earned and not
                     yet collected, and what the Arena already owes it
    rewards_claim    collect a pool's rewards (when an operator is given) and claim
                     everything the Arena owes this node, in tokens

A pool's rewards accrue per share when a competition pays its operator; nothing is pushed:
the delegator collects them. The task registry's pools pay rewards with the stake, through
stake_withdraw.
"""

from __future__ import annotations

from typing import Any

from eth_utils import to_checksum_address

from flockd.chain.client.arena import Arena
from flockd.chain.client.arena_pools import ArenaPools
from flockd.chain.node.genesis import parse_address
from flockd.rpc.arena import ARENA_ERROR
from flockd.rpc.arena import _ArenaErrors as ArenaErrors
from flockd.rpc.errors import RPCError
from flockd.rpc.stake import parsed_param
from flockd.stats import Counters


class RewardsNamespace:
    namespace = "rewards"

    def __init__(self, arena: Arena, counters: Counters | None = None) -> None:
        self._arena = arena
        self._pools = ArenaPools(arena.client, arena.address)
        self.counters = counters or Counters()

    async def rewards_pending(self, operator: str, holder: str | None = None) -> dict[str, Any]:
        """Uncollected rewards of a holder's (default this node's) shares of an operator's pool."""
        op = parsed_param("operator", operator, parse_address)
        who = self._arena.client.address if holder is None else parsed_param("holder", holder, parse_address)
        with ArenaErrors():
            return {
                "operator": to_checksum_address(op), "holder": to_checksum_address(who),
                "pending": await self._pools.pending_rewards(op, who), "claimable": await self._arena.claimable(who),
            }

    async def rewards_claim(self, operator: str | None = None) -> dict[str, Any]:
        """Collect this node's rewards from an operator's pool (if given), then claim all the
        Arena owes this node: pool rewards, released stakes, competition payouts."""
        op = None if operator is None else parsed_param("operator", operator, parse_address)
        me = self._arena.client.address
        with ArenaErrors():
            collected = 0
            if op is not None:
                collected = await self._pools.pending_rewards(op, me)
                await self._pools.collect(op)
            claimed = await self._arena.claimable(me)
            if claimed == 0:
                raise RPCError(ARENA_ERROR, "nothing to claim")
            receipt = await self._arena.claim()
            self.counters.incr("rewards_claims")
            return {"collected": collected, "claimed": claimed, "tx_hash": "0x" + receipt.tx_hash.hex()}
