"""What EmbeddedChain hands out and takes in: results, receipts, logs, call requests, fee math.

Plain frozen dataclasses with bytes and ints (no py-evm objects), so eth_api can turn them
into JSON and other layers can hold them without touching the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from eth_bloom import BloomFilter

BlockTag = Literal["latest", "earliest", "pending", "safe", "finalized"]
BlockRef = int | bytes | BlockTag  # number, 32-byte hash, or tag


@dataclass(frozen=True)
class ImportResult:
    status: Literal["imported", "known", "missing_parent"]
    block_hash: bytes
    number: int
    new_head: bool = False  # the block is now our canonical head
    missing_parent: bytes | None = None  # set when status == "missing_parent": fetch it
    reorged: int = 0  # blocks that left the canonical chain


class CallReverted(Exception):
    """eth_call / estimate_gas: the EVM reverted or failed; `data` is the revert data."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class UnknownBlock(LookupError):
    """A block reference (number, hash) that this node does not have."""


@dataclass(frozen=True)
class CallRequest:
    """An eth_call / eth_estimateGas request (every field optional, as in JSON-RPC)."""

    to: bytes | None = None
    sender: bytes = bytes(20)
    data: bytes = b""
    value: int = 0
    gas: int | None = None
    gas_price: int = 0


@dataclass(frozen=True)
class Receipt:
    tx_hash: bytes
    tx_index: int
    block_hash: bytes
    block_number: int
    sender: bytes
    to: bytes | None
    contract_address: bytes | None
    status: int  # 1 success, 0 reverted/failed
    gas_used: int  # this tx's own (py-evm stores it cumulative: trap 2)
    cumulative_gas_used: int
    effective_gas_price: int
    tx_type: int
    logs: tuple[LogEntry, ...]
    bloom: int


@dataclass(frozen=True)
class LogEntry:
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    tx_index: int
    log_index: int  # position in the block


@dataclass(frozen=True)
class LogFilter:
    from_block: BlockRef = "latest"
    to_block: BlockRef = "latest"
    block_hash: bytes | None = None  # if set, only this block (from/to ignored)
    addresses: tuple[bytes, ...] = ()  # any of these; empty = any address
    topics: tuple[tuple[bytes, ...] | None, ...] = ()  # per position: any of these; None = any

    def may_match_bloom(self, bloom: int) -> bool:
        """False when the block's bloom proves no log can match (skip its receipts)."""
        b = BloomFilter(bloom)
        if self.addresses and not any(a in b for a in self.addresses):
            return False
        return all(alts is None or any(t in b for t in alts) for alts in self.topics)

    def matches(self, entry: LogEntry) -> bool:
        if self.addresses and entry.address not in self.addresses:
            return False
        if len(self.topics) > len(entry.topics) and any(t is not None for t in self.topics[len(entry.topics) :]):
            return False
        return all(alts is None or entry.topics[i] in alts for i, alts in enumerate(self.topics[: len(entry.topics)]))


# Fees per gas. Legacy and access-list txs pay their gas price; dynamic-fee txs pay
# min(fee cap, base fee + tip).


def max_fee_per_gas(tx: Any) -> int:
    return int(tx.max_fee_per_gas if tx.type_id == 2 else tx.gas_price)


def tip_per_gas(tx: Any) -> int:
    return int(tx.max_priority_fee_per_gas if tx.type_id == 2 else tx.gas_price)


def effective_gas_price(tx: Any, base_fee: int) -> int:
    return min(max_fee_per_gas(tx), base_fee + tip_per_gas(tx))
