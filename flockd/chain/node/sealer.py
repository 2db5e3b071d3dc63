"""Build a block from the mempool in one pass, the way py-evm's import will re-execute it.

Mirrors `VM.import_block` step for step — preprocessing system calls, transactions,
postprocessing (Prague requests), finalisation — because `mine_all`/`mine_block` skip the
pre/postprocessing (trap 5) and `apply_transaction` + `mine_block` per tx is O(n²) (trap 3).
A tx that is no longer executable is dropped from the mempool rather than failing the block,
and so is a vote the authority rule would refuse (flockd.chain.node.authority): a block must
never carry one.
"""

from __future__ import annotations

from typing import Any, cast

from eth.abc import BlockAPI, BlockHeaderAPI, ReceiptAPI, SignedTransactionAPI
from eth_typing import Address
from eth_utils import ValidationError

from flockd.chain.node.authority import VOTE_ADDRESS, Snapshot, decode_vote
from flockd.chain.node.mempool import Mempool
from flockd.chain.node.poa import SEAL_LENGTH, FlockChainBase


def build_block(
    chain: FlockChainBase, mempool: Mempool, parent: BlockHeaderAPI, timestamp: int, coinbase: bytes,
    authorities: Snapshot, max_txs: int,
) -> BlockAPI:
    """An unsealed block on `parent`, whose authority snapshot is `authorities`, of at most
    `max_txs` transactions (extra_data = a zero seal: sign it, then persist)."""
    # The placeholder seal has the final length; no header field executed depends on it.
    header = chain.create_header_from_parent(
        parent, timestamp=timestamp, coinbase=coinbase, extra_data=bytes(SEAL_LENGTH)
    )
    vm = cast(Any, chain.get_vm(header))  # the VM's pre/postprocessing hooks are not in its ABC
    vm.block_preprocessing(vm.get_block())
    included: list[SignedTransactionAPI] = []
    receipts: list[ReceiptAPI] = []
    blocked: set[bytes] = set()  # senders whose next tx cannot go in: their later ones wait too
    dropped: list[bytes] = []
    current = header
    for ptx in mempool.ready(lambda s: vm.state.get_nonce(Address(s)), header.base_fee_per_gas or 0):
        if len(included) == max_txs:
            break
        if ptx.sender in blocked:
            continue
        if current.gas_used + ptx.gas > current.gas_limit:
            blocked.add(ptx.sender)
            continue
        try:
            vm.validate_transaction_against_header(current, ptx.tx)
            vm.state.validate_transaction(ptx.tx)
            if ptx.tx.to == VOTE_ADDRESS:  # BadVote is a ValidationError
                voted = authorities.apply(decode_vote(ptx.sender, ptx.tx.data, ptx.tx.value))
        except ValidationError:
            # No longer executable (an earlier tx spent the funds, a vote the set now refuses,
            # ...): drop it for good, once the pool is no longer being iterated.
            dropped.append(ptx.hash)
            blocked.add(ptx.sender)
            continue
        if ptx.tx.to == VOTE_ADDRESS:
            authorities = voted
        receipt, _ = vm.apply_transaction(current, ptx.tx)
        current = vm.increment_blob_gas_used(vm.add_receipt_to_header(current, receipt), ptx.tx)
        included.append(ptx.tx)
        receipts.append(receipt)
    for tx_hash in dropped:
        mempool.remove(tx_hash)
    filled = vm.set_block_transactions_and_withdrawals(vm.get_block(), current, included, receipts)
    return cast(BlockAPI, vm.mine_block(vm.block_postprocessing(filled)).block)
