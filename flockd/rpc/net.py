"""net_*: the daemon's libp2p peers."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

from multiaddr import Multiaddr

from flockd.p2p.abc import P2PError, P2PNetwork
from flockd.rpc.errors import INVALID_PARAMS, NETWORK_ERROR, RPCError
from flockd.rpc.params import clip, short_repr

MAX_ISOLATION_SECONDS = 3600.0


@runtime_checkable
class Isolatable(Protocol):
    """A network that can cut itself off for a while (the libp2p service can)."""

    async def isolate(self, seconds: float) -> int: ...


class NetNamespace:
    namespace: ClassVar[str] = "net"

    def __init__(self, network: P2PNetwork) -> None:
        self._network = network

    def net_peers(self) -> list[dict[str, Any]]:
        """Connected peers: peer id, address, multiaddrs, direction, latency."""
        peers = sorted(self._network.peers(), key=lambda p: p.peer_id)
        return [dataclasses.asdict(p) for p in peers]

    async def net_connect(self, multiaddr: str) -> dict[str, str]:
        """Dial a peer by multiaddr (with its /p2p/ id); returns its peer id."""
        _check_multiaddr(multiaddr)
        try:
            peer_id = await self._network.connect(multiaddr)
        except P2PError as exc:
            raise RPCError(NETWORK_ERROR, f"net_connect: {exc}") from None
        return {"peer_id": peer_id}

    async def net_isolate(self, seconds: float) -> dict[str, Any]:
        """Chaos testing: drop every peer and refuse connections both ways for `seconds`
        (at most an hour); peers are dialled again as usual afterwards."""
        if not 0 < seconds <= MAX_ISOLATION_SECONDS:
            raise RPCError(INVALID_PARAMS, f"net_isolate: seconds must be in (0, {MAX_ISOLATION_SECONDS:g}]")
        if not isinstance(self._network, Isolatable):
            raise RPCError(NETWORK_ERROR, "net_isolate: this network cannot isolate itself")
        try:
            dropped = await self._network.isolate(float(seconds))
        except P2PError as exc:
            raise RPCError(NETWORK_ERROR, f"net_isolate: {exc}") from None
        return {"dropped": dropped, "seconds": seconds}


def _check_multiaddr(text: str) -> None:
    try:
        protocols = [p.name for p in Multiaddr(text).protocols()]
    except Exception as exc:  # the multiaddr package raises several unrelated types on bad input
        reason = str(exc).split(" (string:")[0]
        raise RPCError(INVALID_PARAMS, f"net_connect: invalid multiaddr: {clip(reason, 200)}") from None
    if len(protocols) < 2 or protocols[-1] != "p2p":
        # Caught here, so a malformed address is -32602 and only a failed dial is -32000.
        raise RPCError(INVALID_PARAMS, f"net_connect: multiaddr {short_repr(text)} must end in /p2p/<peer id>")
