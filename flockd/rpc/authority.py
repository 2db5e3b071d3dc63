"""authority_*: the embedded chain's sealers, the open votes, and this node's own vote.

A vote is a transaction signed by this node's key (protocol/spec/chain.md, "Authority
votes"); `authority_propose` returns once it has the node's usual confirmations, saying
whether it decided the change. What the chain would refuse is refused here first, with
the reason, before anything is signed.
"""

from __future__ import annotations

from typing import Any, Literal

import trio
from eth_utils import to_checksum_address

from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractClient
from flockd.chain.node.authority import VOTE_ADDRESS, VOTE_GAS, BadVote, Snapshot, Vote, encode_vote
from flockd.chain.node.embedded import EmbeddedChain
from flockd.rpc.account import _address
from flockd.rpc.errors import INVALID_PARAMS, RPCError

AUTHORITY_ERROR = -32040
MAX_SEALERS_LISTED = 256


class AuthorityNamespace:
    namespace = "authority"

    def __init__(self, chain: EmbeddedChain, client: ContractClient) -> None:
        self._chain = chain
        self._client = client

    async def authority_list(self) -> dict[str, Any]:
        """Who seals the next block (in turn order), and how many votes decide a change."""
        head, snapshot = await trio.to_thread.run_sync(self._head_snapshot)
        me = self._client.address
        return {
            "head": head,
            "authorities": [to_checksum_address(a) for a in snapshot.authorities],
            "votes_needed": snapshot.needed(),
            "this_node": to_checksum_address(me),
            "this_node_seals": me in snapshot.authorities,
        }

    async def authority_votes(self) -> list[dict[str, Any]]:
        """Open proposals on the head: candidate, add or remove, votes so far and needed."""
        _, snapshot = await trio.to_thread.run_sync(self._head_snapshot)
        return snapshot.pending()

    async def authority_propose(self, address: str, action: Literal["add", "remove"]) -> dict[str, Any]:
        """Vote, as this node's authority, to add an address to the sealers or remove one."""
        candidate = _address("address", address)
        vote = Vote(self._client.address, candidate, action == "add")
        _, snapshot = await trio.to_thread.run_sync(self._head_snapshot)
        try:
            snapshot.check(vote)
        except BadVote as exc:
            raise RPCError(AUTHORITY_ERROR, f"the chain would refuse this vote: {exc}") from None
        try:
            receipt = await self._client.transact(VOTE_ADDRESS, encode_vote(candidate, vote.add), gas=VOTE_GAS)
        except ChainError as exc:
            raise RPCError(AUTHORITY_ERROR, f"vote failed: {type(exc).__name__}: {exc}") from None
        after = await trio.to_thread.run_sync(self._chain.authorities, receipt.block_number)
        decided = (candidate in after.authorities) == vote.add
        return {
            "candidate": to_checksum_address(candidate),
            "action": action,
            "tx_hash": "0x" + receipt.tx_hash.hex(),
            "block": receipt.block_number,
            "decided": decided,
            # the change governs the blocks after the deciding one
            "effective_from_block": receipt.block_number + 1 if decided else None,
            "votes": after.tally(candidate, vote.add) if not decided else None,
            "votes_needed": after.needed() if not decided else None,
        }

    async def authority_sealers(self, blocks: int = 16) -> list[dict[str, Any]]:
        """Who sealed each of the last `blocks` canonical blocks (at most 256), newest first."""
        if type(blocks) is not int or not 1 <= blocks <= MAX_SEALERS_LISTED:
            raise RPCError(INVALID_PARAMS, f"blocks: a whole number from 1 to {MAX_SEALERS_LISTED}")
        return await trio.to_thread.run_sync(self._recent_sealers, blocks)

    def _recent_sealers(self, blocks: int) -> list[dict[str, Any]]:
        with self._chain.consistent_view():
            head = self._chain.head.block_number
            headers = [self._chain.header_at(n) for n in range(head, max(0, head - blocks), -1)]
        # Import checks coinbase == the seal's signer, so the coinbase names the sealer.
        return [{"block": h.block_number, "hash": "0x" + h.hash.hex(), "sealer": to_checksum_address(h.coinbase)} for h in headers]

    def _head_snapshot(self) -> tuple[int, Snapshot]:
        with self._chain.consistent_view():
            return self._chain.head.block_number, self._chain.authorities()
