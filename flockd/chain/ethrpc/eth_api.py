"""The Ethereum JSON-RPC methods the contract client needs, answered by an EmbeddedChain.

Encodings follow the Ethereum JSON-RPC spec exactly (quantities as 0x hex without leading
zeros, data as 0x hex, null for unknown blocks/txs), so web3.py and other tools read it.

`EthAPI` is sans-I/O: `handle_body(bytes) -> bytes | None` takes one HTTP body (a request
or a batch) and returns the reply body. Its methods are synchronous and CPU-bound: a
server calls handle_body in a worker thread (see flockd.chain.ethrpc.eth_http).

eth_call and eth_estimateGas are capped at the block gas limit and at `call_timeout`
seconds (geth's --rpc.gascap and --rpc.evmtimeout), enforced inside the EVM
(flockd.chain.node.calls); they do not hold the chain's lock while they run.

Method names are Ethereum's camelCase (`eth_getBlockByNumber`), which flockd.rpc's
Dispatcher (lower_snake_case only) does not accept, so EthAPI keeps its own method table.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import rlp
from eth.abc import BlockAPI
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import ValidationError, to_checksum_address

from flockd import safejson
from flockd.chain.node.calls import CallAborted, CallBudget
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.mempool import TxRejected
from flockd.chain.node.records import (
    BlockRef,
    CallRequest,
    CallReverted,
    LogEntry,
    LogFilter,
    Receipt,
    UnknownBlock,
    effective_gas_price,
    max_fee_per_gas,
    tip_per_gas,
)
from flockd.logs import get_logger
from flockd.rpc.errors import RPCError

log = get_logger("flockd.chain.ethrpc.eth_api")

MAX_BATCH = 100
CALL_TIMEOUT = 5.0  # seconds one eth_call or eth_estimateGas may run (geth's default too)
_ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
SUGGESTED_TIP = 10**9  # 1 gwei: what eth_maxPriorityFeePerGas suggests
_TAGS = ("latest", "earliest", "pending", "safe", "finalized")

# JSON-RPC codes (Ethereum's conventions on top of JSON-RPC 2.0).
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700, -32600, -32601, -32602, -32603,
)
SERVER_ERROR = -32000  # geth: tx pool refusals, unknown block for a state query
EXECUTION_REVERTED = 3  # eth_call / eth_estimateGas revert, with the revert data


class EthRPCError(RPCError):
    """An Ethereum JSON-RPC error reply (same shape as the control socket's)."""


class EthAPI:
    namespace = "eth"

    def __init__(self, chain: EmbeddedChain, *, call_timeout: float = CALL_TIMEOUT) -> None:
        self.chain = chain
        self.call_timeout = call_timeout
        self._stopping = threading.Event()
        self.error_counts: Counter[int] = Counter()  # error replies by code, for the metrics endpoint
        self._counting = threading.Lock()  # handle() runs in worker threads
        self.methods: dict[str, Callable[..., Any]] = {
            name: getattr(self, name)
            for name in dir(self)
            if name.startswith(("eth_", "net_", "web3_")) and callable(getattr(self, name))
        }

    def abort_calls(self) -> None:
        """For a stopping node: running calls end at their next jump or call, later ones at once."""
        self._stopping.set()

    # -- transport-free JSON-RPC ---------------------------------------------------------

    def handle_body(self, body: bytes) -> bytes | None:
        """One HTTP body in, one out (None: only notifications, nothing to send)."""
        try:
            message = safejson.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _dump(self._error(None, EthRPCError(PARSE_ERROR, "parse error")))
        if isinstance(message, list):
            if not message or len(message) > MAX_BATCH:
                return _dump(self._error(None, EthRPCError(INVALID_REQUEST, f"batch must hold 1..{MAX_BATCH} requests")))
            replies = [r for r in (self.handle(m) for m in message) if r is not None]
            return _dump(replies) if replies else None
        reply = self.handle(message)
        return None if reply is None else _dump(reply)

    def handle(self, request: Any) -> dict[str, Any] | None:
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            return self._error(None, EthRPCError(INVALID_REQUEST, "not a JSON-RPC 2.0 request"))
        request_id = request.get("id")
        params = request.get("params", [])
        try:
            method = self.methods.get(request["method"])
            if method is None:
                raise EthRPCError(METHOD_NOT_FOUND, f"the method {request['method'][:80]} does not exist")
            if not isinstance(params, list):
                raise EthRPCError(INVALID_PARAMS, "params must be an array")
            try:
                inspect.signature(method).bind(*params)
            except TypeError as exc:
                raise EthRPCError(INVALID_PARAMS, f"{request['method']}: {exc}") from None
            result = method(*params)
        except EthRPCError as exc:
            reply = self._error(request_id, exc)
        except Exception as exc:  # a bug or an unforeseen input: answer, do not kill the server
            log.exception("eth rpc method failed", method=request["method"])
            reply = self._error(request_id, EthRPCError(INTERNAL_ERROR, f"{type(exc).__name__}: {str(exc)[:200]}"))
        else:
            reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return reply if "id" in request else None

    def _error(self, request_id: Any, exc: EthRPCError) -> dict[str, Any]:
        with self._counting:
            self.error_counts[exc.code] += 1
        return {"jsonrpc": "2.0", "id": request_id, "error": exc.to_json()}

    # -- chain ---------------------------------------------------------------------------

    def eth_chainId(self) -> str:
        return hex(self.chain.chain_id)

    def net_version(self) -> str:
        return str(self.chain.chain_id)

    def web3_clientVersion(self) -> str:
        return "flockd/embedded-py-evm"

    def eth_syncing(self) -> bool:
        return False

    def eth_blockNumber(self) -> str:
        return hex(self.chain.head.block_number)

    def eth_getBlockByNumber(self, ref: Any, full: Any = False) -> dict[str, Any] | None:
        try:
            header = self.chain.header_at(_block_ref(ref))
        except UnknownBlock:
            return None
        block = self.chain.get_block_by_hash(header.hash)
        return None if block is None else self._block_json(block, _bool(full))

    def eth_getBlockByHash(self, block_hash: Any, full: Any = False) -> dict[str, Any] | None:
        block = self.chain.get_block_by_hash(_data(block_hash, 32))
        return None if block is None else self._block_json(block, _bool(full))

    # -- state ---------------------------------------------------------------------------

    def eth_getTransactionCount(self, address: Any, ref: Any = "latest") -> str:
        return hex(_state(lambda: self.chain.nonce(_data(address, 20), _block_ref(ref))))

    def eth_getBalance(self, address: Any, ref: Any = "latest") -> str:
        return hex(_state(lambda: self.chain.balance(_data(address, 20), _block_ref(ref))))

    def eth_getCode(self, address: Any, ref: Any = "latest") -> str:
        return "0x" + _state(lambda: self.chain.code(_data(address, 20), _block_ref(ref))).hex()

    def eth_getStorageAt(self, address: Any, slot: Any, ref: Any = "latest") -> str:
        value = _state(lambda: self.chain.storage_at(_data(address, 20), _quantity(slot), _block_ref(ref)))
        return "0x" + value.to_bytes(32, "big").hex()

    def eth_call(self, call: Any, ref: Any = "latest") -> str:
        request = _call_request(call, self.chain.genesis.gas_limit)
        budget = self._budget()
        try:
            return "0x" + _state(lambda: self.chain.call(request, _block_ref(ref), budget)).hex()
        except CallReverted as exc:
            raise _revert_error(exc) from None
        except CallAborted as exc:
            raise self._aborted(exc) from None

    def eth_estimateGas(self, call: Any, ref: Any = "latest") -> str:
        # Capped where the pool's cap is: an estimate above it could never be sent.
        request = _call_request(call, self.chain.max_tx_gas)
        budget = self._budget()
        try:
            return hex(_state(lambda: self.chain.estimate_gas(request, _block_ref(ref), budget)))
        except CallReverted as exc:
            raise _revert_error(exc) from None
        except CallAborted as exc:
            raise self._aborted(exc) from None

    def _budget(self) -> CallBudget:
        return CallBudget.seconds(self.call_timeout, self._stopping)

    def _aborted(self, exc: CallAborted) -> EthRPCError:
        return EthRPCError(SERVER_ERROR, f"{exc} (timeout = {self.call_timeout:g}s)")

    # -- transactions ----------------------------------------------------------------------

    def eth_sendRawTransaction(self, raw: Any) -> str:
        try:
            return "0x" + self.chain.add_transaction(_data(raw)).hex()
        except TxRejected as exc:
            raise EthRPCError(SERVER_ERROR, f"{type(exc).__name__}: {exc}") from None

    def eth_getTransactionByHash(self, tx_hash: Any) -> dict[str, Any] | None:
        found = self.chain.get_transaction(_data(tx_hash, 32))
        if found is None:
            return None
        tx, block, index = found
        return _tx_json(tx, block, index)

    def eth_getTransactionReceipt(self, tx_hash: Any) -> dict[str, Any] | None:
        receipt = self.chain.get_receipt(_data(tx_hash, 32))
        return None if receipt is None else _receipt_json(receipt)

    def eth_getLogs(self, flt: Any) -> list[dict[str, Any]]:
        try:
            return [_log_json(entry) for entry in self.chain.get_logs(_log_filter(flt))]
        except UnknownBlock as exc:
            raise EthRPCError(SERVER_ERROR, str(exc)) from None
        except ValueError as exc:  # range too large
            raise EthRPCError(INVALID_PARAMS, str(exc)) from None

    # -- fees ------------------------------------------------------------------------------

    def eth_gasPrice(self) -> str:
        return hex(self.chain.base_fee() + SUGGESTED_TIP)

    def eth_maxPriorityFeePerGas(self) -> str:
        return hex(SUGGESTED_TIP)

    def eth_feeHistory(self, count: Any, newest: Any, percentiles: Any = None) -> dict[str, Any]:
        """Minimal: base fees and gas used ratios; every reward percentile is the suggested tip."""
        blocks = max(1, min(_quantity(count), 1024))
        try:
            last = self.chain.header_at(_block_ref(newest)).block_number
        except UnknownBlock as exc:
            raise EthRPCError(SERVER_ERROR, str(exc)) from None
        first = max(0, last - blocks + 1)
        headers = [self.chain.header_at(n) for n in range(first, last + 1)]
        next_fee = self.chain.base_fee() if last == self.chain.head.block_number else headers[-1].base_fee_per_gas
        result: dict[str, Any] = {
            "oldestBlock": hex(first),
            "baseFeePerGas": [hex(h.base_fee_per_gas or 0) for h in headers] + [hex(next_fee or 0)],
            "gasUsedRatio": [h.gas_used / h.gas_limit for h in headers],
        }
        if isinstance(percentiles, list) and percentiles:
            result["reward"] = [[hex(SUGGESTED_TIP)] * len(percentiles) for _ in headers]
        return result

    # -- JSON shapes -----------------------------------------------------------------------

    def _block_json(self, block: BlockAPI, full: bool) -> dict[str, Any]:
        h: Any = block.header  # a Prague header: has fields BlockHeaderAPI does not declare
        txs: list[Any] = [
            _tx_json(tx, block, i) if full else _hex(tx.hash) for i, tx in enumerate(block.transactions)
        ]
        return {
            "number": hex(h.block_number),
            "hash": _hex(h.hash),
            "parentHash": _hex(h.parent_hash),
            "nonce": _hex(h.nonce),
            "mixHash": _hex(h.mix_hash),
            "sha3Uncles": _hex(h.uncles_hash),
            "logsBloom": "0x" + h.bloom.to_bytes(256, "big").hex(),
            "transactionsRoot": _hex(h.transaction_root),
            "stateRoot": _hex(h.state_root),
            "receiptsRoot": _hex(h.receipt_root),
            "miner": to_checksum_address(h.coinbase),
            "difficulty": hex(h.difficulty),
            "totalDifficulty": "0x0",
            "extraData": _hex(h.extra_data),
            "size": hex(len(rlp.encode(block))),
            "gasLimit": hex(h.gas_limit),
            "gasUsed": hex(h.gas_used),
            "timestamp": hex(h.timestamp),
            "baseFeePerGas": hex(h.base_fee_per_gas or 0),
            "withdrawalsRoot": _hex(h.withdrawals_root),
            "withdrawals": [],
            "blobGasUsed": hex(h.blob_gas_used),
            "excessBlobGas": hex(h.excess_blob_gas),
            "parentBeaconBlockRoot": _hex(h.parent_beacon_block_root),
            "requestsHash": _hex(h.requests_hash),
            "transactions": txs,
            "uncles": [],
        }


# -- encoders --------------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


def _tx_json(tx: Any, block: BlockAPI | None, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hash": _hex(tx.hash),
        "type": hex(tx.type_id or 0),
        "nonce": hex(tx.nonce),
        "blockHash": None if block is None else _hex(block.hash),
        "blockNumber": None if block is None else hex(block.number),
        "transactionIndex": None if block is None else hex(index),
        "from": to_checksum_address(tx.sender),
        "to": to_checksum_address(tx.to) if tx.to else None,
        "value": hex(tx.value),
        "gas": hex(tx.gas),
        "input": _hex(tx.data),
        "r": hex(tx.r),
        "s": hex(tx.s),
        "chainId": hex(tx.chain_id or 0),
    }
    if tx.type_id is None:
        out.update(gasPrice=hex(tx.gas_price), v=hex(tx.v))
    else:
        out.update(
            v=hex(tx.y_parity),
            yParity=hex(tx.y_parity),
            accessList=[
                {"address": to_checksum_address(a), "storageKeys": ["0x" + k.to_bytes(32, "big").hex() for k in keys]}
                for a, keys in tx.access_list
            ],
        )
        base_fee = (block.header.base_fee_per_gas or 0) if block is not None else None
        price = effective_gas_price(tx, base_fee) if base_fee is not None else max_fee_per_gas(tx)
        out["gasPrice"] = hex(price)
        if tx.type_id == 2:
            out.update(maxFeePerGas=hex(max_fee_per_gas(tx)), maxPriorityFeePerGas=hex(tip_per_gas(tx)))
    return out


def _receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        "transactionHash": _hex(r.tx_hash),
        "transactionIndex": hex(r.tx_index),
        "blockHash": _hex(r.block_hash),
        "blockNumber": hex(r.block_number),
        "from": to_checksum_address(r.sender),
        "to": to_checksum_address(r.to) if r.to else None,
        "contractAddress": to_checksum_address(r.contract_address) if r.contract_address else None,
        "cumulativeGasUsed": hex(r.cumulative_gas_used),
        "gasUsed": hex(r.gas_used),
        "effectiveGasPrice": hex(r.effective_gas_price),
        "status": hex(r.status),
        "type": hex(r.tx_type),
        "logs": [_log_json(entry) for entry in r.logs],
        "logsBloom": "0x" + r.bloom.to_bytes(256, "big").hex(),
    }


