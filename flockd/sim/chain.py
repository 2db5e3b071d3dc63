"""The simulation's one chain: a real py-evm PragueVM chain in memory, with the VRF
precompile and the real compiled StakeToken and TaskRegistry, fed real signed transactions.

`flockd.chain.node.deploy.ScratchChain` is that chain (the contract tests use it too): blocks
are built with `mine_all`, one per call, with a timestamp of parent + 1 s, so a run is
reproducible to the block hash. There is no mempool, PoA seal or gossip: the simulation
is the only block producer, and each slot's transactions go into one block in the order
they were sent. So that they always fit, the block gas limit is raised from 30M to
SIM_GAS_LIMIT (200 nodes' reveals alone use ~25M); `Sealed.gas_used` tells what a real
chain's blocks would have had to hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import astuple, dataclass, field
from typing import Any

from eth.vm.spoof import SpoofTransaction
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd.chain.client.addresses import DEPLOYER
from flockd.chain.client.artifacts import STAKE_TOKEN, TASK_REGISTRY, load
from flockd.chain.client.registry import TaskParams
from flockd.chain.node import evm_caches
from flockd.chain.node.deploy import (
    GAS_PRICE,
    SCRATCH_GAS_LIMIT,
    ScratchChain,
    TxFailed,
    TxResult,
    revert_reason,
)
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS
from flockd.sim import evm_speed

TOKEN = load(STAKE_TOKEN)
REGISTRY = load(TASK_REGISTRY)
FAUCET_KEY = PrivateKey(keccak(b"flockd sim faucet"))  # holds the whole stake-token supply
TX_GAS = 8_000_000  # a ceiling per transaction; the gas actually used is what is reported
SIM_GAS_LIMIT = 10**9


class _Chain(ScratchChain):
    """ScratchChain executing blocks under SIM_GAS_LIMIT. Only the limit py-evm checks
    while applying transactions is lifted: the sealed header keeps the genesis' 30M (the
    header rule lets a limit move by 1/1024 a block), so a full block's header shows more
    gas used than its limit. Nothing imports these blocks, so nothing else notices."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # Reads at the head: every node reads the same stakes at the same block, so one
        # costless state serves them all (each call reverted to a snapshot, the state's
        # trie and account caches kept) and an exact repeat is answered from `_outputs`.
        # Both are keyed by the head's hash and dropped when a block is mined.
        self._read_head: bytes | None = None
        self._read_vm: Any = None
        self._read_state: Any = None
        self._read_scope = contextlib.ExitStack()
        self._outputs: dict[tuple[bytes, bytes, bytes], bytes] = {}

    def state_overrides(self, base_state: type[Any]) -> dict[str, Any]:
        return {
            "computation_class": evm_speed.fast_computation(base_state.computation_class),
            "account_db_class": evm_speed.unpruned_storage(base_state.account_db_class),
        }

    def mine(self) -> list[TxResult]:
        self.chain.header = self.chain.header.copy(gas_limit=SIM_GAS_LIMIT)
        return super().mine()

    def call(self, to: bytes, data: bytes, sender: bytes = DEPLOYER) -> bytes:
        """ScratchChain.call (eth_call as if in the next block), on a state shared by every
        read at this head."""
        head = self.chain.get_canonical_head()
        if head.hash != self._read_head:
            self._read_scope.close()
            self._read_scope = contextlib.ExitStack()
            self._read_vm = self.chain.get_vm(head)
            self._read_state = self._read_scope.enter_context(self._read_vm.in_costless_state())
            self._read_head = head.hash
            self._outputs.clear()
        key = (to, data, sender)
        if key in self._outputs:
            return self._outputs[key]
        state = self._read_state
        utx = self._read_vm.create_unsigned_transaction(
            nonce=state.get_nonce(sender), gas_price=GAS_PRICE, gas=SCRATCH_GAS_LIMIT, to=to, value=0, data=data,
        )
        snapshot = state.snapshot()
        try:
            computation = state.costless_execute_transaction(SpoofTransaction(utx, from_=sender))
        finally:
            state.revert(snapshot)
        if computation.is_error:
            raise TxFailed(revert_reason(computation))
        self._outputs[key] = computation.output
        return computation.output


