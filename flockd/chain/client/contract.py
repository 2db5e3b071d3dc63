"""ContractClient: contract calls and the transaction lifecycle over any ChainBackend.

One code path for the embedded chain and an external node; only the backend differs.
Lifecycle of `transact` (protocol/spec/client.md):

    estimate gas ("pending", + margin)   a revert here raises ContractRevert; nothing is sent
    fees from the chain                  EIP-1559: max fee 2 x base fee + tip; legacy if no base fee
    nonce                                a local counter per account, seeded from the chain's
                                         "pending" count; "nonce too low"/gap: resync and re-sign
    sign (eth-account), send
    wait                                 poll for a receipt; none after `resubmit_after`
                                         seconds: re-sign the same nonce with fees bumped
                                         `fee_bump_percent` (any version may be the one mined)
    confirmations                        `confirmations` blocks on top of the receipt's block,
                                         and the receipt still in the same block (no reorg)
    status 0                             ContractRevert(reason) — replayed as eth_call on the
                                         parent block to recover the reason

Views and estimates run against the "pending" block: like the next transaction, they see
the next block's number (anvil evaluates "latest" in the latest block's context; the
embedded chain always evaluates in the next block's).

One ContractClient per signing account: its nonce counter assumes nobody else signs for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
from eth_abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from flockd.chain.client.backends import (
    ChainBackend,
    ChainError,
    MalformedReply,
    RPCError,
    data,
    quantity,
)

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)
LOG_PAGE_BLOCKS = 2000  # blocks per eth_getLogs request (nodes cap ranges; ours at 10,000)
BlockTag = int | str


class ContractRevert(ChainError):
    """A call or transaction reverted; `reason` is its Error(string) message when it has one."""

    def __init__(self, reason: str, data: bytes = b"", receipt: TxReceipt | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data
        self.receipt = receipt


class TxTimeout(ChainError):
    """A transaction was not mined (or not confirmed) after every resubmission."""

    def __init__(self, message: str, hashes: Sequence[bytes]) -> None:
        super().__init__(message)
        self.hashes = tuple(hashes)


class TxRejected(ChainError):
    """The node refused the transaction (funds, gas, pool full, ...): `cause` says why."""

    def __init__(self, cause: RPCError) -> None:
        super().__init__(f"transaction refused: {cause.message}")
        self.cause = cause


class NoAccount(ChainError):
    """A transaction was asked of a read-only client."""


@dataclass(frozen=True)
class TxPolicy:
    confirmations: int = 0  # blocks on top of the tx's block (config [chain] confirmations)
    poll_interval: float = 0.5
    resubmit_after: float = 30.0  # seconds without a receipt before re-sending with higher fees
    max_resubmits: int = 4
    fee_bump_percent: int = 15  # a replacement must pay >= 10% more (geth, flockd's mempool)
    gas_margin_percent: int = 25
    nonce_retries: int = 3
    default_tip: int = 10**9  # when the node has no eth_maxPriorityFeePerGas
    timeout: float = 600.0  # wait() gives up (TxTimeout) after this long, mined or not


@dataclass(frozen=True)
class Log:
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True)
class TxReceipt:
    tx_hash: bytes
    block_number: int
    block_hash: bytes
    status: int
    gas_used: int
    effective_gas_price: int
    contract_address: bytes | None
    logs: tuple[Log, ...]


@dataclass(frozen=True)
class Fees:
    max_fee: int  # the gas price of a legacy tx
    tip: int
    legacy: bool = False

    def bumped(self, percent: int, floor: Fees) -> Fees:
        def up(old: int, now: int) -> int:
            return max(-(-old * (100 + percent) // 100), now)

        return Fees(up(self.max_fee, floor.max_fee), up(self.tip, floor.tip), self.legacy)


@dataclass
class PendingTx:
    """A sent transaction and every version of it (same nonce, rising fees)."""

    to: bytes | None
    data: bytes
    value: int
    gas: int
    nonce: int
    fees: Fees
    hashes: list[bytes] = field(default_factory=list)
    sent_at: float = 0.0
    resubmits: int = 0


class ContractClient:
    def __init__(self, backend: ChainBackend, account: LocalAccount | None = None, policy: TxPolicy | None = None) -> None:
        self.backend = backend
        self.account = account
        self.policy = policy or TxPolicy()
        self._chain_id: int | None = None
        self._next_nonce: int | None = None
        self._nonce_lock = trio.Lock()

    @property
    def address(self) -> bytes:
        if self.account is None:
            raise NoAccount("this client has no signing account")
        return bytes.fromhex(self.account.address[2:])

    # -- reads -----------------------------------------------------------------------------

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = quantity(await self.backend.request("eth_chainId", []), "chainId")
        return self._chain_id

    async def block_number(self) -> int:
        return quantity(await self.backend.request("eth_blockNumber", []), "blockNumber")

    async def block_hash(self, number: int) -> bytes:
        block = await self.backend.request("eth_getBlockByNumber", [hex(number), False])
        if block is None:
            raise ChainError(f"no block {number}")
        return data(_field(block, "hash"), "block hash", 32)

    async def balance(self, address: bytes) -> int:
        return quantity(await self.backend.request("eth_getBalance", [_addr(address), "latest"]), "balance")

    async def call(self, to: bytes, calldata: bytes, *, block: BlockTag = "pending", sender: bytes | None = None) -> bytes:
        """eth_call; ContractRevert when it reverts."""
        request = {"to": _addr(to), "data": _hex(calldata)}
        if sender is not None or self.account is not None:
            request["from"] = _addr(sender if sender is not None else self.address)
        try:
            return data(await self.backend.request("eth_call", [request, _tag(block)]), "eth_call result")
        except RPCError as exc:
            raise _as_revert(exc) from None

    async def estimate_gas(self, to: bytes | None, calldata: bytes, value: int = 0) -> int:
        request: dict[str, Any] = {"from": _addr(self.address), "data": _hex(calldata), "value": hex(value)}
        if to is not None:
            request["to"] = _addr(to)
        try:
            return quantity(await self.backend.request("eth_estimateGas", [request, "pending"]), "gas estimate")
        except RPCError as exc:
            raise _as_revert(exc) from None

    async def get_receipt(self, tx_hash: bytes) -> TxReceipt | None:
        reply = await self.backend.request("eth_getTransactionReceipt", [_hex(tx_hash)])
        return None if reply is None else _receipt(reply)

    async def get_logs(
        self, address: bytes, from_block: int, to_block: int, topics: Sequence[bytes | None] = ()
    ) -> list[Log]:
        """Logs of `address` in blocks [from_block, to_block], in pages the node accepts."""
        found: list[Log] = []
        for start in range(from_block, to_block + 1, LOG_PAGE_BLOCKS):
            end = min(to_block, start + LOG_PAGE_BLOCKS - 1)
            flt = {
                "address": _addr(address),
                "fromBlock": hex(start),
                "toBlock": hex(end),
                "topics": [None if t is None else _hex(t) for t in topics],
            }
            page = await self.backend.request("eth_getLogs", [flt])
            if not isinstance(page, list):
                raise MalformedReply(f"eth_getLogs: expected a list, got {type(page).__name__}")
            found.extend(_log(entry) for entry in page)
        return found

    # -- transactions ----------------------------------------------------------------------

    async def transact(self, to: bytes | None, calldata: bytes, *, value: int = 0, gas: int | None = None) -> TxReceipt:
        """Send and wait until mined and confirmed; ContractRevert when it reverts.
        `to=None` creates a contract. An explicit `gas` skips estimation."""
        return await self.wait(await self.send(to, calldata, value=value, gas=gas))

    async def send(self, to: bytes | None, calldata: bytes, *, value: int = 0, gas: int | None = None) -> PendingTx:
        """Estimate, price, sign and hand the transaction to the node (not waiting for it)."""
        if gas is None:
            estimate = await self.estimate_gas(to, calldata, value)
            gas = estimate + estimate * self.policy.gas_margin_percent // 100
        fees = await self.fees()
        async with self._nonce_lock:
            for _ in range(self.policy.nonce_retries + 1):
                if self._next_nonce is None:
                    self._next_nonce = await self._chain_nonce()
                tx = PendingTx(to, calldata, value, gas, self._next_nonce, fees)
                if await self._submit(tx):
                    self._next_nonce = tx.nonce + 1
                    return tx
                self._next_nonce = None  # somebody used our nonce: ask the chain again
        raise ChainError(f"nonce kept being taken after {self.policy.nonce_retries} resyncs")

    async def wait(self, tx: PendingTx) -> TxReceipt:
        """Until `tx` (any version of it) is mined with enough confirmations; resubmits with
        higher fees while it is not mined. ContractRevert when mined with status 0."""
        policy = self.policy
        give_up = trio.current_time() + policy.timeout
        while True:
            if trio.current_time() > give_up:
                raise TxTimeout(f"nonce {tx.nonce} not confirmed within {policy.timeout} s", tx.hashes)
            receipt = await self._find_receipt(tx)
            if receipt is None:
                if trio.current_time() - tx.sent_at >= policy.resubmit_after:
                    if tx.resubmits >= policy.max_resubmits:
                        raise TxTimeout(f"nonce {tx.nonce} not mined after {tx.resubmits} resubmissions", tx.hashes)
                    await self._resubmit(tx)
            elif await self.block_number() - receipt.block_number >= policy.confirmations:
                # the receipt must still be where we saw it: a reorg may have moved it
                again = await self.get_receipt(receipt.tx_hash)
                if again is not None and again.block_hash == receipt.block_hash:
                    if again.status != 1:
                        raise await self._revert_of(tx, again)
                    return again
            await trio.sleep(policy.poll_interval)

    async def fees(self) -> Fees:
        head = await self.backend.request("eth_getBlockByNumber", ["latest", False])
        base = head.get("baseFeePerGas") if isinstance(head, dict) else None
        if base is None:
            price = quantity(await self.backend.request("eth_gasPrice", []), "gasPrice")
            return Fees(price, price, legacy=True)
        base_fee = quantity(base, "baseFeePerGas")
        try:
            tip = quantity(await self.backend.request("eth_maxPriorityFeePerGas", []), "maxPriorityFeePerGas")
        except RPCError:
            tip = self.policy.default_tip
        return Fees(2 * base_fee + tip, tip)

    # -- internals -------------------------------------------------------------------------

    async def _chain_nonce(self) -> int:
        count = await self.backend.request("eth_getTransactionCount", [_addr(self.address), "pending"])
        return quantity(count, "transaction count")

    def _sign(self, tx: PendingTx, chain_id: int) -> tuple[bytes, bytes]:
        if self.account is None:
            raise NoAccount("this client has no signing account")
        fields: dict[str, Any] = {"chainId": chain_id, "nonce": tx.nonce, "gas": tx.gas, "value": tx.value, "data": tx.data}
        if tx.to is not None:
            fields["to"] = to_checksum_address(tx.to)
        if tx.fees.legacy:
            fields["gasPrice"] = tx.fees.max_fee
        else:
            fields.update(type=2, maxFeePerGas=tx.fees.max_fee, maxPriorityFeePerGas=tx.fees.tip)
        signed = self.account.sign_transaction(fields)
        return bytes(signed.raw_transaction), bytes(signed.hash)

    async def _submit(self, tx: PendingTx) -> bool:
        """Sign and send the current version of `tx`. False: the nonce is already used (or
        out of order) — the caller resyncs. TxRejected for any other refusal."""
        raw, tx_hash = self._sign(tx, await self.chain_id())
        try:
            await self.backend.request("eth_sendRawTransaction", [_hex(raw)])
        except RPCError as exc:
            kind = _send_error_kind(exc)
            if kind == "nonce":
                return False
            if kind != "known":
                raise TxRejected(exc) from None
        except ChainError:
            # No answer: the node may or may not hold it. Ask the chain for the nonce next time
            # rather than guess (a guessed nonce past a lost tx would wait forever in a gap).
            self._next_nonce = None
            raise
        tx.hashes.append(tx_hash)
        tx.sent_at = trio.current_time()
        return True

    async def _resubmit(self, tx: PendingTx) -> None:
        tx.resubmits += 1
        tx.fees = tx.fees.bumped(self.policy.fee_bump_percent, await self.fees())
        try:
            if not await self._submit(tx):
                # one of our versions was mined meanwhile (or the nonce went elsewhere):
                # keep polling; the next round trips resubmit_after again if none shows up
                tx.sent_at = trio.current_time()
                self._next_nonce = None
        except TxRejected as exc:
            if _send_error_kind(exc.cause) != "underpriced":
                raise
            tx.sent_at = trio.current_time()  # bump further next time

    async def _find_receipt(self, tx: PendingTx) -> TxReceipt | None:
        for tx_hash in reversed(tx.hashes):
            receipt = await self.get_receipt(tx_hash)
            if receipt is not None:
                return receipt
        return None

    async def _revert_of(self, tx: PendingTx, receipt: TxReceipt) -> ContractRevert:
        """Why a mined tx failed: replay it on its parent block's state (approximate when
        earlier txs of the same block changed what it read)."""
        request: dict[str, Any] = {
            "from": _addr(self.address), "data": _hex(tx.data), "value": hex(tx.value), "gas": hex(tx.gas),
        }
        if tx.to is not None:
            request["to"] = _addr(tx.to)
        try:
            await self.backend.request("eth_call", [request, hex(max(0, receipt.block_number - 1))])
        except RPCError as exc:
            revert = _as_revert(exc)
            if isinstance(revert, ContractRevert):
                return ContractRevert(revert.reason, revert.data, receipt)
        return ContractRevert("transaction failed (out of gas or reason not reproducible)", b"", receipt)


# -- encoding and decoding ---------------------------------------------------------------------


def _hex(raw: bytes) -> str:
    return "0x" + bytes(raw).hex()


def _addr(address: bytes) -> str:
    if len(address) != 20:
        raise ValueError(f"address must be 20 bytes, got {len(address)}")
    return to_checksum_address(address)


def _tag(block: BlockTag) -> str:
    return hex(block) if isinstance(block, int) else block


def _field(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise MalformedReply(f"expected an object with {name!r}, got {repr(obj)[:120]}")
    return obj[name]


def _log(entry: Any) -> Log:
    topics = _field(entry, "topics")
    if not isinstance(topics, list) or len(topics) > 4:
        raise MalformedReply("log topics must be a list of at most 4")
    return Log(
        address=data(_field(entry, "address"), "log address", 20),
        topics=tuple(data(t, "log topic", 32) for t in topics),
        data=data(_field(entry, "data"), "log data"),
        block_number=quantity(_field(entry, "blockNumber"), "log blockNumber"),
        block_hash=data(_field(entry, "blockHash"), "log blockHash", 32),
        tx_hash=data(_field(entry, "transactionHash"), "log transactionHash", 32),
        log_index=quantity(_field(entry, "logIndex"), "logIndex"),
    )


def _receipt(reply: Any) -> TxReceipt:
    logs = _field(reply, "logs")
    if not isinstance(logs, list):
        raise MalformedReply("receipt logs must be a list")
    created = _field(reply, "contractAddress") if isinstance(reply, dict) and "contractAddress" in reply else None
    return TxReceipt(
        tx_hash=data(_field(reply, "transactionHash"), "transactionHash", 32),
        block_number=quantity(_field(reply, "blockNumber"), "receipt blockNumber"),
        block_hash=data(_field(reply, "blockHash"), "receipt blockHash", 32),
        status=quantity(_field(reply, "status"), "status"),
        gas_used=quantity(_field(reply, "gasUsed"), "gasUsed"),
        effective_gas_price=quantity(reply.get("effectiveGasPrice", "0x0"), "effectiveGasPrice"),
        contract_address=None if created is None else data(created, "contractAddress", 20),
        logs=tuple(_log(entry) for entry in logs),
    )


def _send_error_kind(exc: RPCError) -> str:
    """Sort a sendRawTransaction refusal by its message: geth/anvil say "nonce too low",
    flockd's EthAPI says "NonceTooLow: ..."; squeezing out case and punctuation matches both."""
    text = re.sub(r"[^a-z]", "", exc.message.lower())
    if "noncetoolow" in text or "noncegap" in text or "nonceistoolow" in text:
        return "nonce"
    if "alreadyknown" in text or "knowntransaction" in text:
        return "known"
    if "underpriced" in text:
        return "underpriced"
    return "other"


def revert_reason(revert_data: bytes, fallback: str = "execution reverted") -> str:
    """The human reason in revert data: Error(string), Panic(uint256), else `fallback`."""
    try:
        if revert_data[:4] == ERROR_SELECTOR:
            return str(abi_decode(["string"], revert_data[4:])[0])
        if revert_data[:4] == PANIC_SELECTOR:
            return f"panic 0x{abi_decode(['uint256'], revert_data[4:])[0]:02x}"
    except Exception:  # eth_abi raises several types for truncated or bad data
        pass
    return fallback


def _as_revert(exc: RPCError) -> ChainError:
    """ContractRevert when the node reports a revert (code 3, or a message saying so), else
    the RPCError itself: a node that fails for another reason must not look like a revert."""
    if exc.code != 3 and "revert" not in exc.message.lower():
        return exc
    raw = exc.data.get("data") if isinstance(exc.data, dict) else exc.data
    try:
        revert_data = data(raw, "revert data") if raw is not None else b""
    except MalformedReply:
        revert_data = b""
    fallback = exc.message.removeprefix("execution reverted: ") or "execution reverted"
    return ContractRevert(revert_reason(revert_data, fallback), revert_data)
