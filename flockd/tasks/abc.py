"""The task adapter's face towards the chain: what a TaskRunner reads and sends.

One typed seam between the task runner (its chain feed and executor) and whatever carries the
TaskRegistry: the daemon's contract client (`tasks/registry_chain.py`), the simulation's
in-process py-evm chain (`flockd/sim/task_chain.py`), and the fake chains of the unit
tests. Everything here speaks the registry's terms (task ids, rounds, decoded logs) and
none of a transport's (JSON-RPC, receipts, nonces).

Errors are typed so that the runner can tell what it may recover from: a read that
failed (`ChainReadFailed`, retried on the next poll), a transaction that ran and
reverted (`TxReverted`, final for that step) and one that did not land (`TxNotLanded`,
which the round machine may send again). Anything else a TaskChain raises is a bug.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the seam itself needs no torch
    from flockd.fl.recipe import Metrics
    from flockd.fl.tensors import Tensors


class TaskChainError(Exception):
    """A documented, recoverable failure of the chain seam."""


class ChainReadFailed(TaskChainError):
    """A read could not be answered (node down, timeout, malformed reply): try again later."""


class TxReverted(TaskChainError):
    """The transaction ran and reverted; ``reason`` is the contract's message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TxNotLanded(TaskChainError):
    """The transaction was refused, dropped or not confirmed in time: it may be sent again."""


@dataclass(frozen=True)
class TaskLog:
    """One TaskRegistry log of a task, decoded, with the block it is in (number and hash:
    the hash is what tells a reorganised log from a canonical one)."""

    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: bytes


@dataclass(frozen=True)
class RoundStart:
    """Where the task stands at a block: its newest opened round and the block that opened
    it (``open_block`` None: no round open yet at that block)."""

    current_round: int
    open_block: int | None


class TaskChain(ABC):
    """The chain as one task runner sees it. Every read may raise ChainReadFailed."""

    @abstractmethod
    async def head(self) -> int:
        """The newest block's number."""

    @abstractmethod
    async def block_hash(self, number: int) -> bytes | None:
        """The canonical hash of block ``number``; None if the chain has no such block."""

    @abstractmethod
    async def task_logs(self, task_id: int, first: int, last: int) -> list[TaskLog]:
        """The registry logs of ``task_id`` in blocks [first, last], in chain order."""

    @abstractmethod
    async def round_start(self, task_id: int, round_number: int | None, at_block: int) -> RoundStart:
        """The task's state as of block ``at_block``: its current round, and the open block
        of ``round_number`` (of the current round when None)."""

    @abstractmethod
    async def stakes(self, task_id: int, who: bytes) -> tuple[int, int]:
        """(who's stake, the task's total stake) now, for the sortition."""

    @abstractmethod
    async def transact(self, fn: str, task_id: int, round_number: int, *args: Any) -> int:
        """Send registry call ``fn(task_id, round_number, *args)`` signed by this node, wait
        until it lands, and return its gas used. Raises TxReverted or TxNotLanded."""


class TaskWork(Protocol):
    """The learning a task's actions ask of the node: `tasks/work.py:Worker` (the daemon and
    the simulation), arithmetic in the unit tests. Called in worker threads."""

    def initial_model(self) -> Tensors: ...

    def train(self, base: Tensors, round_number: int) -> bytes: ...

    def score(
        self, base: Tensors, deltas: Sequence[bytes | None], proposers: Sequence[bytes], whole_round: bool,
        round_number: int,
    ) -> tuple[int, ...]: ...

    def aggregate(self, base: Tensors, deltas: Sequence[bytes]) -> Tensors: ...

    def evaluate_test(self, state: Tensors) -> Metrics: ...
