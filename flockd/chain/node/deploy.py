"""Contracts at genesis: run the constructors on a scratch chain and dump the accounts.

The embedded chain starts with the stake token and the task registry already
deployed at fixed addresses. `genesis_contracts()` produces their accounts by
executing the real constructors (from the checked-in artifacts) on a throwaway
in-memory py-evm chain that has the VRF precompile, from a fixed deployer, and
reading back code and every storage slot the constructors wrote.

On an external chain the contract client deploys with ordinary transactions
instead; constructor arguments (see protocol/spec/contracts.md):
    StakeToken(name: string, symbol: string, holders: address[], amounts: uint256[])
    TaskRegistry(stake_token: address, verifier: address)

`ScratchChain` is that throwaway chain; the contract tests and the gas table use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from eth import constants
from eth.abc import ComputationAPI, SignedTransactionAPI
from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.vm.forks.london.headers import calculate_expected_base_fee_per_gas
from eth.vm.forks.prague import PragueVM
from eth_abi import decode as abi_decode
from eth_keys.datatypes import PrivateKey
from eth_utils import to_canonical_address

from flockd.chain.client.addresses import (
    ARENA_ADDRESS,
    DEPLOYER,
    DEPLOYER_KEY,
    STAKE_TOKEN_ADDRESS,
    TASK_REGISTRY_ADDRESS,
    contract_address,
)
from flockd.chain.client.artifacts import ARENA, STAKE_TOKEN, TASK_REGISTRY, Artifact, load
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS, with_vrf_precompile

TOKEN_NAME = "flockd stake"
TOKEN_SYMBOL = "FLOCK"
MAX_TOKEN_HOLDERS = 64

SCRATCH_CHAIN_ID = 1337
SCRATCH_GAS_LIMIT = 30_000_000
GAS_PRICE = 10**9
ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)


class GenesisAccount(TypedDict):
    code: bytes
    storage: dict[int, int]
    balance: int
    nonce: int


class TxFailed(Exception):
    """A transaction or call reverted (or ran out of gas)."""

    def __init__(self, reason: str, gas_used: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gas_used = gas_used


def revert_reason(computation: ComputationAPI) -> str:
    """The Error(string) message of a failed computation, else the error's name."""
    error = computation.error
    data = error.args[0] if error.args and isinstance(error.args[0], bytes) else b""
    if data[:4] == ERROR_SELECTOR:
        return str(abi_decode(["string"], data[4:])[0])
    return type(error).__name__


@dataclass
class TxResult:
    computation: ComputationAPI
    gas_used: int

    @property
    def ok(self) -> bool:
        return not self.computation.is_error

    @property
    def output(self) -> bytes:
        return self.computation.output

    def logs(self) -> list[tuple[bytes, list[bytes], bytes]]:
        """(address, topics, data) of every log, in order."""
        return [
            (addr, [t.to_bytes(32, "big") for t in topics], data)
            for addr, topics, data in self.computation.get_log_entries()
        ]

    def check(self) -> TxResult:
        if not self.ok:
            raise TxFailed(revert_reason(self.computation), self.gas_used)
        return self


