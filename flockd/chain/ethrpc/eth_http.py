"""The embedded chain's Ethereum JSON-RPC over HTTP on 127.0.0.1, for web3.py and other tools.

An ASGI app served by hypercorn (flockd.asgi). A web page in the user's browser can send
requests to 127.0.0.1 too, so before any work it checks, as geth does:
- Host (`[chain] http_vhosts`, geth's --http.vhosts): a name must be on the list, which
  defeats DNS rebinding; an IP address is always allowed (a rebinding page uses a name).
- Origin (`[chain] http_corsdomain`, geth's --http.corsdomain): a request from a browser
  page (it carries Origin) is refused unless its origin is listed; by default none is.
- Content-Type must be application/json: a browser cannot send that cross-origin without a
  CORS preflight, which fails for origins not on the list.
Then the body (at most MAX_BODY) goes to `EthAPI.handle_body` in a worker thread, at most
HTTP_WORKERS at a time, so HTTP clients together hold at most that many threads of work;
at most MAX_PENDING requests wait or run at once (bodies held in memory), more get 503.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from flockd.asgi import (
    Receive,
    Scope,
    Send,
    header_values,
    host_allowed,
    lifespan,
    respond,
    serve_asgi,
)
from flockd.chain.ethrpc.eth_api import EthAPI

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

MAX_BODY = 1024 * 1024  # a raw tx is <= 128 KiB; batches stay well under this
HTTP_WORKERS = 2
MAX_PENDING = 64
PREFLIGHT_MAX_AGE = "600"
_JSON = [(b"content-type", b"application/json")]


@dataclass(frozen=True)
class HTTPAccess:
    """Who may use the endpoint: Host names (geth's vhosts) and browser origins (corsdomain).
    "*" in either list allows any."""

    vhosts: tuple[str, ...] = ("localhost",)
    cors_origins: tuple[str, ...] = ()

    def host_allowed(self, host: str) -> bool:
        return host_allowed(host, self.vhosts)

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.cors_origins or origin.lower().rstrip("/") in (
            o.lower().rstrip("/") for o in self.cors_origins
        )


class EthHTTPApp:
    """The ASGI app: the checks above, then one JSON-RPC body in, one reply out."""

    def __init__(self, api: EthAPI, access: HTTPAccess, *, max_pending: int = MAX_PENDING) -> None:
        self.api = api
        self.access = access
        self.max_pending = max_pending
        self.pending = 0
        self._workers = trio.CapacityLimiter(HTTP_WORKERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served
        hosts = header_values(scope, b"host")
        if len(hosts) != 1 or not self.access.host_allowed(hosts[0].decode("latin-1")):
            await _refuse(send, 403, "invalid host specified")
            return
        origins = header_values(scope, b"origin")
        origin = origins[0].decode("latin-1") if len(origins) == 1 else None
        if origins and (origin is None or not self.access.origin_allowed(origin)):
            await _refuse(send, 403, "origin not allowed")
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"origin")] if origin else []
        if scope["method"] == "OPTIONS" and origin:
            await respond(send, 204, b"", [
                *cors,
                (b"access-control-allow-methods", b"POST, OPTIONS"),
                (b"access-control-allow-headers", b"content-type"),
                (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            ])
            return
        if scope["method"] != "POST":
            await _refuse(send, 405, "POST JSON-RPC requests only", [(b"allow", b"POST, OPTIONS")])
            return
        types = header_values(scope, b"content-type")
        if len(types) != 1 or types[0].split(b";")[0].strip().lower() != b"application/json":
            await _refuse(send, 415, "content-type must be application/json")
            return
        if self.pending >= self.max_pending:
            await _refuse(send, 503, "too many requests in progress, try again later")
            return
        self.pending += 1
        try:
            await self._answer(scope, receive, send, cors)
        finally:
            self.pending -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send, cors: list[tuple[bytes, bytes]]) -> None:
        try:
            body = await _read_body(scope, receive)
        except _ClientLeft:
            return
        if body is None:
            await _refuse(send, 413, "request body too large")
            return
        reply = await trio.to_thread.run_sync(self.api.handle_body, body, limiter=self._workers)
        await respond(send, 200, reply or b"", [*_JSON, *cors])


async def serve_http(
    port: int,
    api: EthAPI,
    *,
    access: HTTPAccess | None = None,
    host: str = "127.0.0.1",
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port=0) via task_status.
    On cancel, calls still running are aborted so the server stops at once."""
    app = EthHTTPApp(api, access or HTTPAccess())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_abort_calls_when_cancelled, api)
        bound = await nursery.start(partial(serve_asgi, app, port, host=host))
        task_status.started(bound)


async def _abort_calls_when_cancelled(api: EthAPI) -> None:
    # A call's worker thread cannot be cancelled; the server's nursery waits for it. This
    # task is cancelled with the server, and tells running calls to give up now.
    try:
        await trio.sleep_forever()
    finally:
        api.abort_calls()


class _ClientLeft(Exception):
    """The client disconnected before its request body was complete."""


async def _read_body(scope: Scope, receive: Receive) -> bytes | None:
    """The request body, or None when it is (or announces itself) larger than MAX_BODY."""
    lengths = header_values(scope, b"content-length")
    if lengths and (not lengths[0].isdigit() or int(lengths[0]) > MAX_BODY):
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _refuse(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await respond(send, status, f'{{"error":"{message}"}}'.encode(), [*_JSON, *(headers or [])])
