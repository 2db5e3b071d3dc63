"""rpc_*: what this daemon answers."""

from __future__ import annotations

from typing import Any, ClassVar

from flockd.rpc.dispatch import Dispatcher


class RPCNamespace:
    namespace: ClassVar[str] = "rpc"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def rpc_methods(self) -> list[dict[str, Any]]:
        """Every method this daemon answers, with its param names and what it does."""
        return [
            {"name": m.name, "params": m.param_names, "doc": m.doc} for m in self._dispatcher.methods()
        ]