@dataclass
class ScratchChain:
    """A tiny in-memory PragueVM chain with the VRF precompile; one block per `mine()`."""

    funded: Sequence[bytes]
    balance: int = 10**24
    alloc: dict[bytes, GenesisAccount] = field(default_factory=dict)  # extra genesis accounts
    written: set[tuple[bytes, int]] = field(default_factory=set)

    def __post_init__(self) -> None:
        written = self.written
        base_vm = with_vrf_precompile(PragueVM)
        base_state = base_vm.get_state_class()

        def set_storage(state: Any, address: bytes, slot: int, value: int) -> None:
            # py-evm's storage trie keys are hashed: keep the preimages for dumping
            written.add((address, slot))
            base_state.set_storage(state, address, slot, value)

        state_class = type("RecordingState", (base_state,), {"set_storage": set_storage, **self.state_overrides(base_state)})
        vm_class = base_vm.configure(__name__="ScratchVM", _state_class=state_class)
        chain_class = MiningChain.configure(
            __name__="ScratchChain", vm_configuration=((0, vm_class),), chain_id=SCRATCH_CHAIN_ID
        )
        genesis_params: dict[str, Any] = {
            "difficulty": 0,
            "gas_limit": SCRATCH_GAS_LIMIT,
            "timestamp": 1_700_000_000,
            "coinbase": constants.ZERO_ADDRESS,
        }
        state: dict[Any, Any] = {
            addr: {"balance": self.balance, "nonce": 0, "code": b"", "storage": {}}
            for addr in self.funded
        }
        state.update({addr: dict(account) for addr, account in self.alloc.items()})
        # py-evm's stubs want Address/BlockNumber newtypes everywhere: keep the chain Any
        self.chain: Any = chain_class.from_genesis(AtomicDB(), genesis_params, state)
        self._pending: list[SignedTransactionAPI] = []
        self._nonces: dict[bytes, int] = {}

    def state_overrides(self, base_state: type[Any]) -> dict[str, Any]:
        """Attributes this chain's VM state class replaces on py-evm's: none (a subclass may
        run a faster equivalent, as the simulation's does)."""
        return {}

    @property
    def block_number(self) -> int:
        """Number of the latest mined block (the next tx lands in block_number + 1)."""
        return self.chain.get_canonical_head().block_number

    def state(self) -> Any:
        return self.chain.get_vm().state

    def _next_nonce(self, sender: bytes) -> int:
        if sender not in self._nonces:
            self._nonces[sender] = self.state().get_nonce(sender)
        nonce = self._nonces[sender]
        self._nonces[sender] = nonce + 1
        return nonce

    def send(self, key: PrivateKey, to: bytes, data: bytes, gas: int = 8_000_000) -> None:
        """Queue a transaction for the next `mine()`; `to=b""` creates a contract."""
        sender = key.public_key.to_canonical_address()
        vm: Any = self.chain.get_vm()
        utx = vm.create_unsigned_transaction(
            nonce=self._next_nonce(sender), gas_price=self.gas_price(), gas=gas, to=to, value=0, data=data
        )
        signed = utx.as_signed_transaction(key, chain_id=SCRATCH_CHAIN_ID)
        # the builder's legacy tx does not RLP-encode inside a Prague block: round-trip it
        tx = vm.get_transaction_builder().decode(signed.encode())
        # We signed it, so its sender is ours: py-evm's cached `sender` is set rather than
        # recovered from the signature (~0.2 ms a transaction; the signature itself is
        # still checked when the transaction is applied).
        tx.__dict__["sender"] = sender
        self._pending.append(tx)

    def gas_price(self) -> int:
        """GAS_PRICE, or the next block's base fee when blocks fuller than the 15M target
        have pushed it above that (200 simulated nodes' rounds do within a few rounds).
        A chain whose base fee never gets there, which is every chain that could run
        before (py-evm refused the rest), keeps its transactions and block hashes."""
        return max(GAS_PRICE, calculate_expected_base_fee_per_gas(self.chain.get_canonical_head()))

    def mine(self) -> list[TxResult]:
        """Seal one block holding every queued transaction, in order."""
        txs, self._pending = self._pending, []
        _, receipts, computations = self.chain.mine_all(txs, **self._next_header())
        results, previous = [], 0
        for receipt, computation in zip(receipts, computations, strict=True):
            results.append(TxResult(computation, receipt.gas_used - previous))
            previous = receipt.gas_used  # receipts carry cumulative gas
        return results

    def mine_empty(self, n: int) -> None:
        for _ in range(n):
            self.chain.mine_all([], **self._next_header())

    def _next_header(self) -> dict[str, int]:
        # one second per block regardless of the wall clock: the chain, its block
        # hashes and so every round seed are the same on every run
        parent = self.chain.get_canonical_head()
        return {"gas_limit": SCRATCH_GAS_LIMIT, "timestamp": parent.timestamp + 1}

    def block_hash(self, number: int) -> bytes:
        return self.chain.get_canonical_block_header_by_number(number).hash

    def transact(self, key: PrivateKey, to: bytes, data: bytes, gas: int = 8_000_000) -> TxResult:
        """Send one transaction in a block of its own."""
        assert not self._pending, "queued transactions would share the block"
        self.send(key, to, data, gas)
        return self.mine()[0]

    def deploy(self, key: PrivateKey, artifact: Artifact, *args: Any) -> bytes:
        sender = key.public_key.to_canonical_address()
        address = contract_address(sender, self.state().get_nonce(sender))
        self.transact(key, b"", artifact.deploy_data(*args)).check()
        return address

    def call(self, to: bytes, data: bytes, sender: bytes = DEPLOYER) -> bytes:
        """eth_call as if in the next block (the one a transaction sent now lands in);
        a revert raises TxFailed."""
        from eth.vm.spoof import SpoofTransaction

        # py-evm's costless state is a child of the header given: the head's child
        head = self.chain.get_canonical_head()
        vm: Any = self.chain.get_vm(head)
        with vm.in_costless_state() as state:
            utx = vm.create_unsigned_transaction(
                nonce=state.get_nonce(sender), gas_price=GAS_PRICE, gas=SCRATCH_GAS_LIMIT,
                to=to, value=0, data=data,
            )
            computation = state.costless_execute_transaction(SpoofTransaction(utx, from_=sender))
        if computation.is_error:
            raise TxFailed(revert_reason(computation))
        return computation.output

    def dump(self, address: bytes) -> GenesisAccount:
        state = self.state()
        storage = {
            slot: value
            for addr, slot in sorted(self.written)
            if addr == address and (value := state.get_storage(address, slot)) != 0
        }
        return GenesisAccount(
            code=state.get_code(address),
            storage=storage,
            balance=state.get_balance(address),
            nonce=state.get_nonce(address),
        )