def _log_json(e: LogEntry) -> dict[str, Any]:
    return {
        "address": to_checksum_address(e.address),
        "topics": [_hex(t) for t in e.topics],
        "data": _hex(e.data),
        "blockNumber": hex(e.block_number),
        "blockHash": _hex(e.block_hash),
        "transactionHash": _hex(e.tx_hash),
        "transactionIndex": hex(e.tx_index),
        "logIndex": hex(e.log_index),
        "removed": False,
    }


def _revert_error(exc: CallReverted) -> EthRPCError:
    """As geth: code 3, the Error(string) reason in the message, the raw revert data in data."""
    message = str(exc)
    if exc.data[:4] == _ERROR_STRING_SELECTOR:
        try:
            (reason,) = abi_decode(["string"], exc.data[4:])
            message = f"execution reverted: {reason}"
        except (DecodingError, UnicodeDecodeError):
            pass
    return EthRPCError(EXECUTION_REVERTED, message, "0x" + exc.data.hex())


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- decoders: strict, INVALID_PARAMS naming what was wrong ----------------------------------


def _bad(message: str) -> EthRPCError:
    return EthRPCError(INVALID_PARAMS, message)


def _quantity(value: Any) -> int:
    if isinstance(value, str) and value[:2] in ("0x", "0X") and 2 < len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise _bad(f"expected a hex quantity, got {str(value)[:80]!r}")


