"""Deltas and models between peers, over the p2p blob streams.

    fl.delta.1   push: msgpack [task_id, round, proposer(20 bytes), delta]  -> no reply
    fl.fetch.1   pull: msgpack ["delta" | "model", hash32]                  -> the bytes, or no reply

Nothing received is trusted: a pushed delta is handed to the round machine, which keeps
it only if it hashes to the proposer's on-chain commitment; a fetched one is checked
against the hash it was asked for before it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

DELTA_KIND = "fl.delta.1"
FETCH_KIND = "fl.fetch.1"
MAX_DELTA_BYTES = 64 * 1024 * 1024
MAX_FETCH_REQUEST = 64


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


def decode_push(data: bytes) -> DeltaPush:
    try:
        obj = msgpack.unpackb(data, raw=False, max_bin_len=MAX_DELTA_BYTES, max_array_len=4, max_str_len=0)
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
