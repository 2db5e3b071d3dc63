"""The simulation's chain behind the task adapter's seam (`flockd.tasks.abc.TaskChain`), so
a daemon's TaskRunner can run on the in-process py-evm chain with the real contracts.

`SimBlocks` owns the sealing: every block sealed through it is kept (its registry logs and
its transactions' results), and a transaction's sender waits until the block holding it
is sealed. `SimTaskChain` is one node's view: reads from the kept blocks and the
registry's views, transactions signed with the node's key.
"""

from __future__ import annotations

from typing import Any

import trio
from eth_keys.datatypes import PrivateKey

from flockd.chain.node.deploy import TxResult, revert_reason
from flockd.sim.chain import Sealed, SimChain
from flockd.tasks.abc import RoundStart, TaskChain, TaskLog, TxReverted


class SimBlocks:
    def __init__(self, chain: SimChain) -> None:
        self.chain = chain
        self.logs: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._results: dict[object, TxResult] = {}
        self._sealed = trio.Event()

    def seal(self) -> Sealed:
        """One block with every transaction sent since the last one."""
        block = self.chain.seal()
        self.logs[block.number] = block.logs
        for tag, result in block.results:
            if tag is not None:
                self._results[tag] = result
        self._sealed.set()
        self._sealed = trio.Event()
        return block

    async def seal_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            self.seal()

    async def result(self, tag: object) -> TxResult:
        while tag not in self._results:
            await self._sealed.wait()
        return self._results.pop(tag)


class SimTaskChain(TaskChain):
    def __init__(self, blocks: SimBlocks, key: PrivateKey) -> None:
        self.blocks = blocks
        self.chain = blocks.chain
        self.key = key

    async def head(self) -> int:
        return self.chain.head

    async def block_hash(self, number: int) -> bytes | None:
        return self.chain.block_hash(number) if 0 <= number <= self.chain.head else None

    async def task_logs(self, task_id: int, first: int, last: int) -> list[TaskLog]:
        out = []
        for number in range(first, last + 1):
            for name, args in self.blocks.logs.get(number, ()):
                if args.get("task_id") == task_id:
                    out.append(TaskLog(name, args, number, self.chain.block_hash(number)))
        return out

    async def round_start(self, task_id: int, round_number: int | None, at_block: int) -> RoundStart:
        opened = {
            args["round"]: args["open_block"]
            for number, logs in self.blocks.logs.items() if number <= at_block
            for name, args in logs if name == "RoundOpened" and args.get("task_id") == task_id
        }
        current = max(opened, default=0)
        return RoundStart(current, opened.get(current if round_number is None else round_number))

    async def stakes(self, task_id: int, who: bytes) -> tuple[int, int]:
        stake = int(self.chain.view("get_participant", task_id, who)[2])
        total = int(self.chain.view("get_state", task_id)[3])
        return stake, total

    async def transact(self, fn: str, task_id: int, round_number: int, *args: Any) -> int:
        tag = object()
        self.chain.send(self.key, fn, task_id, round_number, *args, tag=tag)
        result = await self.blocks.result(tag)
        if not result.ok:
            raise TxReverted(revert_reason(result.computation))
        return int(result.gas_used)
