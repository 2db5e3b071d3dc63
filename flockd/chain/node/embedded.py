"""EmbeddedChain: one node's py-evm PoA chain on disk — admit txs, seal blocks, import blocks, read.

Threading: every public method takes one lock, so an instance may be called from any thread
(the daemon calls it through `trio.to_thread.run_sync`); calls run one at a time. Work is
CPU-bound and synchronous: a seal or import of a full block takes ~0.1-0.2 s.

Untrusted input (raw txs, raw blocks) is rejected with a TxRejected or BlockRejected subclass
naming the reason; nothing from a peer is trusted before its seal and turn are checked, and
the (costly) re-execution runs only after those cheap checks pass.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import rlp
from eth._utils.address import generate_contract_address
from eth.abc import BlockAPI, BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI, StateAPI
from eth.db.atomic import AtomicDB
from eth.exceptions import HeaderNotFound, TransactionNotFound, VMError
from eth.vm.spoof import SpoofTransaction
from eth_keys.datatypes import PrivateKey
from eth_typing import Address, BlockNumber, Hash32
from eth_utils import ValidationError, to_checksum_address
from rlp.codec import consume_length_prefix

from flockd.chain.node.authority import Snapshot
from flockd.chain.node.calls import CallBudget, estimate_call_gas, execute_call
from flockd.chain.node.db import SqliteDB
from flockd.chain.node.genesis import Genesis, GenesisMismatch
from flockd.chain.node.mempool import (
    BadTxSignature,
    ForbiddenTarget,
    GasTooHigh,
    GasTooLow,
    InsufficientFunds,
    MalformedTx,
    Mempool,
    MempoolLimits,
    PendingTx,
    TxRejected,
    TxTooLarge,
    WrongChainId,
)
from flockd.chain.node.poa import (
    BadHeaderField,
    BadTimestamp,
    BlockRejected,
    ChainDBSource,
    FlockChainBase,
    FutureBlock,
    PoARules,
    UnknownSigner,
    build_chain_class,
    create_chain,
    recover_signer,
    sign_header,
)
from flockd.chain.node.records import (
    BlockRef,
    CallRequest,
    CallReverted,
    ImportResult,
    LogEntry,
    LogFilter,
    Receipt,
    UnknownBlock,
    effective_gas_price,
    max_fee_per_gas,
    tip_per_gas,
)
from flockd.chain.node.sealer import build_block

MAX_BLOCK_BYTES = 4 * 1024 * 1024
MAX_HEADER_BYTES = 1024  # a Prague header with a 97-byte extra_data is ~650 bytes
BLOCK_CACHE_SIZE = 64  # decoded blocks (and their receipts) kept for reads
MAX_LOG_RANGE = 10_000  # blocks one get_logs may scan
SUPPORTED_TX_TYPES = (None, 1, 2)  # legacy (EIP-155), access list, dynamic fee; no blobs/set-code
# The per-transaction gas cap (a validity rule, protocol/spec/chain.md). The heaviest call the
# protocol makes, a `finalise` call settling its batch of 256 voters on 16 proposals, uses
# 5.43M gas; the contract client adds a 25% margin to its estimate (6.79M). A block of the 30M
# default holds four such transactions.
MAX_TX_GAS = 8_000_000
# Per-tx work (a signature recovery, a py-evm message, trie writes) dominates a block of
# cheap txs: a 30M-gas block held 1428 transfers. 256: one message from every participant
# of a task of up to 256 still fits one block (a bigger task's phases span more blocks).
MAX_BLOCK_TXS = 256


class NotOurTurn(Exception):
    """seal_block was asked to seal a slot this node may not seal (or it has no sealer key)."""


class MalformedBlock(BlockRejected):
    """The bytes are not an RLP block of this chain's fork."""


class BlockTooLarge(BlockRejected):
    """The encoded block exceeds MAX_BLOCK_BYTES."""


class InvalidBlockTx(BlockRejected):
    """The block holds a tx this chain never admits (wrong chain id, unsupported type)."""


class TooManyTxs(InvalidBlockTx):
    """The block holds more than MAX_BLOCK_TXS transactions."""


class InvalidExecution(BlockRejected):
    """Re-executing the block does not give its header (state root, receipts, gas used...)."""


@dataclass(frozen=True)
class _Located:
    tx: SignedTransactionAPI
    block: BlockAPI
    index: int