class SimError(Exception):
    """The simulation cannot go on (a setup transaction reverted, a node disagrees, ...)."""


@dataclass(frozen=True)
class Sealed:
    """One block: its number and hash, the registry's decoded logs in order, and every
    transaction's (tag, result) in order."""

    number: int
    hash: bytes
    logs: list[tuple[str, dict[str, Any]]]
    results: list[tuple[Any, TxResult]] = field(default_factory=list)

    @property
    def gas_used(self) -> int:
        return sum(r.gas_used for _, r in self.results)

    def failed(self) -> list[tuple[Any, str]]:
        return [(tag, revert_reason(r.computation)) for tag, r in self.results if not r.ok]


class SimChain:
    """Token and registry deployed by a faucet account; every node funded with gas money
    (genesis) and `stake` tokens (a transfer), and approving the registry."""

    def __init__(self, nodes: Sequence[PrivateKey], stake: int) -> None:
        evm_caches.install()
        self.faucet = FAUCET_KEY
        addresses = [k.public_key.to_canonical_address() for k in nodes]
        faucet = self.faucet.public_key.to_canonical_address()
        self.scratch = _Chain(funded=[faucet, *addresses])
        supply = stake * len(nodes)
        self.token = self.scratch.deploy(self.faucet, TOKEN, "flockd stake", "FLOCK", [faucet], [supply])
        self.registry = self.scratch.deploy(self.faucet, REGISTRY, self.token, VRF_PRECOMPILE_ADDRESS)
        self._tags: list[Any] = []
        for address in addresses:
            self._send_token(self.faucet, "transfer", address, stake)
        for key in nodes:
            self._send_token(key, "approve", self.registry, 2**256 - 1)
        self.check(self.seal(), "funding the nodes")

    # -- transactions ------------------------------------------------------------------

    def _send_token(self, key: PrivateKey, fn: str, *args: Any) -> None:
        self.scratch.send(key, self.token, TOKEN.encode_call(fn, *args), gas=TX_GAS)
        self._tags.append(None)

    def send(self, key: PrivateKey, fn: str, *args: Any, tag: Any = None) -> None:
        """Sign a registry call for the next block; `tag` comes back with its result."""
        self.scratch.send(key, self.registry, REGISTRY.encode_call(fn, *args), gas=TX_GAS)
        self._tags.append(tag)

    def seal(self) -> Sealed:
        """One block with every transaction sent since the last one."""
        tags, self._tags = self._tags, []
        results = self.scratch.mine()
        number = self.scratch.block_number
        logs = []
        for result in results:
            for address, topics, data in result.logs():
                if address == self.registry and (decoded := REGISTRY.decode_log(topics, data)):
                    logs.append(decoded)
        return Sealed(number, self.block_hash(number), logs, list(zip(tags, results, strict=True)))

    @staticmethod
    def check(block: Sealed, what: str) -> None:
        for _, reason in block.failed():
            raise SimError(f"{what}: a transaction reverted: {reason}")

    # -- task setup --------------------------------------------------------------------

    def create_task(self, creator: PrivateKey, params: TaskParams, joiners: Sequence[tuple[PrivateKey, bytes]], stake: int) -> int:
        """create_task, every join (stake and VRF public key) and start_task: two blocks.
        Round 0 opens in the second; its logs are left for the caller (use `seal`)."""
        task_id = 1 + int(self.view("task_count"))
        self.send(creator, "create_task", astuple(params))
        for key, vrf_pk in joiners:
            self.send(key, "join", task_id, stake, vrf_pk)
        block = self.seal()
        self.check(block, "creating and joining the task")
        self.send(creator, "start_task", task_id)
        return task_id

    # -- reads -------------------------------------------------------------------------

    def view(self, fn: str, *args: Any) -> Any:
        out = REGISTRY.decode_output(fn, self.scratch.call(self.registry, REGISTRY.encode_call(fn, *args)))
        return out[0] if len(out) == 1 else out

    def block_hash(self, number: int) -> bytes:
        return bytes(self.scratch.block_hash(number))

    @property
    def head(self) -> int:
        return int(self.scratch.block_number)

