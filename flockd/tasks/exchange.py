"""Deltas and models between peers, over the p2p blob streams.

    fl.delta.1   push: msgpack [task_id, round, proposer(20 bytes), delta]  -> no reply
    fl.fetch.1   pull: msgpack ["delta" | "model", hash32]                  -> the bytes, or no reply

Nothing received is trusted: a push is admitted only under the rules of
flockd.tasks.pushes (participants, one per sender and round, the model's size, a byte
budget), then handed to the round machine, which keeps it only if it hashes to the
proposer's on-chain commitment; a fetched one is checked against the hash it was asked
for before it is stored. protocol/spec/transfer.md has the rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack

DELTA_KIND = "fl.delta.1"
FETCH_KIND = "fl.fetch.1"
MAX_FETCH_REQUEST = 64
PUSH_OVERHEAD = 64  # the msgpack array, task id, round and proposer around a pushed delta
_MAX_SAMPLES = 2**32 - 1  # protocol/spec/delta.md §2: the widest `n` a header can carry


class ExchangeError(ValueError):
    """A malformed push or fetch request."""


@dataclass(frozen=True)
class DeltaPush:
    task_id: int
    round: int
    proposer: bytes
    delta: bytes


@dataclass(frozen=True)
class FetchRequest:
    what: str  # "delta" | "model"
    digest: bytes


def encode_push(push: DeltaPush) -> bytes:
    return msgpack.packb([push.task_id, push.round, push.proposer, push.delta], use_bin_type=True)


def decode_push(data: bytes | bytearray) -> DeltaPush:
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=len(data), max_array_len=4, max_str_len=0)
    except Exception as exc:
        raise ExchangeError(f"undecodable delta push: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 4):
        raise ExchangeError("a delta push is [task_id, round, proposer, delta]")
    task_id, round_number, proposer, delta = obj
    if type(task_id) is not int or type(round_number) is not int or task_id < 0 or round_number < 0:
        raise ExchangeError("task_id and round must be non-negative integers")
    if not (isinstance(proposer, bytes) and len(proposer) == 20 and isinstance(delta, bytes) and delta):
        raise ExchangeError("proposer must be 20 bytes and delta non-empty bytes")
    return DeltaPush(task_id, round_number, proposer, delta)


def max_delta_bytes(layout: Mapping[str, Sequence[int]]) -> int:
    """The largest valid encoding of a delta for a model of this layout (delta.md §2): top-k
    keeping every entry (a u32 index and a float32 per value) under the widest header. A
    push longer than this cannot hold a delta the round would accept."""
    names = sorted(layout)
    sizes = [math.prod(layout[name]) for name in names]
    header = msgpack.packb(
        {
            "v": 1,
            "kind": "delta",
            "enc": "topk",
            "n": _MAX_SAMPLES,
            "names": names,
            "dtypes": ["float32"] * len(names),
            "shapes": [list(layout[name]) for name in names],
            "counts": sizes,
        },
        use_bin_type=True,
    )
    return 8 + len(header) + 8 * sum(sizes)


def encode_fetch(request: FetchRequest) -> bytes:
    return msgpack.packb([request.what, request.digest], use_bin_type=True)


def decode_fetch(data: bytes) -> FetchRequest:
    if len(data) > MAX_FETCH_REQUEST:
        raise ExchangeError("fetch request too large")
    try:
        obj = msgpack.unpackb(data, raw=False, max_array_len=2, max_str_len=8, max_bin_len=32)
    except Exception as exc:
        raise ExchangeError(f"undecodable fetch request: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and obj[0] in ("delta", "model")):
        raise ExchangeError('a fetch request is ["delta" | "model", hash32]')
    if not (isinstance(obj[1], bytes) and len(obj[1]) == 32):
        raise ExchangeError("fetch hash must be 32 bytes")
    return FetchRequest(obj[0], obj[1])
