"""Pending transactions: per-sender nonce runs, replacement by price, size limits. No chain access.

Each sender's pending txs form one gapless run of nonces starting at its account nonce, so
every pending tx is executable once its predecessors are: a tx that would leave a gap is
refused (NonceGap) rather than parked. A tx with the nonce of a pending one replaces it only
if it pays at least `replace_bump_percent` more per gas (both fee cap and tip), as geth does.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


class TxRejected(ValueError):
    """A transaction was refused; the subclass says why."""


class MalformedTx(TxRejected):
    """Not a decodable transaction of a supported type."""


class TxTooLarge(TxRejected):
    """The encoded transaction exceeds the size cap."""


class BadTxSignature(TxRejected):
    """The signature is invalid or does not recover a sender."""


class WrongChainId(TxRejected):
    """Signed for another chain, or without replay protection (pre-EIP-155)."""


class NonceTooLow(TxRejected):
    """The nonce was already used: a replay or a stale tx."""


class NonceGap(TxRejected):
    """The nonce skips ahead of the sender's next one."""


class InsufficientFunds(TxRejected):
    """The sender cannot pay value + gas * max fee (counting its pending txs)."""


class GasTooLow(TxRejected):
    """Gas below the intrinsic cost, or fee cap below the next block's base fee."""


class GasTooHigh(TxRejected):
    """Gas above the per-transaction cap (or the block gas limit, if lower): never valid."""


class ForbiddenTarget(TxRejected):
    """Creates a contract or calls a precompile directly: this chain runs only the code its
    genesis holds, so no block may carry such a transaction."""


class ReplacementUnderpriced(TxRejected):
    """Same sender and nonce as a pending tx, without a large enough price bump."""


class AlreadyKnown(TxRejected):
    """This exact transaction is already pending."""


class PoolFull(TxRejected):
    """The sender's or the whole pool's limit is reached."""


@dataclass(frozen=True)
class MempoolLimits:
    max_tx_bytes: int = 128 * 1024  # geth's txMaxSize
    max_per_sender: int = 64
    max_total: int = 4096
    replace_bump_percent: int = 10


@dataclass(frozen=True)
class PendingTx:
    hash: bytes
    sender: bytes
    nonce: int
    max_fee: int  # fee cap per gas (legacy: gas price)
    tip: int  # priority fee cap per gas (legacy: gas price)
    gas: int
    cost: int  # value + gas * max_fee: what the sender must hold
    raw: bytes
    tx: Any = field(compare=False)  # the decoded py-evm SignedTransactionAPI


class Mempool:
    """Not thread-safe on its own: EmbeddedChain calls it under its lock."""

    def __init__(self, limits: MempoolLimits | None = None) -> None:
        self.limits = limits or MempoolLimits()
        self._by_sender: dict[bytes, dict[int, PendingTx]] = {}
        self._by_hash: dict[bytes, PendingTx] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def get(self, tx_hash: bytes) -> PendingTx | None:
        return self._by_hash.get(tx_hash)

    def next_nonce(self, sender: bytes, state_nonce: int) -> int:
        return state_nonce + len(self._by_sender.get(sender, {}))

    def pending_cost(self, sender: bytes, below_nonce: int) -> int:
        return sum(p.cost for n, p in self._by_sender.get(sender, {}).items() if n < below_nonce)

    def add(self, ptx: PendingTx, state_nonce: int) -> PendingTx | None:
        """Admit `ptx` (already checked for signature, chain id, gas and funds); returns the tx it
        replaced, if any. Raises a TxRejected subclass."""
        if ptx.hash in self._by_hash:
            raise AlreadyKnown(f"transaction {ptx.hash.hex()} is already pending")
        if ptx.nonce < state_nonce:
            raise NonceTooLow(f"nonce {ptx.nonce} already used (account nonce {state_nonce})")
        run = self._by_sender.get(ptx.sender, {})
        next_nonce = state_nonce + len(run)
        if ptx.nonce > next_nonce:
            raise NonceGap(f"nonce {ptx.nonce} leaves a gap: next expected is {next_nonce}")
        old = run.get(ptx.nonce)
        if old is not None:
            self._check_bump(old, ptx)
        else:
            if len(run) >= self.limits.max_per_sender:
                raise PoolFull(f"sender has {len(run)} pending transactions, limit {self.limits.max_per_sender}")
            if len(self._by_hash) >= self.limits.max_total:
                raise PoolFull(f"pool holds {len(self._by_hash)} transactions, limit {self.limits.max_total}")
        if old is not None:
            del self._by_hash[old.hash]
        self._by_sender.setdefault(ptx.sender, {})[ptx.nonce] = ptx
        self._by_hash[ptx.hash] = ptx
        return old

    def _check_bump(self, old: PendingTx, new: PendingTx) -> None:
        factor = 100 + self.limits.replace_bump_percent
        if new.max_fee * 100 < old.max_fee * factor or new.tip * 100 < old.tip * factor:
            raise ReplacementUnderpriced(
                f"replacing nonce {old.nonce} needs fees {self.limits.replace_bump_percent}% above the pending tx's"
            )

    def ready(self, state_nonce: Callable[[bytes], int], base_fee: int) -> Iterator[PendingTx]:
        """Executable txs, best tip first across senders, nonce order within each sender.
        A sender whose next tx cannot pay the base fee waits (its later nonces too)."""
        heads: list[tuple[int, bytes, int]] = []
        for sender in self._by_sender:
            nonce = state_nonce(sender)
            head = self._by_sender[sender].get(nonce)
            if head is not None and head.max_fee >= base_fee:
                heads.append((-_effective_tip(head, base_fee), sender, nonce))
        heapq.heapify(heads)
        while heads:
            _, sender, nonce = heapq.heappop(heads)
            ptx = self._by_sender[sender][nonce]
            yield ptx
            after = self._by_sender[sender].get(nonce + 1)
            if after is not None and after.max_fee >= base_fee:
                heapq.heappush(heads, (-_effective_tip(after, base_fee), sender, nonce + 1))

    def remove(self, tx_hash: bytes) -> None:
        """Drop one tx and the sender's later ones (they would now leave a gap)."""
        ptx = self._by_hash.get(tx_hash)
        if ptx is None:
            return
        run = self._by_sender[ptx.sender]
        for nonce in [n for n in run if n >= ptx.nonce]:
            del self._by_hash[run.pop(nonce).hash]
        if not run:
            del self._by_sender[ptx.sender]

    def prune(self, state_nonce: Callable[[bytes], int]) -> int:
        """After a new head: drop txs whose nonce is now used (included, or replaced on chain).
        Returns how many were dropped."""
        dropped = 0
        for sender in list(self._by_sender):
            run = self._by_sender[sender]
            nonce = state_nonce(sender)
            for stale in [n for n in run if n < nonce]:
                del self._by_hash[run.pop(stale).hash]
                dropped += 1
            if run and min(run) != nonce:  # a gap opened (e.g. a reorg): the run is unusable
                for n in list(run):
                    del self._by_hash[run.pop(n).hash]
                    dropped += 1
            if not run:
                del self._by_sender[sender]
        return dropped


def _effective_tip(ptx: PendingTx, base_fee: int) -> int:
    return min(ptx.tip, ptx.max_fee - base_fee)
