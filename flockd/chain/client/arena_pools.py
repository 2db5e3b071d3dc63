"""Typed calls for the Arena's delegation pools: back an operator (a trainer or a
validator) with stake, undelegate after the unbonding delay, collect rewards, and the
operator's commission.

Like `arena.py`: each method is one ABI call through a ContractClient, results are frozen
dataclasses with addresses as 20-byte `bytes`. Rules (what counts toward a validator's
weight, how a reward is split): docs/arena.md, "Delegation pools".
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_canonical_address

from flockd.chain.client.artifacts import ARENA, event_topic, load
from flockd.chain.client.contract import ContractClient, TxReceipt
from flockd.chain.client.registry import _one
from flockd.chain.client.view_checks import CheckedContract, within

# The contract's constants (contracts/Arena.vy).
MAX_COMMISSION_BPS = 5000
UNBONDING_BLOCKS = 1024
COMMISSION_DELAY_BLOCKS = 2048
REWARD_PER_SHARE_ONE = 2**64  # fixed point of Pool.reward_per_share


@dataclass(frozen=True)
class Pool:
    stake: int  # delegated tokens, rewards kept apart
    total_shares: int
    locked: int  # backing of unfinalised competitions: cannot be undelegated
    reward_per_share: int  # fixed point REWARD_PER_SHARE_ONE; 1 (not 0) from the first delegation on
    commission_bps: int
    next_commission_bps: int
    commission_from: int  # the block from which next_commission_bps applies

    @property
    def free(self) -> int:
        """What may be undelegated now, and what the operator's next seat is backed by."""
        return self.stake - self.locked

    def value_of(self, shares: int) -> int:
        """The stake `shares` redeem for now."""
        return shares * self.stake // self.total_shares if self.total_shares else 0


@dataclass(frozen=True)
class Unbonding:
    amount: int
    release_block: int  # release_unbonded() succeeds from this block on


class ArenaPools(CheckedContract):
    """The delegation side of the Arena contract at `address`."""

    def __init__(self, client: ContractClient, address: bytes) -> None:
        super().__init__(client, address, load(ARENA))

    # -- transactions ------------------------------------------------------------------------

    async def delegate(self, operator: bytes, amount: int) -> int:
        """The shares minted (approve `amount` to the arena first)."""
        receipt = await self.transact("delegate", operator, amount)
        return int(_one(self.decode_events(receipt.logs), "Delegated").args["shares"])

    async def undelegate(self, operator: bytes, shares: int) -> int:
        """Start unbonding `shares` of `operator`'s pool; the amount they redeemed."""
        receipt = await self.transact("undelegate", operator, shares)
        return int(_one(self.decode_events(receipt.logs), "Undelegated").args["amount"])

    async def release_unbonded(self) -> TxReceipt:
        """Move unbonded stake to `claimable` (then Arena.claim pays it)."""
        return await self.transact("release_unbonded")

    async def collect(self, operator: bytes) -> TxReceipt:
        """Move the caller's rewards from `operator`'s pool to `claimable`."""
        return await self.transact("collect", operator)

    async def set_commission(self, commission_bps: int) -> TxReceipt:
        return await self.transact("set_commission", commission_bps)

    # -- views -------------------------------------------------------------------------------

    async def get_pool(self, operator: bytes) -> Pool:
        pool = Pool(*await self.view("get_pool", operator))
        within("pool.locked", pool.locked, 0, pool.stake)
        within("pool.commission_bps", pool.commission_bps, 0, MAX_COMMISSION_BPS)
        within("pool.next_commission_bps", pool.next_commission_bps, 0, MAX_COMMISSION_BPS)
        return pool

    async def commission(self, operator: bytes) -> int:
        """The commission in force for a reward paid in the next block."""
        return within("commission", int(await self.view("commission", operator)), 0, MAX_COMMISSION_BPS)

    async def shares_of(self, operator: bytes, holder: bytes) -> int:
        return int(await self.view("shares_of", operator, holder))

    async def pending_rewards(self, operator: bytes, holder: bytes) -> int:
        return int(await self.view("pending_rewards", operator, holder))

    async def get_unbonding(self, holder: bytes) -> Unbonding:
        return Unbonding(*await self.view("get_unbonding", holder))

    async def delegated_to(self, holder: bytes, from_block: int, to_block: int) -> list[bytes]:
        """The operators `holder` delegated to in blocks [from_block, to_block], first
        delegation first (from the Delegated events: the contract keeps no list)."""
        holder_topic = bytes(12) + holder
        topics = [event_topic(self.artifact.event("Delegated")), None, holder_topic]
        logs = await self.client.get_logs(self.address, from_block, to_block, topics)
        operators: dict[bytes, None] = {}
        for event in self.decode_events(logs):
            # a node may ignore the topic filter: keep only what the log itself says
            if event.name == "Delegated" and to_canonical_address(event.args["delegator"]) == holder:
                operators[to_canonical_address(event.args["operator"])] = None
        return list(operators)

    async def backing(self, competition_id: int, operator: bytes) -> int:
        """The pool stake locked to `operator`'s seat in the competition."""
        return int(await self.view("backing", competition_id, operator))
