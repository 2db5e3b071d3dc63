"""Fuzz targets of the chain: gossiped transactions, blocks, sync messages and batches, the
genesis file. Blocks are mutated field by field and re-sealed by the authority, so a
mutation gets past the seal and turn checks into the execution that follows them."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import rlp
from eth_account import Account
from eth_keys import keys
from hypothesis import strategies as st

from flockd import vrf
from flockd.bench._fuzz_base import (
    EDGE_INTS,
    JSON_VALUES,
    JSON_WRONG_TYPES,
    MSGPACK_EXPANSION,
    Target,
    decoder_check,
    linear_bound,
    msgpack_messages,
    mutate,
    mutate_bytes,
)
from flockd.chain.node import sync
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis, GenesisError
from flockd.chain.node.mempool import Mempool, TxRejected
from flockd.chain.node.poa import BlockRejected, sign_header
from flockd.chain.node.precompile import VRFPrecompileError, verify_input

T0 = 1_700_000_000
CHAIN_ID = 4242
SEALER = keys.PrivateKey(b"\x01" * 32)
ALICE = Account.from_key(b"\x0a" * 32)
BOB = Account.from_key(b"\x0b" * 32)
GWEI = 10**9
# Decoding RLP builds py-evm objects (a header is ~20 of them): far more than msgpack.
RLP_EXPANSION = 400
STORER = "0x" + "57" * 20  # a genesis contract (the embedded chain runs no other code)


def _genesis() -> Genesis:
    return Genesis.create(
        chain_id=CHAIN_ID,
        authorities=[SEALER.public_key.to_canonical_address()],
        timestamp=T0,
        alloc={ALICE.address: {"balance": 10**24}, BOB.address: {"balance": 10**24},
               STORER: {"code": bytes.fromhex("600160005500")}},  # SSTORE 1 at slot 0
    )


def _chain() -> EmbeddedChain:
    return EmbeddedChain(_genesis(), None, SEALER, clock=lambda: float(T0 + 10**6))


def _transfer(nonce: int, **fields: Any) -> bytes:
    tx: dict[str, Any] = {
        "to": BOB.address, "value": 1, "gas": 60_000, "maxFeePerGas": 2 * GWEI,
        "maxPriorityFeePerGas": GWEI, "nonce": nonce, "chainId": CHAIN_ID, "type": 2,
    }
    tx.update(fields)
    return bytes(ALICE.sign_transaction({k: v for k, v in tx.items() if v is not None}).raw_transaction)


@dataclass(frozen=True)
class _World:
    """A sealer's chain of three blocks with transactions of every supported type, and an
    importer holding block 1: block 2 is the base every block mutation starts from."""

    source: EmbeddedChain
    importer: EmbeddedChain
    raw_blocks: tuple[bytes, ...]  # blocks 1..3
    alice_nonce: int  # ALICE's next nonce on the source chain


@functools.cache
def world() -> _World:
    source = _chain()
    txs = [
        _transfer(0),
        _transfer(1, type=None, maxFeePerGas=None, maxPriorityFeePerGas=None, gasPrice=2 * GWEI),
        _transfer(2, type=1, maxFeePerGas=None, maxPriorityFeePerGas=None, gasPrice=2 * GWEI,
                  accessList=[{"address": BOB.address, "storageKeys": ["0x" + "00" * 32]}]),
        _transfer(3, to=STORER, gas=200_000),  # runs code: SSTORE
    ]
    raws = []
    for group in (txs[:2], txs[2:3], txs[3:]):
        for raw in group:
            source.add_transaction(raw)
        raws.append(rlp.encode(source.seal_block(source.next_seal_time(0) or 0)))
    importer = _chain()
    importer.import_block(raws[0])
    return _World(source, importer, tuple(raws), len(txs))


# -- transactions ------------------------------------------------------------------------------

_U256 = st.integers(0, 2**256 - 1) | EDGE_INTS.filter(lambda n: n >= 0) | st.just(2**256 - 1)


@st.composite
def _signed_txs(draw: st.DrawFn) -> bytes:
    """Transactions ALICE signs with any field values eth-account accepts (wide ranges, other
    chains, no chain id, calldata), then maybe mutated in their RLP fields or bytes."""
    tx_type = draw(st.sampled_from([None, 1, 2]))
    # Half plausible (so some are admitted and the checks after decoding run), half any
    # value in range for every field.
    wild = draw(st.booleans())
    pending = world().alice_nonce

    def pick(plausible: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> Any:
        return draw(anything if wild else plausible)

    fee = st.sampled_from([2 * GWEI, 10 * GWEI])
    fields: dict[str, Any] = {
        "to": draw(st.sampled_from([BOB.address, None, "0x" + "00" * 20])),
        "value": pick(st.sampled_from([0, 1]), _U256),
        "gas": pick(st.sampled_from([100_000, 200_000]), st.integers(0, 40_000_000) | _U256),
        "nonce": pick(st.just(pending), st.integers(0, pending + 2) | _U256),
        "data": draw(st.binary(max_size=64)),
        "chainId": pick(st.just(CHAIN_ID), st.sampled_from([CHAIN_ID, CHAIN_ID, 1, CHAIN_ID + 1, 2**64 - 1])),
    }
    if tx_type is None:
        fields["gasPrice"] = pick(fee, _U256)
        if wild and draw(st.booleans()):
            del fields["chainId"]  # pre-EIP-155: replayable, refused
    else:
        fields["type"] = tx_type
        fields["accessList"] = draw(st.sampled_from([[], [{"address": BOB.address, "storageKeys": []}]]))
        if tx_type == 2:
            fields["maxFeePerGas"] = pick(fee, _U256)
            fields["maxPriorityFeePerGas"] = pick(fee, _U256)
        else:
            fields["gasPrice"] = pick(fee, _U256)
    try:
        raw = bytes(ALICE.sign_transaction(fields).raw_transaction)
    except Exception:  # eth-account refuses some combinations: start from a valid transfer
        raw = _transfer(0)
    layer = draw(st.sampled_from(("signed", "signed", "signed", "rlp fields", "bytes")))
    if layer == "rlp fields":
        return _mutate_rlp_tx(draw, raw)
    return mutate_bytes(draw, raw, splices=_RLP_SPLICES) if layer == "bytes" else raw


# RLP prefixes declaring huge strings and lists (up to 2^64 bytes).
_RLP_SPLICES = (b"\xbf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\xb9\xff\xff", b"\xf9\xff\xff", b"\x80", b"\xc0")
_RLP_LEAVES: st.SearchStrategy[Any] = st.binary(max_size=40) | st.sampled_from(
    [b"", b"\x00", b"\x00\x01", b"\xff" * 32, b"\xff" * 33, [], [b""]]
)


def _mutate_rlp_tx(draw: st.DrawFn, raw: bytes) -> bytes:
    typed = raw[0] < 0x7F
    fields = rlp.decode(raw[1:] if typed else raw)
    body = rlp.encode(mutate(draw, fields, _RLP_LEAVES, wrong=_RLP_LEAVES))
    type_byte = draw(st.sampled_from([raw[:1], b"\x03", b"\x04", b"\x7e"])) if typed else b""
    return type_byte + body


def _admit(raw: bytes) -> object:
    chain = world().source
    # An empty pool for every case: what is admitted depends on the case alone.
    chain.mempool = Mempool(chain.mempool.limits)
    return chain.add_transaction(raw)


def _tx_target() -> Target:
    return Target(
        "chain.tx",
        st.binary(max_size=256) | _signed_txs(),
        decoder_check(_admit, (TxRejected,), bound=linear_bound(RLP_EXPANSION)),
    )


# -- blocks ------------------------------------------------------------------------------------

_HEADER_INTS = ("difficulty", "block_number", "gas_limit", "gas_used", "timestamp", "base_fee_per_gas",
                "blob_gas_used", "excess_blob_gas")
_HEADER_HASHES = ("parent_hash", "uncles_hash", "state_root", "transaction_root", "receipt_root", "mix_hash",
                  "withdrawals_root", "parent_beacon_block_root", "requests_hash")


@st.composite
def _blocks(draw: st.DrawFn) -> bytes:
    """Block 2 with one header field, its transaction list or its RLP changed, usually
    re-sealed by the authority so the change reaches the checks after the seal."""
    w = world()
    block = w.importer.decode_block(w.raw_blocks[1])
    header = block.header
    layer = draw(st.sampled_from(("header int", "header hash", "header other", "txs", "rlp", "bytes")))
    try:
        if layer == "header int":
            name = draw(st.sampled_from(_HEADER_INTS))
            value = draw(st.sampled_from([0, 1, getattr(header, name) + 1, 2**63, 2**64 - 1, 2**256 - 1]))
            header = header.copy(**{name: value})
        elif layer == "header hash":
            header = header.copy(**{draw(st.sampled_from(_HEADER_HASHES)): draw(st.binary(min_size=32, max_size=32))})
        elif layer == "header other":
            other = draw(st.sampled_from(("coinbase", "bloom", "nonce", "extra_data")))
            value = {
                "coinbase": draw(st.binary(min_size=20, max_size=20)),
                "bloom": draw(st.integers(0, 2**2048 - 1)),
                "nonce": draw(st.binary(min_size=8, max_size=8)),
                "extra_data": draw(st.binary(max_size=120)),
            }[other]
            header = header.copy(**{other: value})
        elif layer == "txs":
            txs = list(block.transactions)
            extra = block.get_transaction_builder().decode(draw(_signed_txs())) if draw(st.booleans()) else None
            txs = txs[: draw(st.integers(0, len(txs)))] + ([extra] if extra is not None else [])
            block = block.copy(transactions=txs)
        elif layer == "rlp":
            return rlp.encode(mutate(draw, rlp.decode(w.raw_blocks[1]), _RLP_LEAVES, wrong=_RLP_LEAVES))
        else:
            return mutate_bytes(draw, w.raw_blocks[1], splices=_RLP_SPLICES)
        if draw(st.integers(0, 3)):
            header = sign_header(header, SEALER)
        return bytes(rlp.encode(block.copy(header=header)))
    except Exception:  # py-evm refused to build the variant (a field out of its range)
        return mutate_bytes(draw, w.raw_blocks[1], splices=_RLP_SPLICES)


def _block_target() -> Target:
    return Target(
        "chain.block",
        st.binary(max_size=256) | _blocks(),
        decoder_check(lambda raw: world().importer.import_block(raw), (BlockRejected,), bound=linear_bound(RLP_EXPANSION)),
        examples=60,
    )


def _import_batch(data: bytes) -> object:
    return sync.import_batch(world().importer, sync.decode_blocks(data, 3))


@st.composite
def _batches(draw: st.DrawFn) -> bytes:
    pool = st.sampled_from(world().raw_blocks) | _blocks()
    return mutate_bytes(draw, sync.encode_blocks(draw(st.lists(pool, max_size=4))))


def _batch_target() -> Target:
    return Target(
        "chain.batch",
        st.binary(max_size=256) | _batches(),
        decoder_check(_import_batch, (sync.SyncError, BlockRejected), bound=linear_bound(RLP_EXPANSION)),
        examples=60,
    )


# -- sync messages -----------------------------------------------------------------------------


def _sync_targets() -> list[Target]:
    request = st.tuples(
        st.just(1), st.sampled_from(["range", "by_hash"]),
        st.integers(0, 2**63) | st.binary(min_size=32, max_size=32), st.integers(0, 65),
    ).map(list)
    announcement = st.tuples(
        st.just(1), st.integers(0, 2**63), st.binary(min_size=32, max_size=32),
        st.none() | st.binary(max_size=64),
    ).map(list)
    blocks = st.lists(st.binary(max_size=64), max_size=sync.MAX_BATCH_BLOCKS + 1)
    bound = linear_bound(MSGPACK_EXPANSION)
    return [
        Target("sync.request", msgpack_messages(request, random_size=140),
               decoder_check(sync.decode_request, (sync.SyncError,), bound=bound)),
        Target("sync.announcement", msgpack_messages(announcement),
               decoder_check(sync.decode_announcement, (sync.SyncError,), bound=bound)),
        Target("sync.blocks", msgpack_messages(blocks),
               decoder_check(lambda data: sync.decode_blocks(data, 8), (sync.SyncError,), bound=bound)),
    ]


# -- the VRF precompile -------------------------------------------------------------------------

_VRF_SECRET = bytes(range(32))
# Points a proof or key may name that are not honest ones: identity, small order, non-canonical.
_ODD_POINTS = (bytes(32), b"\x01" + bytes(31), bytes(31) + b"\x80", b"\xec" + b"\xff" * 30 + b"\x7f", b"\xff" * 32)


@st.composite
def _vrf_inputs(draw: st.DrawFn) -> bytes:
    """pk || pi || alpha as a proposer's transaction hands it to the precompile: a valid
    proof, then one part replaced, flipped or resized."""
    alpha = draw(st.binary(min_size=32, max_size=32))
    data = bytearray(vrf.public_key(_VRF_SECRET) + vrf.prove(_VRF_SECRET, alpha) + alpha)
    layer = draw(st.sampled_from(("valid", "point", "scalar", "bytes")))
    if layer == "point":
        at = draw(st.sampled_from([0, 32]))  # the key, or the proof's Gamma
        data[at : at + 32] = draw(st.sampled_from(_ODD_POINTS) | st.binary(min_size=32, max_size=32))
    elif layer == "scalar":  # the proof's s: 32 bytes little-endian, must be < the group order
        data[80:112] = draw(st.sampled_from([b"\xff" * 32, bytes(32)]) | st.binary(min_size=32, max_size=32))
    elif layer == "bytes":
        return mutate_bytes(draw, bytes(data), splices=(b"\x00", b"\xff" * 16))
    return bytes(data)


def _vrf_target() -> Target:
    return Target(
        "chain.vrf_precompile",
        st.binary(max_size=200) | _vrf_inputs(),
        decoder_check(verify_input, (VRFPrecompileError,), bound=linear_bound(64)),
    )


# -- genesis -----------------------------------------------------------------------------------

# JSON splices: a deep nesting, a huge number, a bad escape, a UTF-8 BOM.
_JSON_SPLICES = (b"[" * 5000, b"9" * 5000, b'"\\ud800"', b"\xef\xbb\xbf", b"NaN", b"1e999999")


@st.composite
def _genesis_files(draw: st.DrawFn) -> bytes:
    obj = json.loads(_genesis().to_json())
    obj["alloc"][ALICE.address]["storage"] = {"0x0": "0x1"}
    obj["alloc"][ALICE.address]["code"] = "0x6000"
    layer = draw(st.sampled_from(("fields", "fields", "bytes", "utf-16")))
    if layer == "fields":
        obj = mutate(draw, obj, JSON_VALUES, wrong=JSON_WRONG_TYPES)
    text = json.dumps(obj)
    if layer == "utf-16":
        return text.encode("utf-16")
    return mutate_bytes(draw, text.encode(), splices=_JSON_SPLICES) if layer == "bytes" else text.encode()


def _genesis_target() -> Target:
    return Target(
        "chain.genesis",
        st.binary(max_size=256) | _genesis_files(),
        # Genesis.create builds the accounts the file declares: bounded by the file's size.
        decoder_check(Genesis.from_json, (GenesisError,), bound=linear_bound(MSGPACK_EXPANSION)),
    )


def targets() -> list[Target]:
    return [_tx_target(), _block_target(), _batch_target(), *_sync_targets(), _vrf_target(), _genesis_target()]
