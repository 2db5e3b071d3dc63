"""The seam between the contract client and a chain: Ethereum JSON-RPC, in process or over HTTP.

The contract client (typed calls, event decoding, signing, nonces, resubmission) speaks only
`ChainBackend.request(method, params)` with standard Ethereum JSON-RPC methods and
encodings, so one code path serves both the embedded chain and an external node (anvil,
any EVM network). Methods it may use: eth_chainId, eth_blockNumber, eth_getBlockByNumber,
eth_getBlockByHash, eth_getTransactionCount, eth_getBalance, eth_getCode, eth_getStorageAt,
eth_sendRawTransaction, eth_call, eth_estimateGas, eth_getTransactionReceipt,
eth_getTransactionByHash, eth_getLogs, eth_gasPrice, eth_maxPriorityFeePerGas, eth_feeHistory.

Results are the JSON-RPC `result` values (hex strings, dicts, None). An error reply raises
ChainRPCError with the node's code/message/data (code 3 + data = a revert); a node that
cannot be reached raises ChainUnavailable. Block tags: "latest", "safe"/"finalized"
(on the embedded chain: head - confirmations), numbers as hex.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from typing import Any

import httpx
import trio

from flockd.chain.eth_api import EthAPI


class ChainBackendError(Exception):
    """A chain request failed."""


class ChainRPCError(ChainBackendError):
    """The node answered with a JSON-RPC error (code 3 with `data` = a revert)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class ChainUnavailable(ChainBackendError):
    """The node could not be reached or answered something that is not JSON-RPC."""


class ChainBackend(ABC):
    @abstractmethod
    async def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call; returns its result or raises a ChainBackendError."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


class InProcessBackend(ChainBackend):
    """The embedded chain, through EthAPI, in a worker thread (chain work is CPU-bound)."""

    def __init__(self, api: EthAPI) -> None:
        self.api = api

    async def request(self, method: str, params: list[Any]) -> Any:
        reply = await trio.to_thread.run_sync(
            self.api.handle, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        )
        return _result(reply)

    async def aclose(self) -> None:
        pass  # nothing held


class HTTPBackend(ChainBackend):
    """An external node (anvil, geth, ...) or another flockd's --chain-http endpoint."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout)
        self._ids = itertools.count(1)

    async def request(self, method: str, params: list[Any]) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self._client.post(self.url, json=body)
            reply = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None
        return _result(reply)

    async def aclose(self) -> None:
        await self._client.aclose()


def _result(reply: Any) -> Any:
    if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
        raise ChainUnavailable(f"not a JSON-RPC reply: {str(reply)[:200]}")
    error = reply.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise ChainUnavailable(f"malformed JSON-RPC error: {str(error)[:200]}")
        raise ChainRPCError(int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
    return reply["result"]


__all__ = [
    "ChainBackend",
    "ChainBackendError",
    "ChainRPCError",
    "ChainUnavailable",
    "HTTPBackend",
    "InProcessBackend",
]
