"""Views whose output is checked against the bounds the contract keeps.

ABI decoding alone accepts any value its type can hold: a wrong or hostile chain node can
answer a phase of 200, a million trainers or a pool with more locked than staked, and a
caller that trusts the type indexes out of range or divides by zero. A view here fails
with MalformedView instead, the same ChainError family as an undecodable reply, and
refuses an oversized reply before decoding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import BlockTag
from flockd.chain.client.registry import Contract

T = TypeVar("T")
# The Arena's largest view (get_submissions at MAX_TRAINERS) encodes to under 6 KiB.
MAX_VIEW_BYTES = 64 * 1024


class MalformedView(ChainError):
    """A view's output decodes but breaks a bound the contract keeps."""


class CheckedContract(Contract):
    """A contract whose views refuse replies longer than MAX_VIEW_BYTES before decoding."""

    async def view(self, fn: str, *args: Any, block: BlockTag = "pending") -> Any:
        raw = await self.client.call(self.address, self.artifact.encode_call(fn, *args), block=block)
        if len(raw) > MAX_VIEW_BYTES:
            raise MalformedView(f"{self.artifact.name}.{fn}: {len(raw)} bytes of output, at most {MAX_VIEW_BYTES}")
        return self.decode_view(fn, raw)


def within(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise MalformedView(f"{what} = {value}, outside [{low}, {high}]")
    return value


def at_most(what: str, items: Sequence[T], limit: int) -> list[T]:
    if len(items) > limit:
        raise MalformedView(f"{what}: {len(items)} items, at most {limit}")
    return list(items)
