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

Adapters: flockd.chain.client.backends (the contract client's part) holds InProcessBackend
(EthAPI.handle on an EmbeddedChain, in a worker thread) and HttpBackend (external node).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


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


__all__ = [
    "ChainBackend",
    "ChainBackendError",
    "ChainRPCError",
    "ChainUnavailable",
]
