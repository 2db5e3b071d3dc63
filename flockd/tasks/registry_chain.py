"""The daemon's TaskChain: the TaskRegistry through its contract client (embedded chain
or any external node, whichever backend the client has)."""

from __future__ import annotations

from typing import Any

from flockd.chain.client.backends import ChainError, data
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.registry import Registry
from flockd.tasks.abc import (
    ChainReadFailed,
    RoundStart,
    TaskChain,
    TaskLog,
    TxNotLanded,
    TxReverted,
)


class RegistryChain(TaskChain):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def head(self) -> int:
        try:
            return await self.registry.client.block_number()
        except ChainError as exc:
            raise ChainReadFailed(f"block number: {exc}") from exc

    async def block_hash(self, number: int) -> bytes | None:
        try:
            block = await self.registry.client.backend.request("eth_getBlockByNumber", [hex(number), False])
            if block is None:
                return None
            if not isinstance(block, dict):
                raise ChainReadFailed(f"block {number}: not a block object")
            return data(block.get("hash"), "block hash", 32)
        except ChainError as exc:
            raise ChainReadFailed(f"block {number}: {exc}") from exc

    async def task_logs(self, task_id: int, first: int, last: int) -> list[TaskLog]:
        try:
            events = await self.registry.events(first, last)
        except ChainError as exc:
            raise ChainReadFailed(f"logs of blocks {first}..{last}: {exc}") from exc
        return [
            TaskLog(e.name, e.args, e.log.block_number, e.log.block_hash)
            for e in events
            if e.args.get("task_id") == task_id
        ]

    async def round_start(self, task_id: int, round_number: int | None, at_block: int) -> RoundStart:
        try:
            state = await self.registry.view("get_state", task_id, block=at_block)
            current = int(state[2])
            r = current if round_number is None else round_number
            info = await self.registry.view("get_round", task_id, r, block=at_block)
        except ChainError as exc:
            raise ChainReadFailed(f"task {task_id} at block {at_block}: {exc}") from exc
        open_block = int(info[0])
        return RoundStart(current, open_block or None)

    async def stakes(self, task_id: int, who: bytes) -> tuple[int, int]:
        try:
            participant = await self.registry.get_participant(task_id, who)
            state = await self.registry.get_state(task_id)
        except ChainError as exc:
            raise ChainReadFailed(f"stakes of task {task_id}: {exc}") from exc
        return participant.stake, state.total_stake

    async def transact(self, fn: str, task_id: int, round_number: int, *args: Any) -> int:
        try:
            receipt = await self.registry.transact(fn, task_id, round_number, *args)
        except ContractRevert as exc:
            raise TxReverted(exc.reason) from exc
        except ChainError as exc:
            raise TxNotLanded(f"{type(exc).__name__}: {exc}") from exc
        return receipt.gas_used
