"""chain_* methods: the head, sync state and a transaction's fate, on either kind of chain.

Everything is read through the same Ethereum JSON-RPC backend the contract client uses,
so the answers are the same for the embedded chain and an external node; only what an
external node cannot tell us (our mempool, sync with flockd peers) comes from the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flockd.chain.client.backends import ChainBackend, ChainError
from flockd.rpc.errors import RPCError

if TYPE_CHECKING:
    from flockd.chain.node.service import ChainService

CHAIN_ERROR = -32010
TX_HASH_HEX_LEN = 66


class ChainNamespace:
    namespace = "chain"

    def __init__(self, backend: ChainBackend, service: ChainService | None, *, confirmations: int) -> None:
        self._backend = backend
        self._service = service
        self._confirmations = confirmations

    async def chain_head(self) -> dict[str, Any]:
        """The newest block: number, hash and unix time."""
        block = await self._request("eth_getBlockByNumber", ["latest", False])
        return {"number": int(block["number"], 16), "hash": block["hash"], "time": int(block["timestamp"], 16)}

    async def chain_status(self) -> dict[str, Any]:
        """Which chain, how far along, whether we are catching up, what waits to be sealed."""
        head = await self.chain_head()
        status: dict[str, Any] = {
            "chain_id": int(await self._request("eth_chainId", []), 16),
            "head": head["number"],
            "head_hash": head["hash"],
            "confirmations": self._confirmations,
        }
        if self._service is None:
            status.update(kind="external", syncing=bool(await self._request("eth_syncing", [])))
            return status
        chain = self._service.chain
        sealer = chain.sealer_address
        status.update(
            kind="embedded",
            genesis_hash="0x" + chain.genesis_hash.hex(),
            syncing=self._service.syncing,
            authority=sealer is not None and sealer in chain.head_authorities,
            authorities=len(chain.head_authorities),
            pending_transactions=len(chain.mempool),
            peer_heads=dict(self._service.peer_heads),
            http_port=self._service.http_bound,
        )
        return status

    async def chain_tx(self, tx_hash: str) -> dict[str, Any]:
        """A transaction's status: unknown, pending, included (with confirmations) or failed."""
        if not (isinstance(tx_hash, str) and tx_hash.startswith("0x") and len(tx_hash) == TX_HASH_HEX_LEN):
            raise RPCError(-32602, "chain_tx: tx_hash must be 0x followed by 64 hex digits")
        try:
            int(tx_hash, 16)
        except ValueError:
            raise RPCError(-32602, "chain_tx: tx_hash must be 0x followed by 64 hex digits") from None
        receipt = await self._request("eth_getTransactionReceipt", [tx_hash])
        if receipt is None:
            tx = await self._request("eth_getTransactionByHash", [tx_hash])
            return {"hash": tx_hash, "status": "unknown" if tx is None else "pending"}
        head = (await self.chain_head())["number"]
        number = int(receipt["blockNumber"], 16)
        depth = head - number + 1
        ok = int(receipt["status"], 16) == 1
        return {
            "hash": tx_hash,
            "status": ("confirmed" if depth >= self._confirmations else "included") if ok else "failed",
            "block": number,
            "confirmations": depth,
            "gas_used": int(receipt["gasUsed"], 16),
        }

    async def _request(self, method: str, params: list[Any]) -> Any:
        try:
            return await self._backend.request(method, params)
        except ChainError as exc:
            raise RPCError(CHAIN_ERROR, f"chain backend: {type(exc).__name__}: {exc}") from None
