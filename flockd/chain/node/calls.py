"""eth_call and eth_estimateGas under a deadline that really stops the EVM.

py-evm runs in Python, so a worker thread running a call cannot be killed, and a call
without a deadline can loop for as long as its gas lasts (a jump loop burns 30M gas in
~10 s). The calls here run on a subclass of the chain's VM whose loop- and call-making
opcodes (JUMP, JUMPI, the CALL and CREATE family) first check the caller's budget and
raise `CallAborted` once it is spent. Code without those opcodes runs straight through at
most one contract's length per frame, so between two checks the EVM does bounded work.

`CallAborted` is not a VMError: py-evm's computations catch VMErrors frame by frame, but
let any other exception unwind the whole call, and a call only changes a throwaway state.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from eth.abc import BlockHeaderAPI, OpcodeAPI, SignedTransactionAPI
from eth.vm import opcode_values
from eth.vm.chain_context import ChainContext

from flockd.chain.node.poa import FlockChainBase

# The opcodes that make a call run long: loops need a jump, and every frame starts at a call.
CHECKED_OPCODES = frozenset({
    opcode_values.JUMP, opcode_values.JUMPI,
    opcode_values.CALL, opcode_values.CALLCODE, opcode_values.DELEGATECALL, opcode_values.STATICCALL,
    opcode_values.CREATE, opcode_values.CREATE2,
})


class CallAborted(Exception):
    """The call ran out of time, or the node is stopping."""


@dataclass(frozen=True)
class CallBudget:
    """How long one call (or one whole gas estimate) may run, on the monotonic clock."""

    deadline: float
    stop: threading.Event = field(default_factory=threading.Event)  # set: abort now

    @classmethod
    def seconds(cls, timeout: float, stop: threading.Event | None = None) -> CallBudget:
        return cls(time.monotonic() + timeout, stop if stop is not None else threading.Event())

    def check(self) -> None:
        if self.stop.is_set():
            raise CallAborted("execution aborted: the node is stopping")
        if time.monotonic() > self.deadline:
            raise CallAborted("execution aborted: the call ran out of time")


_budget: contextvars.ContextVar[CallBudget | None] = contextvars.ContextVar("flockd_call_budget", default=None)


class _BudgetChecked:
    """An opcode that checks the running call's budget before it executes."""

    def __init__(self, opcode: OpcodeAPI) -> None:
        self.__wrapped__ = opcode
        self.mnemonic = opcode.mnemonic  # py-evm's debug log reads it

    def __call__(self, computation: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.check()
        return self.__wrapped__(computation=computation)


@functools.cache
def budgeted_vm_class(vm_class: type[Any]) -> type[Any]:
    """A subclass of `vm_class` whose computations check the call budget (the stock classes
    and the chain's own VM, which seals and imports, stay untouched)."""
    state_class = vm_class.get_state_class()
    base_computation = state_class.computation_class
    opcodes = {
        value: _BudgetChecked(op) if value in CHECKED_OPCODES else op
        for value, op in base_computation.opcodes.items()
    }
    computation_class = type(f"Budgeted{base_computation.__name__}", (base_computation,), {"opcodes": opcodes})
    new_state_class = type(f"Budgeted{state_class.__name__}", (state_class,), {"computation_class": computation_class})
    return cast(type[Any], vm_class.configure(__name__=f"Budgeted{vm_class.__name__}", _state_class=new_state_class))


def _budgeted_vm(chain: FlockChainBase, header: BlockHeaderAPI) -> Any:
    vm_class = budgeted_vm_class(chain.get_vm_class_for_block_number(header.block_number))
    return vm_class(
        header=header,
        chaindb=chain.chaindb,
        chain_context=ChainContext(chain.chain_id),
        consensus_context=chain.consensus_context,
    )


def execute_call(chain: FlockChainBase, header: BlockHeaderAPI, tx: SignedTransactionAPI, budget: CallBudget) -> bytes:
    """The output of `tx` run on the state after `header` (as Chain.get_transaction_result).
    Raises CallAborted past the budget, a VMError when the EVM fails or reverts."""
    token = _budget.set(budget)
    try:
        with _budgeted_vm(chain, header).in_costless_state() as state:
            computation = state.costless_execute_transaction(tx)
    finally:
        _budget.reset(token)
    computation.raise_if_error()
    return cast(bytes, computation.output)


def estimate_call_gas(chain: FlockChainBase, header: BlockHeaderAPI, tx: SignedTransactionAPI, budget: CallBudget) -> int:
    """The gas `tx` needs (as Chain.estimate_gas); the budget covers the whole search."""
    token = _budget.set(budget)
    try:
        with _budgeted_vm(chain, header).in_costless_state() as state:
            return cast(int, chain.gas_estimator(state, tx))
    finally:
        _budget.reset(token)
