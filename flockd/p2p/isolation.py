"""Cutting a node off the mesh for a while (`net_isolate`), for the chaos testnet.

libp2p asks its connection gate before every dial and every inbound connection, so one
gate that says no until a deadline refuses both directions, whoever starts them; the
connections already open are closed by the caller.
"""

from __future__ import annotations

import trio
from libp2p.network.connection_gate import ConnectionGate
from multiaddr import Multiaddr


class IsolationGate(ConnectionGate):
    """Refuses every address until `until` (trio clock), then asks the gate it replaced."""

    def __init__(self, inner: ConnectionGate, until: float) -> None:
        super().__init__()
        self.inner: ConnectionGate = inner.inner if isinstance(inner, IsolationGate) else inner
        self.until = until

    def isolated(self) -> bool:
        return trio.current_time() < self.until

    async def is_allowed(self, remote_addr: Multiaddr) -> bool:
        return not self.isolated() and await self.inner.is_allowed(remote_addr)