class EmbeddedChain:
    def __init__(
        self,
        genesis: Genesis,
        db_path: str | Path | None,
        sealer_key: PrivateKey | None = None,
        *,
        confirmations: int = 2,
        clock: Callable[[], float] = time.time,
        mempool_limits: MempoolLimits | None = None,
    ) -> None:
        """db_path None = in memory (tests, benchmarks). `confirmations` is how deep a block
        must be for the "safe"/"finalized" tags and `is_confirmed`."""
        self.genesis = genesis
        self.rules = PoARules.from_genesis(genesis)
        self.sealer_key = sealer_key
        self.confirmations = confirmations
        self.clock = clock
        self.mempool = Mempool(mempool_limits)
        self._blocks: OrderedDict[bytes, tuple[BlockAPI, tuple[ReceiptAPI, ...] | None]] = OrderedDict()
        self._lock = threading.RLock()
        self._db = SqliteDB(db_path) if db_path is not None else AtomicDB()
        self._chain = self._open(genesis)
        self._vm_class = self._chain.get_vm_class_for_block_number(BlockNumber(0))
        self._tx_builder = self._vm_class.get_transaction_builder()
        self._receipt_builder = self._vm_class.get_receipt_builder()
        self._block_class = self._vm_class.get_block_class()
        self._header_class = dict(cast(Any, self._block_class)._meta.fields)["header"]  # its RLP sedes
        self._precompiles = frozenset(self._vm_class.get_state_class().computation_class.get_precompiles())
        self.max_tx_gas = min(MAX_TX_GAS, genesis.gas_limit)
        self.max_block_txs = MAX_BLOCK_TXS
        # Who may seal is derived from the blocks (votes), never stored: walk the chain once.
        self._ledger = self._chain.authority_ledger
        self._ledger.attach(self._db)
        self._source = ChainDBSource(self._chain.chaindb, self._tx_builder)
        canonical = self._chain.get_canonical_block_header_by_number
        warm = self._ledger.warm(self._chain.get_canonical_head(), lambda n: canonical(BlockNumber(n)), self._source)
        self.head_authorities: tuple[bytes, ...] = warm.authorities

    def _open(self, genesis: Genesis) -> FlockChainBase:
        chain_class = build_chain_class(genesis)
        try:
            chain = cast(FlockChainBase, chain_class(self._db))
            ours = chain.get_canonical_block_header_by_number(BlockNumber(0))
        except HeaderNotFound:
            # Empty db: build genesis. Reopening must NOT go through from_genesis (trap 6).
            return create_chain(genesis, self._db)
        expected = create_chain(genesis, AtomicDB()).get_canonical_block_header_by_number(BlockNumber(0))
        if ours.hash != expected.hash:
            raise GenesisMismatch(
                f"database genesis {ours.hash.hex()} differs from the genesis file's {expected.hash.hex()}"
            )
        return chain

    def close(self) -> None:
        with self._lock:
            if isinstance(self._db, SqliteDB):
                self._db.close()

    # -- identity ------------------------------------------------------------------------

    @property
    def chain_id(self) -> int:
        return self.genesis.chain_id

    @property
    def sealer_address(self) -> bytes | None:
        return None if self.sealer_key is None else cast(bytes, self.sealer_key.public_key.to_canonical_address())

    @property
    def genesis_hash(self) -> bytes:
        with self._lock:
            return cast(bytes, self._chain.get_canonical_block_hash(BlockNumber(0)))

    @property
    def head(self) -> BlockHeaderAPI:
        with self._lock:
            return self._chain.get_canonical_head()

    # -- transactions in -----------------------------------------------------------------

    def decode_transaction(self, raw: bytes) -> SignedTransactionAPI:
        """Decode and check a tx on its own (no state): size, type, signature, chain id, gas."""
        if len(raw) > self.mempool.limits.max_tx_bytes:
            raise TxTooLarge(f"transaction is {len(raw)} bytes, limit {self.mempool.limits.max_tx_bytes}")
        try:
            # Decode with this fork's builder: a London-typed tx would not encode in a Prague
            # block (trap 1).
            tx = self._tx_builder.decode(raw)
        except Exception as exc:  # rlp/eth raise a zoo of types for bad bytes
            raise MalformedTx(f"not a transaction: {type(exc).__name__}: {exc}") from None
        self.check_transaction(tx)
        return tx

    def check_transaction(self, tx: SignedTransactionAPI) -> None:
        if tx.type_id not in SUPPORTED_TX_TYPES:
            raise MalformedTx(f"transaction type {tx.type_id} is not supported")
        # What a tx may run is judged before its signature (cheapest first), and in every
        # block before anything executes: only genesis code ever runs, within a bounded gas.
        if tx.gas > self.max_tx_gas:
            raise GasTooHigh(f"gas {tx.gas} exceeds the per-transaction cap {self.max_tx_gas}")
        if not tx.to:
            raise ForbiddenTarget("contract creation: this chain runs only the contracts of its genesis")
        if tx.to in self._precompiles:
            raise ForbiddenTarget(f"{to_checksum_address(tx.to)} is a precompile: only contracts may call it")
        try:
            tx.check_signature_validity()
            _ = tx.sender
        except Exception as exc:
            raise BadTxSignature(f"bad signature: {exc}") from None
        if tx.chain_id is None:
            raise WrongChainId("transaction has no chain id (pre-EIP-155): replayable on any chain")
        if tx.chain_id != self.chain_id:
            raise WrongChainId(f"transaction is for chain {tx.chain_id}, this chain is {self.chain_id}")
        try:
            tx.validate()  # field ranges
        except ValidationError as exc:
            raise MalformedTx(str(exc)) from None
        if tx.gas < tx.intrinsic_gas:  # typed txs' validate() does not check it
            raise GasTooLow(f"gas {tx.gas} is below the intrinsic cost {tx.intrinsic_gas}")

    def add_transaction(self, raw: bytes) -> bytes:
        """Admit a signed raw tx to the mempool; returns its hash. Raises a TxRejected subclass."""
        tx = self.decode_transaction(raw)
        with self._lock:
            head = self._chain.get_canonical_head()
            state = self._state_at(head)
            next_base_fee = self._next_base_fee(head)
            max_fee = max_fee_per_gas(tx)
            if max_fee < next_base_fee:
                raise GasTooLow(f"fee cap {max_fee} is below the next block's base fee {next_base_fee}")
            cost = tx.value + tx.gas * max_fee
            balance = state.get_balance(tx.sender)
            already = self.mempool.pending_cost(tx.sender, below_nonce=tx.nonce)
            if balance < already + cost:
                raise InsufficientFunds(
                    f"sender {to_checksum_address(tx.sender)} holds {balance} wei, needs {already + cost}"
                )
            pending = PendingTx(
                hash=tx.hash, sender=tx.sender, nonce=tx.nonce, max_fee=max_fee, tip=tip_per_gas(tx),
                gas=tx.gas, cost=cost, raw=raw, tx=tx,
            )
            self.mempool.add(pending, state_nonce=state.get_nonce(tx.sender))
            return cast(bytes, tx.hash)

    # -- sealing -------------------------------------------------------------------------

    def next_seal_time(self, now: float | None = None) -> int | None:
        """The next slot (unix seconds) at which this node may seal on the current head, or
        None when it has no key or is not an authority."""
        me = self.sealer_address
        if me is None:
            return None
        with self._lock:
            head = self._chain.get_canonical_head()
            authorities = self._authorities_after(head).authorities
            if me not in authorities:
                return None
            return self.rules.next_turn(head.block_number + 1, head.timestamp, me, self.clock() if now is None else now, authorities)

    def seal_block(self, timestamp: int) -> BlockAPI:
        """Build, seal and persist a block on our head at slot `timestamp`, from the mempool,
        in one pass (trap 3). NotOurTurn if this node may not seal that slot."""
        key = self.sealer_key
        if key is None:
            raise NotOurTurn("this node has no sealer key")
        me = cast(bytes, key.public_key.to_canonical_address())
        with self._lock:
            parent = self._chain.get_canonical_head()
            authorities = self._authorities_after(parent)
            if me not in authorities.authorities:
                raise NotOurTurn("this node is not an authority")
            try:
                allowed = self.rules.allowed_signer(parent.block_number + 1, parent.timestamp, timestamp, authorities.authorities)
            except BlockRejected as exc:
                raise NotOurTurn(str(exc)) from None
            if allowed != me:
                raise NotOurTurn(f"slot {timestamp} for block {parent.block_number + 1} belongs to {to_checksum_address(allowed)}")
            block = build_block(self._chain, self.mempool, parent, timestamp, me, authorities, self.max_block_txs)
            sealed = block.copy(header=sign_header(block.header, key))
            result = self._chain.persist_block(sealed)
            self._after_new_blocks(result.old_canonical_blocks)
            return sealed

    # -- importing -----------------------------------------------------------------------

    def decode_header(self, raw: bytes) -> BlockHeaderAPI:
        """The header of an RLP block, without decoding its body: the header and its seal
        are judged before the (costly) transactions are even decoded."""
        if len(raw) > MAX_BLOCK_BYTES:
            raise BlockTooLarge(f"block is {len(raw)} bytes, limit {MAX_BLOCK_BYTES}")
        try:
            _, kind, length, start = consume_length_prefix(raw, 0)
            if kind is not list or start + length != len(raw):
                raise ValueError("a block is one RLP list")
            _, kind, length, header_start = consume_length_prefix(raw, start)
            if kind is not list:
                raise ValueError("a block starts with its header list")
        except Exception as exc:  # rlp raises a zoo of types for bad bytes
            raise MalformedBlock(f"no block header: {type(exc).__name__}: {exc}") from None
        return self.parse_header(raw[start : header_start + length])

    def parse_header(self, raw_header: bytes) -> BlockHeaderAPI:
        """A bare RLP header (as announcements carry it)."""
        if len(raw_header) > MAX_HEADER_BYTES:
            raise BlockTooLarge(f"header is {len(raw_header)} bytes, limit {MAX_HEADER_BYTES}")
        try:
            return cast(BlockHeaderAPI, rlp.decode(raw_header, sedes=self._header_class))
        except Exception as exc:
            raise MalformedBlock(f"not a block header: {type(exc).__name__}: {exc}") from None

    def decode_block(self, raw: bytes) -> BlockAPI:
        if len(raw) > MAX_BLOCK_BYTES:
            raise BlockTooLarge(f"block is {len(raw)} bytes, limit {MAX_BLOCK_BYTES}")
        try:
            return cast(BlockAPI, rlp.decode(raw, sedes=self._block_class))
        except Exception as exc:
            raise MalformedBlock(f"not a block: {type(exc).__name__}: {exc}") from None

    def check_detached_header(self, header: BlockHeaderAPI) -> bytes:
        """What can be checked of a header whose parent we lack: sealed by an authority, on
        the slot grid, not in the future, at a height its timestamp can hold (one block per
        slot at most), the pinned gas limit. Returns the signer. This is what makes a
        far-ahead announcement worth a catch-up: only an authority can name one."""
        rules = self.rules
        signer = recover_signer(header)
        if signer not in self.head_authorities:
            # Perhaps voted in on blocks we lack; the known authorities' blocks lead us there.
            raise UnknownSigner(f"block {header.block_number} sealed by {to_checksum_address(signer)}, no authority on our head")
        if (header.timestamp - rules.genesis_timestamp) % rules.period:
            raise BadTimestamp(f"timestamp {header.timestamp} is not on the {rules.period}s slot grid")
        if header.block_number > (header.timestamp - rules.genesis_timestamp) // rules.period:
            raise BadTimestamp(f"block {header.block_number} cannot exist at timestamp {header.timestamp}")
        if header.timestamp > self.clock() + rules.max_future:
            raise FutureBlock(f"block {header.block_number} timestamp {header.timestamp} is in the future")
        if header.gas_limit != rules.gas_limit:
            raise BadHeaderField(f"gas limit {header.gas_limit}, the genesis pins {rules.gas_limit}")
        return signer

    def import_block(self, raw: bytes) -> ImportResult:
        """Validate and store a peer's block. Raises a BlockRejected subclass when invalid; an
        unknown parent is not an error but a result naming the parent to fetch (once the
        header passed check_detached_header). Cheapest first: header, seal and turn before
        the body is decoded, the body's txs before anything is executed."""
        header = self.decode_header(raw)
        with self._lock:
            if self._has_block(header.hash):
                return ImportResult("known", header.hash, header.block_number)
            try:
                parent = self._chain.get_block_header_by_hash(header.parent_hash)
            except HeaderNotFound:
                self.check_detached_header(header)
                return ImportResult("missing_parent", header.hash, header.block_number, missing_parent=header.parent_hash)
            if header.block_number != parent.block_number + 1:
                raise MalformedBlock(f"block {header.block_number} on parent {parent.block_number}")
            authorities = self._authorities_after(parent)
            self.rules.check_header(header, parent, now=self.clock(), authorities=authorities.authorities)
            block = self.decode_block(raw)
            if len(block.transactions) > self.max_block_txs:
                raise TooManyTxs(f"block holds {len(block.transactions)} transactions, limit {self.max_block_txs}")
            for tx in block.transactions:
                try:
                    self.check_transaction(tx)
                except TxRejected as exc:
                    raise InvalidBlockTx(f"tx {tx.hash.hex()}: {type(exc).__name__}: {exc}") from None
            voted = self._ledger.next(authorities, header, lambda: block.transactions)  # BadVote
            try:
                result = self._chain.import_block(block)
            except BlockRejected:
                raise
            except (ValidationError, VMError) as exc:
                raise InvalidExecution(str(exc).splitlines()[0][:300]) from None
            self._ledger.remember(header, voted)
            new_head = self._chain.get_canonical_head().hash == header.hash
            if new_head:
                self._after_new_blocks(result.old_canonical_blocks)
            return ImportResult(
                "imported", header.hash, header.block_number, new_head=new_head,
                reorged=len(result.old_canonical_blocks),
            )

    def _has_block(self, block_hash: bytes) -> bool:
        try:
            self._chain.get_block_by_hash(Hash32(bytes(block_hash)))
        except (HeaderNotFound, KeyError):
            return False
        return True

    def _after_new_blocks(self, dropped: Sequence[BlockAPI]) -> None:
        head = self._chain.get_canonical_head()
        self.head_authorities = self._authorities_after(head).authorities
        state = self._state_at(head)
        self.mempool.prune(lambda sender: state.get_nonce(Address(sender)))
        # Txs of blocks a reorg took off the canonical chain go back to the pool if still valid.
        for block in dropped:
            for tx in block.transactions:
                with contextlib.suppress(TxRejected):
                    self.add_transaction(tx.encode())

    # -- authorities ---------------------------------------------------------------------

    def _authorities_after(self, header: BlockHeaderAPI) -> Snapshot:
        return self._ledger.after(header, self._source)

    def authorities(self, ref: BlockRef = "latest") -> Snapshot:
        """The authority set and open votes after block `ref` (who may seal the next one)."""
        with self._lock:
            return self._authorities_after(self.header_at(ref))

    # -- reading -------------------------------------------------------------------------

    def header_at(self, ref: BlockRef = "latest") -> BlockHeaderAPI:
        """Resolve a block reference. "safe"/"finalized" = head - confirmations; "pending" =
        latest (we expose no pending block)."""
        with self._lock:
            head = self._chain.get_canonical_head()
            if isinstance(ref, bytes):
                try:
                    return self._chain.get_block_header_by_hash(Hash32(bytes(ref)))
                except (HeaderNotFound, ValidationError):
                    raise UnknownBlock(f"no block {ref.hex()}") from None
            if ref in ("latest", "pending"):
                return head
            if ref == "earliest":
                number = 0
            elif ref in ("safe", "finalized"):
                number = max(0, head.block_number - self.confirmations)
            elif isinstance(ref, int) and 0 <= ref <= head.block_number:
                number = ref
            else:
                raise UnknownBlock(f"no block {ref!r}")
            return self._chain.get_canonical_block_header_by_number(BlockNumber(number))

    def get_block_by_number(self, number: int) -> BlockAPI | None:
        with self._lock:
            try:
                return self._chain.get_canonical_block_by_number(BlockNumber(number))
            except (HeaderNotFound, ValidationError):
                return None

    @contextlib.contextmanager
    def consistent_view(self) -> Iterator[None]:
        """Several reads that must see one chain (no import or seal between them)."""
        with self._lock:
            yield

    def canonical_hash(self, number: int) -> bytes | None:
        with self._lock:
            try:
                return cast(bytes, self._chain.get_canonical_block_hash(BlockNumber(number)))
            except (HeaderNotFound, ValidationError):
                return None

    def has_block(self, block_hash: bytes) -> bool:
        with self._lock:
            return self._has_block(block_hash)

    def get_block_by_hash(self, block_hash: bytes) -> BlockAPI | None:
        with self._lock:
            try:
                return self._chain.get_block_by_hash(Hash32(bytes(block_hash)))
            except (HeaderNotFound, ValidationError, KeyError):
                return None

    def nonce(self, address: bytes, ref: BlockRef = "latest") -> int:
        """Account nonce; "pending" counts this node's pending txs too."""
        with self._lock:
            state_nonce = self._state_at(self.header_at(ref)).get_nonce(Address(address))
            if ref == "pending":
                return self.mempool.next_nonce(address, state_nonce)
            return state_nonce

    def balance(self, address: bytes, ref: BlockRef = "latest") -> int:
        with self._lock:
            return self._state_at(self.header_at(ref)).get_balance(Address(address))

    def code(self, address: bytes, ref: BlockRef = "latest") -> bytes:
        with self._lock:
            return self._state_at(self.header_at(ref)).get_code(Address(address))

    def storage_at(self, address: bytes, slot: int, ref: BlockRef = "latest") -> int:
        with self._lock:
            return self._state_at(self.header_at(ref)).get_storage(Address(address), slot)

    def base_fee(self) -> int:
        """The base fee the next block will charge."""
        with self._lock:
            return self._next_base_fee(self._chain.get_canonical_head())

    def get_transaction(self, tx_hash: bytes) -> tuple[SignedTransactionAPI, BlockAPI | None, int] | None:
        """(tx, block or None while pending, index in block), or None if unknown."""
        with self._lock:
            located = self._locate(tx_hash)
            if located is None:
                pending = self.mempool.get(tx_hash)
                return None if pending is None else (pending.tx, None, 0)
            return located.tx, located.block, located.index

    def get_receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt of a tx in a canonical block, else None (pending or unknown)."""
        with self._lock:
            located = self._locate(tx_hash)
            if located is None:
                return None
            block, index, tx = located.block, located.index, located.tx
            receipts = self._receipts(block)
            receipt = receipts[index]
            previous = receipts[index - 1].gas_used if index else 0
            first_log = sum(len(r.logs) for r in receipts[:index])
            return Receipt(
                tx_hash=tx_hash,
                tx_index=index,
                block_hash=block.hash,
                block_number=block.number,
                sender=tx.sender,
                to=tx.to or None,
                contract_address=None if tx.to else generate_contract_address(tx.sender, tx.nonce),
                status=1 if receipt.state_root == b"\x01" else 0,
                gas_used=receipt.gas_used - previous,
                cumulative_gas_used=receipt.gas_used,
                effective_gas_price=effective_gas_price(tx, block.header.base_fee_per_gas or 0),
                tx_type=tx.type_id or 0,
                logs=tuple(self._logs_of(block, index, receipt, tx_hash, first_log)),
                bloom=receipt.bloom,
            )

    def confirmations_of(self, tx_hash: bytes) -> int:
        """How many blocks deep the tx's block is (1 = in the head block); 0 if not mined."""
        with self._lock:
            located = self._locate(tx_hash)
            if located is None:
                return 0
            return self._chain.get_canonical_head().block_number - located.block.number + 1

    def is_confirmed(self, tx_hash: bytes, confirmations: int | None = None) -> bool:
        needed = self.confirmations if confirmations is None else confirmations
        return self.confirmations_of(tx_hash) > needed

    def call(self, request: CallRequest, ref: BlockRef = "latest", budget: CallBudget | None = None) -> bytes:
        """Execute without a transaction (eth_call) on the state after block `ref`; raises
        CallAborted past `budget` (flockd.chain.node.calls)."""
        with self._lock:
            header = self.header_at(ref)
            tx = self._spoof(request, header)
        # Outside the lock: the state under a stored block never changes, so sealing and
        # import go on while a call runs.
        try:
            return execute_call(self._chain, header, tx, budget or CallBudget.seconds(float("inf")))
        except VMError as exc:
            raise reverted(exc) from None

    def estimate_gas(self, request: CallRequest, ref: BlockRef = "latest", budget: CallBudget | None = None) -> int:
        with self._lock:
            header = self.header_at(ref)
            tx = self._spoof(request, header)
        try:
            return estimate_call_gas(self._chain, header, tx, budget or CallBudget.seconds(float("inf")))
        except VMError as exc:
            raise reverted(exc) from None

    def get_logs(self, flt: LogFilter) -> list[LogEntry]:
        with self._lock:
            if flt.block_hash is not None:
                only = self.header_at(flt.block_hash).block_number
                if self._chain.get_canonical_block_hash(only) != flt.block_hash:
                    raise UnknownBlock(f"block {flt.block_hash.hex()} is not canonical")
                blocks: Sequence[int] = [only]
            else:
                first = self.header_at(flt.from_block).block_number
                last = self.header_at(flt.to_block).block_number
                if last - first >= MAX_LOG_RANGE:
                    raise ValueError(f"log range of {last - first + 1} blocks exceeds {MAX_LOG_RANGE}")
                blocks = range(first, last + 1)
            found: list[LogEntry] = []
            for number in blocks:
                header = self._chain.get_canonical_block_header_by_number(BlockNumber(number))
                if not flt.may_match_bloom(header.bloom):
                    continue
                block = self._block(header.hash)
                receipts = self._receipts(block)
                first_log = 0
                for index, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
                    for entry in self._logs_of(block, index, receipt, tx.hash, first_log):
                        if flt.matches(entry):
                            found.append(entry)
                    first_log += len(receipt.logs)
            return found

    # -- internals -----------------------------------------------------------------------

    def _state_at(self, header: BlockHeaderAPI) -> StateAPI:
        return self._chain.get_vm(header).state

    def _next_base_fee(self, head: BlockHeaderAPI) -> int:
        return cast(int, self._chain.create_header_from_parent(head).base_fee_per_gas)

    def _block(self, block_hash: bytes) -> BlockAPI:
        """A stored block, decoded once: blocks are immutable by hash, so a small LRU cache is
        safe and turns N receipt lookups in one block from O(N²) decoding into O(N)."""
        cached = self._blocks.get(block_hash)
        if cached is None:
            cached = (self._chain.get_block_by_hash(Hash32(bytes(block_hash))), None)
            self._blocks[block_hash] = cached
            if len(self._blocks) > BLOCK_CACHE_SIZE:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(block_hash)
        return cached[0]

    def _receipts(self, block: BlockAPI) -> tuple[ReceiptAPI, ...]:
        block, receipts = self._blocks.get(block.hash) or (block, None)
        if receipts is None:
            receipts = tuple(block.get_receipts(self._chain.chaindb))
            self._blocks[block.hash] = (block, receipts)
        return receipts

    def _locate(self, tx_hash: bytes) -> _Located | None:
        # bytes(): py-evm builds this lookup key with an f-string, so a HexBytes hash (what
        # eth-account returns) would silently miss.
        try:
            number, index = self._chain.get_canonical_transaction_index(Hash32(bytes(tx_hash)))
        except TransactionNotFound:
            return None
        block = self._block(self._chain.get_canonical_block_hash(number))
        txs, wanted = block.transactions, bytes(tx_hash)
        if index < len(txs) and txs[index].hash == wanted:
            return _Located(txs[index], block, index)
        # py-evm's lookup can outlive a reorganisation that dropped the tx's block (it
        # un-indexes only blocks at heights the new branch reaches): look, do not trust.
        for i, tx in enumerate(txs):
            if tx.hash == wanted:
                return _Located(tx, block, i)
        return None

    def _logs_of(self, block: BlockAPI, index: int, receipt: ReceiptAPI, tx_hash: bytes, first_log: int) -> list[LogEntry]:
        return [
            LogEntry(
                address=log.address,
                topics=tuple(t.to_bytes(32, "big") for t in log.topics),
                data=log.data,
                block_number=block.number,
                block_hash=block.hash,
                tx_hash=tx_hash,
                tx_index=index,
                log_index=first_log + i,
            )
            for i, log in enumerate(receipt.logs)
        ]

    def _spoof(self, request: CallRequest, header: BlockHeaderAPI) -> Any:
        nonce = self._state_at(header).get_nonce(Address(request.sender))
        unsigned = self._vm_class.create_unsigned_transaction(
            nonce=nonce,
            gas_price=request.gas_price,
            gas=request.gas if request.gas is not None else self.genesis.gas_limit,
            to=Address(request.to or b""),
            value=request.value,
            data=request.data,
        )
        return SpoofTransaction(unsigned, from_=request.sender)


def reverted(exc: VMError) -> CallReverted:
    data = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else b""
    return CallReverted("execution reverted" if data else f"execution failed: {type(exc).__name__}", data)
