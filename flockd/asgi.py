"""Serving an ASGI app on a local port with hypercorn's trio worker (chain HTTP, metrics).

hypercorn does the HTTP/1.1 parsing, keep-alive and slow-client timeouts; the apps check
what is theirs to check (Host, Origin, body size). Its log lines go through our logging.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEEP_ALIVE_TIMEOUT = 5.0  # an idle keep-alive connection is closed after this
READ_TIMEOUT = 30  # a client that stops sending mid-request is dropped after this
MAX_HEADER_BYTES = 16 * 1024
GRACEFUL_TIMEOUT = 1.0  # on stop: how long requests in flight may finish


async def serve_asgi(
    app: ASGIApp,
    port: int,
    *,
    host: str = "127.0.0.1",
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; reports the bound port (useful with port=0)."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("flockd.http")
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.read_timeout = READ_TIMEOUT
    config.h11_max_incomplete_size = MAX_HEADER_BYTES
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
        task_status.started(int(binds[0].rsplit(":", 1)[1]))


async def lifespan(receive: Receive, send: Send) -> None:
    """The ASGI lifespan protocol for an app that needs no start-up or shut-down work."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One whole response with a body and its length."""
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


def header_values(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of the request header `name` (lower case), in order."""
    return [bytes(value) for key, value in scope["headers"] if key == name]


def host_allowed(host: str, vhosts: tuple[str, ...]) -> bool:
    """Whether a Host header names this server: an IP address always does (a DNS-rebinding
    page can only use a name), a name when it is in `vhosts` ("*": any), as geth checks."""
    name = _host_name(host)
    if name is None:
        return False
    if _is_ip(name):
        return True
    return "*" in vhosts or name.lower() in (v.lower() for v in vhosts)


def _host_name(host: str) -> str | None:
    """The name or address in a Host header, without its port; None when malformed."""
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[1:end] if end > 0 else None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