def _data(value: Any, length: int | None = None) -> bytes:
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) % 2 == 0:
        try:
            data = bytes.fromhex(value[2:])
        except ValueError:
            data = None
        if data is not None and (length is None or len(data) == length):
            return data
    what = "hex data" if length is None else f"{length} bytes of hex data"
    raise _bad(f"expected {what}, got {str(value)[:80]!r}")


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad("expected a boolean")
    return value


def _block_ref(value: Any) -> BlockRef:
    if isinstance(value, dict):  # EIP-1898
        if "blockHash" in value:
            return _data(value["blockHash"], 32)
        if "blockNumber" in value:
            return _block_ref(value["blockNumber"])
    if value in _TAGS:
        return value  # type: ignore[no-any-return]
    return _quantity(value)


def _state(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except UnknownBlock as exc:
        raise EthRPCError(SERVER_ERROR, f"header not found: {exc}") from None
    except ValidationError as exc:  # py-evm refuses the call itself (gas below intrinsic): geth's -32000
        raise EthRPCError(SERVER_ERROR, f"invalid call: {exc}") from None


def _call_request(call: Any, gas_cap: int) -> CallRequest:
    """The call's fields; gas above `gas_cap` (or none given) is `gas_cap`, as geth caps it."""
    if not isinstance(call, dict):
        raise _bad("call must be an object")
    price = call.get("gasPrice", call.get("maxFeePerGas"))
    return CallRequest(
        to=_data(call["to"], 20) if call.get("to") else None,
        sender=_data(call["from"], 20) if call.get("from") else bytes(20),
        data=_data(call.get("input", call.get("data", "0x"))),
        value=_quantity(call["value"]) if "value" in call else 0,
        gas=min(_quantity(call["gas"]), gas_cap) if "gas" in call else gas_cap,
        gas_price=_quantity(price) if price is not None else 0,
    )


def _log_filter(flt: Any) -> LogFilter:
    if not isinstance(flt, dict):
        raise _bad("filter must be an object")
    addresses = flt.get("address") or []
    addresses = [addresses] if isinstance(addresses, str) else addresses
    if not isinstance(addresses, list):
        raise _bad("address must be an address or a list of them")
    topics_in = flt.get("topics") or []
    if not isinstance(topics_in, list) or len(topics_in) > 4:
        raise _bad("topics must be a list of at most 4 entries")
    topics: list[tuple[bytes, ...] | None] = []
    for entry in topics_in:
        if entry is None:
            topics.append(None)
        elif isinstance(entry, list):
            topics.append(tuple(_data(t, 32) for t in entry))
        else:
            topics.append((_data(entry, 32),))
    return LogFilter(
        from_block=_block_ref(flt.get("fromBlock", "latest")),
        to_block=_block_ref(flt.get("toBlock", "latest")),
        block_hash=_data(flt["blockHash"], 32) if flt.get("blockHash") else None,
        addresses=tuple(_data(a, 20) for a in addresses),
        topics=tuple(topics),
    )
