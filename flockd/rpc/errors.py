"""JSON-RPC error codes and the one exception that carries them, on both ends of the socket."""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# flockd's application codes, in the range JSON-RPC reserves for servers (-32000..-32099).
NETWORK_ERROR = -32000  # a p2p operation failed (peer unreachable, dial refused)
SERVER_BUSY = -32001  # the control socket already serves max_clients connections
NODE_NOT_READY = -32002  # the daemon is starting or stopping: only node_status, node_stop, rpc_methods answer


class RPCError(Exception):
    """An error reply: raised by a method to answer with it, and by the client on receiving one."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"
