"""Proof-of-authority rules: who may seal which block when, the seal itself, the VM/chain classes.

Slots. Time is cut into slots of `block_period` seconds from the genesis timestamp; a block's
timestamp is its slot (genesis.timestamp + k * period) and is strictly after its parent's.

Authorities. The set that may seal block n is the set after block n-1: the genesis's,
changed by the authorities' own votes (flockd.chain.node.authority). Every rule below takes
that set; it defaults to the genesis set for callers that know no votes were cast.

Turns. For block n whose parent has timestamp tp and a candidate slot ts, let
`skipped = (ts - tp) / period - 1` (slots left empty since the parent). Exactly one authority
may seal block n at ts:

    authorities[(n + skipped // K) % len(authorities)]        K = backup_after_periods

so the in-turn authority (n % len) owns the first K slots after its parent; if it stays
silent, the next authority in order owns the next K, and so on round the ring. Import checks
this exactly: any other signer is OutOfTurn. One authority alive is enough for liveness.
Forks (a late in-turn block racing a backup's) resolve by py-evm's fork choice: longest chain,
first seen wins ties (no finality: act on results after enough confirmations).

Seal. extra_data = the 65-byte secp256k1 signature (r || s || v, v in {0,1}, low s) over
keccak256(rlp(header with empty extra_data)), and nothing else: no vanity bytes, which would
let a sealer try block hashes freely (the task registry's round-0 seed hashes a block hash,
protocol/spec/contracts.md "Seed"). The sealer is also the block's coinbase (it earns the
priority fees), and import checks coinbase == signer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import rlp
from eth.abc import (
    AtomicDatabaseAPI,
    BlockHeaderAPI,
    ChainDatabaseAPI,
    ConsensusAPI,
    ConsensusContextAPI,
)
from eth.chains.base import Chain
from eth.constants import BLANK_ROOT_HASH
from eth.db.atomic import AtomicDB
from eth.db.chain import ChainDB
from eth.vm.forks.prague import PragueVM
from eth_hash.auto import keccak
from eth_keys import keys
from eth_keys.datatypes import PrivateKey
from eth_keys.exceptions import BadSignature
from eth_keys.exceptions import ValidationError as KeysValidationError
from eth_typing import BlockNumber
from eth_utils import ValidationError, to_checksum_address

from flockd.chain.node.genesis import Genesis
from flockd.chain.node.precompile import with_vrf_precompile

if TYPE_CHECKING:
    from eth.abc import SignedTransactionAPI, TransactionBuilderAPI

    from flockd.chain.node.authority import AuthorityLedger

SEAL_LENGTH = 65
EXTRA_DATA_MAX_BYTES = SEAL_LENGTH  # the seal only (trap 8 of the py-evm note)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class BlockRejected(Exception):
    """A block from a peer is invalid; the subclass says why. Never retry it."""


class ConsensusError(BlockRejected, ValidationError):
    """A block breaks the PoA rules (also py-evm's ValidationError, so its import path treats it alike)."""


class BadSeal(ConsensusError):
    """extra_data holds no well-formed seal, or the signature does not recover."""


class UnauthorizedSigner(ConsensusError):
    """The seal recovers to an address that is not in the authority set."""


class OutOfTurn(ConsensusError):
    """The signer is an authority, but not the one allowed for this block number and slot."""


class BadTimestamp(ConsensusError):
    """The timestamp is not on the slot grid or not after the parent's."""


class FutureBlock(ConsensusError):
    """The timestamp is further ahead of our clock than max_future_seconds."""


class UnknownSigner(UnauthorizedSigner, FutureBlock):
    """A header whose parent we lack is sealed by an address that is no authority on our
    head. It may have been voted in on blocks we have not seen yet: like a block from the
    future it cannot be judged now, so no catch-up starts for it, but it is no proof of bad
    faith either (as a FutureBlock, its sender is not blamed)."""


class BadHeaderField(ConsensusError):
    """A field PoA pins (gas limit, coinbase = signer) has the wrong value."""


@dataclass(frozen=True)
class PoARules:
    authorities: tuple[bytes, ...]
    period: int
    backup_after: int
    genesis_timestamp: int
    gas_limit: int
    max_future: int

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> PoARules:
        return cls(
            authorities=genesis.authorities,
            period=genesis.block_period,
            backup_after=genesis.backup_after_periods,
            genesis_timestamp=genesis.timestamp,
            gas_limit=genesis.gas_limit,
            max_future=genesis.max_future_seconds,
        )

    def allowed_signer(
        self, number: int, parent_timestamp: int, timestamp: int, authorities: Sequence[bytes] | None = None
    ) -> bytes:
        """The one authority of `authorities` (the set after the parent) that may seal block
        `number` at slot `timestamp`."""
        sealers = self.authorities if authorities is None else authorities
        self.check_slot(parent_timestamp, timestamp)
        skipped = (timestamp - parent_timestamp) // self.period - 1
        return sealers[(number + skipped // self.backup_after) % len(sealers)]

    def check_slot(self, parent_timestamp: int, timestamp: int) -> None:
        if (timestamp - self.genesis_timestamp) % self.period:
            raise BadTimestamp(f"timestamp {timestamp} is not on the {self.period}s slot grid")
        if timestamp <= parent_timestamp:
            raise BadTimestamp(f"timestamp {timestamp} is not after the parent's ({parent_timestamp})")

    def next_turn(
        self, number: int, parent_timestamp: int, signer: bytes, not_before: float, authorities: Sequence[bytes] | None = None
    ) -> int:
        """The earliest slot >= not_before (and after the parent) at which `signer` may seal
        block `number`. ValueError for a non-authority."""
        sealers = self.authorities if authorities is None else authorities
        if signer not in sealers:
            raise ValueError(f"{to_checksum_address(signer)} is not an authority")
        first = parent_timestamp + self.period
        if not_before > first:
            first += -(-(int(not_before) - first) // self.period) * self.period  # round up
        # The turn pattern repeats every len * K slots, so one cycle holds our turn.
        for k in range(len(sealers) * self.backup_after):
            slot = first + k * self.period
            if self.allowed_signer(number, parent_timestamp, slot, sealers) == signer:
                return slot
        raise AssertionError("unreachable: every authority has a turn in each cycle")

    def check_header(
        self, header: BlockHeaderAPI, parent: BlockHeaderAPI, now: float | None, authorities: Sequence[bytes] | None = None
    ) -> bytes:
        """Every PoA rule for `header` on `parent`, whose authority set is `authorities`
        (clock check skipped when now is None); returns the signer. Cheap: run it before
        re-executing the block."""
        sealers = self.authorities if authorities is None else authorities
        signer = recover_signer(header)
        if signer not in sealers:
            raise UnauthorizedSigner(f"block {header.block_number} sealed by {to_checksum_address(signer)}, not an authority")
        allowed = self.allowed_signer(header.block_number, parent.timestamp, header.timestamp, sealers)
        if signer != allowed:
            raise OutOfTurn(
                f"block {header.block_number} at {header.timestamp} sealed by {to_checksum_address(signer)}, "
                f"but only {to_checksum_address(allowed)} may seal it"
            )
        if now is not None and header.timestamp > now + self.max_future:
            raise FutureBlock(f"block {header.block_number} timestamp {header.timestamp} is {header.timestamp - now:.0f}s in the future")
        if header.gas_limit != self.gas_limit:
            raise BadHeaderField(f"gas limit {header.gas_limit}, the genesis pins {self.gas_limit}")
        if header.coinbase != signer:
            raise BadHeaderField("coinbase is not the sealer")
        return signer


# -- the seal ----------------------------------------------------------------------------


def seal_hash(header: BlockHeaderAPI) -> bytes:
    """What the sealer signs: the header hash with the seal bytes removed from extra_data."""
    if len(header.extra_data) != SEAL_LENGTH:
        raise BadSeal(f"extra_data is {len(header.extra_data)} bytes: it must be exactly the {SEAL_LENGTH}-byte seal")
    unsealed = header.copy(extra_data=header.extra_data[:-SEAL_LENGTH])
    return keccak(rlp.encode(unsealed))


def sign_header(header: BlockHeaderAPI, key: PrivateKey) -> BlockHeaderAPI:
    placeholder = header.copy(extra_data=bytes(SEAL_LENGTH))
    signature = key.sign_msg_hash(seal_hash(placeholder))
    return header.copy(extra_data=signature.to_bytes())


def recover_signer(header: BlockHeaderAPI) -> bytes:
    message = seal_hash(header)
    seal = header.extra_data[-SEAL_LENGTH:]
    if int.from_bytes(seal[32:64], "big") > _SECP256K1_N // 2:
        raise BadSeal("seal signature has a high s value (malleable)")
    try:
        public_key = keys.Signature(seal).recover_public_key_from_msg_hash(message)
    except (BadSignature, KeysValidationError) as exc:
        raise BadSeal(f"seal signature does not recover: {exc}") from None
    return cast(bytes, public_key.to_canonical_address())


# -- py-evm classes ------------------------------------------------------------------------


class ChainDBSource:
    """The authority ledger's view of a py-evm chain database."""

    def __init__(self, chaindb: ChainDatabaseAPI, tx_builder: type[TransactionBuilderAPI]) -> None:
        self._chaindb = chaindb
        self._tx_builder = tx_builder

    def header_by_hash(self, block_hash: bytes) -> BlockHeaderAPI:
        return self._chaindb.get_block_header_by_hash(cast(Any, block_hash))

    def transactions(self, header: BlockHeaderAPI) -> Sequence[SignedTransactionAPI]:
        return self._chaindb.get_block_transactions(header, self._tx_builder)


class PoAConsensus(ConsensusAPI):
    """py-evm's hook, run by its own import after re-execution: same rules, minus the clock
    (which EmbeddedChain checks before executing). Subclassed per chain with `rules`, the
    authority `ledger` and the fork's `tx_builder` set."""

    rules: PoARules
    ledger: AuthorityLedger
    tx_builder: type[TransactionBuilderAPI]

    def __init__(self, context: ConsensusContextAPI) -> None:
        self._chaindb = ChainDB(cast(Any, context).db)

    def validate_seal(self, header: BlockHeaderAPI) -> None:
        recover_signer(header)  # who may sign depends on the parent: validate_seal_extension

    def validate_seal_extension(self, header: BlockHeaderAPI, parents: Iterable[BlockHeaderAPI]) -> None:
        by_hash = {p.hash: p for p in parents}
        parent = by_hash.get(header.parent_hash) or self._chaindb.get_block_header_by_hash(header.parent_hash)
        authorities = self.ledger.after(parent, ChainDBSource(self._chaindb, self.tx_builder)).authorities
        self.rules.check_header(header, parent, now=None, authorities=authorities)

    @classmethod
    def get_fee_recipient(cls, header: BlockHeaderAPI) -> Any:
        return header.coinbase


def build_vm_class(rules: PoARules, ledger: AuthorityLedger) -> type[PragueVM]:
    consensus = cast(type[PoAConsensus], type("FlockPoAConsensus", (PoAConsensus,), {"rules": rules, "ledger": ledger}))
    # The one place the execution rules are chosen: Prague + the ECVRF precompile.
    vm_class = cast(
        type[PragueVM],
        with_vrf_precompile(PragueVM).configure(
            __name__="FlockPoAVM", consensus_class=consensus, extra_data_max_bytes=EXTRA_DATA_MAX_BYTES
        ),
    )
    consensus.tx_builder = vm_class.get_transaction_builder()
    return vm_class


class FlockChainBase(Chain):
    pinned_gas_limit: int
    authority_ledger: AuthorityLedger

    def create_header_from_parent(self, parent_header: BlockHeaderAPI, **header_params: Any) -> BlockHeaderAPI:
        # Pinned, or py-evm lets it decay by 1/1024 per block.
        header_params.setdefault("gas_limit", self.pinned_gas_limit)
        return super().create_header_from_parent(parent_header, **header_params)


def build_chain_class(genesis: Genesis) -> type[FlockChainBase]:
    """A chain class with its own authority ledger (a cache of sets by block hash)."""
    from flockd.chain.node.authority import AuthorityLedger  # it builds on this module's errors

    ledger = AuthorityLedger(genesis.authorities, empty_tx_root=BLANK_ROOT_HASH)
    vm_class = build_vm_class(PoARules.from_genesis(genesis), ledger)
    return type(
        "FlockChain",
        (FlockChainBase,),
        {
            "vm_configuration": ((0, vm_class),),
            "chain_id": genesis.chain_id,
            "pinned_gas_limit": genesis.gas_limit,
            "authority_ledger": ledger,
        },
    )


def genesis_params(genesis: Genesis) -> dict[str, Any]:
    return {
        "difficulty": 0,
        "gas_limit": genesis.gas_limit,
        "timestamp": genesis.timestamp,
        "extra_data": genesis.consensus_digest(),
    }


def create_chain(genesis: Genesis, db: AtomicDatabaseAPI) -> FlockChainBase:
    """A fresh chain on an empty db."""
    chain_class = build_chain_class(genesis)
    return cast(FlockChainBase, chain_class.from_genesis(db, genesis_params(genesis), cast(Any, genesis.state())))


def genesis_hash(genesis: Genesis) -> bytes:
    """The genesis block hash, computed in memory: print it, compare it across nodes."""
    chain = create_chain(genesis, AtomicDB())
    return cast(bytes, chain.get_canonical_block_header_by_number(BlockNumber(0)).hash)
