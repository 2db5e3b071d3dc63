"""Fetching what a competition needs from peers over the existing blob streams: models by
hash (the tasks' `fl.fetch.1`) and the evaluation set (`arena.eval.1`). Every reply is
checked by the caller's `accept` before it is kept; a peer whose reply fails it is
penalised and the next one asked."""

from __future__ import annotations

from collections.abc import Callable

import trio

from flockd.arena.exchange import (
    EVAL_KIND,
    EvalExchangeError,
    decode_eval_reply,
    encode_eval_request,
)
from flockd.arena.spec import MAX_EVAL_BYTES, ArenaSpecError
from flockd.p2p.abc import P2PError, P2PNetwork
from flockd.p2p.blobs import BlobError
from flockd.tasks.exchange import FETCH_KIND, FetchRequest, encode_fetch

BAD_REPLY_POINTS = 10.0


def _ordered(network: P2PNetwork, prefer: bytes | None) -> list[str]:
    """Peer ids, the one whose address is `prefer` first (the holder we expect)."""
    peers = network.peers()
    first = [p.peer_id for p in peers if prefer is not None and p.address.lower() == "0x" + prefer.hex()]
    return first + [p.peer_id for p in peers if p.peer_id not in first]


async def _ask_until_accepted(
    network: P2PNetwork, kind: str, request: bytes, prefer: bytes | None, accept: Callable[[bytes], object], what: str
) -> bytes | None:
    """The first reply, peer by peer, that `accept` (run in a worker thread: it hashes)
    takes; a peer whose reply it refuses is penalised."""
    for peer_id in _ordered(network, prefer):
        try:
            reply = await network.send_blob(peer_id, kind, request)
        except (P2PError, BlobError):
            continue
        if not reply:
            continue
        try:
            await trio.to_thread.run_sync(accept, reply)
        except (EvalExchangeError, ArenaSpecError) as exc:
            network.penalize_peer(peer_id, BAD_REPLY_POINTS, f"{what}: {exc}")
            continue
        return reply
    return None


async def fetch_model(network: P2PNetwork, digest: bytes, prefer: bytes | None, accept: Callable[[bytes], object]) -> bytes | None:
    """The bytes of model `digest` from the first peer whose reply `accept` takes; None
    when no peer has it."""
    request = encode_fetch(FetchRequest("model", digest))
    return await _ask_until_accepted(network, FETCH_KIND, request, prefer, accept, f"arena model {digest.hex()[:12]}")


async def fetch_eval_set(
    network: P2PNetwork, competition_id: int, prefer: bytes | None, accept: Callable[[bytes, bytes], object]
) -> tuple[bytes, bytes] | None:
    """(salt, bytes) of the evaluation set from the first peer whose reply `accept` takes."""

    def decode_and_accept(reply: bytes) -> None:
        accept(*decode_eval_reply(reply, MAX_EVAL_BYTES))

    request = encode_eval_request(competition_id)
    reply = await _ask_until_accepted(network, EVAL_KIND, request, prefer, decode_and_accept, f"arena eval set {competition_id}")
    return None if reply is None else decode_eval_reply(reply, MAX_EVAL_BYTES)
