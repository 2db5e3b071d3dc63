"""What the RPC namespaces need of the daemon, as Protocols the Node satisfies structurally."""

from __future__ import annotations

from typing import Protocol

from flockd.p2p.abc import P2PNetwork

__all__ = ["NodeControl", "P2PNetwork"]


class NodeControl(Protocol):
    """The node_* namespace's view of the daemon."""

    @property
    def version(self) -> str: ...

    @property
    def address(self) -> str: ...  # Ethereum address, checksummed

    @property
    def peer_id(self) -> str: ...

    @property
    def started_at(self) -> float: ...  # unix time

    @property
    def state(self) -> str: ...  # starting | running | stopping

    @property
    def services_up(self) -> list[str]: ...  # in start order

    def listen_addrs(self) -> list[str]: ...

    def request_stop(self) -> None:
        """Begin an orderly shutdown; returns at once."""
