"""The evaluation set between peers, over the p2p blob streams.

    arena.eval.1   request: msgpack competition_id (uint)  -> msgpack [salt(32), set bytes], or no reply

Before the set is published on chain its holder (the creator) answers only the elected
validators of that competition, once the submissions are revealed (the score-commit
phase); after publication any holder answers anyone, so anyone can recompute the scores.
The requester checks the bytes against the on-chain commitment (or published hash)
before using them. protocol/spec/transfer.md, "Arena evaluation set".
"""

from __future__ import annotations

import msgpack

EVAL_KIND = "arena.eval.1"
MAX_EVAL_REQUEST = 16


class EvalExchangeError(ValueError):
    """A malformed evaluation-set request or reply."""


def encode_eval_request(competition_id: int) -> bytes:
    return msgpack.packb(competition_id)


def decode_eval_request(data: bytes) -> int:
    if len(data) > MAX_EVAL_REQUEST:
        raise EvalExchangeError("request too large")
    try:
        cid = msgpack.unpackb(data, max_array_len=0, max_map_len=0, max_str_len=0, max_bin_len=0)
    except Exception as exc:
        raise EvalExchangeError(f"undecodable request: {exc}") from None
    if type(cid) is not int or not 0 < cid < 2**256:
        raise EvalExchangeError("a request is a competition id")
    return cid


def encode_eval_reply(salt: bytes, data: bytes) -> bytes:
    return msgpack.packb([salt, data], use_bin_type=True)


def decode_eval_reply(reply: bytes, max_bytes: int) -> tuple[bytes, bytes]:
    try:
        obj = msgpack.unpackb(reply, raw=False, max_array_len=2, max_str_len=0, max_bin_len=max_bytes)
    except Exception as exc:
        raise EvalExchangeError(f"undecodable reply: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 2 and all(isinstance(v, bytes) for v in obj) and len(obj[0]) == 32):
        raise EvalExchangeError("a reply is [salt32, bytes]")
    return obj[0], obj[1]
