"""node_*: who this daemon is, and stopping it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from flockd.rpc.abc import NodeControl
from flockd.rpc.dispatch import AfterReply


class NodeNamespace:
    namespace: ClassVar[str] = "node"

    def __init__(self, node: NodeControl, *, clock: Callable[[], float] = time.time) -> None:
        self._node = node
        self._clock = clock

    def node_info(self) -> dict[str, Any]:
        """Version, address, peer id, listen addresses and uptime of this daemon."""
        return {
            "version": self._node.version,
            "address": self._node.address,
            "peer_id": self._node.peer_id,
            "listen_addrs": self._node.listen_addrs(),
            "uptime_seconds": round(max(0.0, self._clock() - self._node.started_at), 3),
        }

    def node_status(self) -> dict[str, Any]:
        """starting, running or stopping, and the services up; answered from the moment the socket opens."""
        return {
            "state": self._node.state,
            "services": list(self._node.services_up),
            "uptime_seconds": round(max(0.0, self._clock() - self._node.started_at), 3),
        }

    def node_stop(self) -> AfterReply:
        """Stop the daemon; replies true first, then shuts down."""
        return AfterReply(True, self._node.request_stop)