def genesis_contracts(
    token_holders: dict[bytes, int],
    *,
    token_name: str = TOKEN_NAME,
    token_symbol: str = TOKEN_SYMBOL,
    verifier: bytes = VRF_PRECOMPILE_ADDRESS,
    arena: bool = False,
) -> dict[bytes, GenesisAccount]:
    """Genesis accounts {address: {code, storage, balance, nonce}} of the stake token
    (at STAKE_TOKEN_ADDRESS, supply minted to `token_holders`) and the task registry
    (at TASK_REGISTRY_ADDRESS, verifying VRF proofs at `verifier`), and with `arena` the
    Arena too (at ARENA_ADDRESS, deployed last so the other two are the same bytes with
    or without it). The embedded chain runs no contract created later: the daemon's
    network genesis asks for the Arena (flockd.chain.node.network); flockd.sim's chain
    and the contract tests' scratch chains do not, so their block hashes and VRF draws
    stay as they were."""
    if len(token_holders) > MAX_TOKEN_HOLDERS:
        raise ValueError(f"at most {MAX_TOKEN_HOLDERS} token holders at genesis")
    holders = sorted(to_canonical_address(a) for a in token_holders)
    amounts = [token_holders[a] for a in holders]
    scratch = ScratchChain(funded=[DEPLOYER])
    token = scratch.deploy(DEPLOYER_KEY, load(STAKE_TOKEN), token_name, token_symbol, holders, amounts)
    registry = scratch.deploy(DEPLOYER_KEY, load(TASK_REGISTRY), token, verifier)
    assert (token, registry) == (STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS)
    accounts = {token: scratch.dump(token), registry: scratch.dump(registry)}
    if arena:
        address = scratch.deploy(DEPLOYER_KEY, load(ARENA), token, verifier)
        assert address == ARENA_ADDRESS
        accounts[address] = scratch.dump(address)
    return accounts
