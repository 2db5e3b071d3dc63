"""What a task runner needs of its node, and the small helpers its parts share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from flockd.chain.client.registry import Registry
from flockd.p2p.abc import P2PNetwork
from flockd.store import Store


@dataclass
class NodeContext:
    """What a task runner needs of its node. ``min_peers``: how many connected peers the
    node needs before it acts on new blocks (0 for a chain it cannot seal alone)."""

    network: P2PNetwork
    registry: Registry
    store: Store
    address: bytes
    vrf_secret: bytes
    confirmations: int
    min_peers: int = 1
    # Whether the chain's head is one to act on (the embedded chain: ChainService.head_synced,
    # false while it may still be a branch of our own that our peers' chain will replace).
    head_synced: Callable[[], Awaitable[bool]] | None = None
    # Returns once the head moves (the embedded chain: ChainService.wait_head_moved), so the
    # chain feed reads a block as it arrives; without it the feed polls alone.
    head_moved: Callable[[], Awaitable[None]] | None = None


def describe(exc: BaseException) -> str:
    """'Type: message' of the error itself, not of the exception groups around it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def hex0x(value: bytes) -> str:
    return "0x" + value.hex()
