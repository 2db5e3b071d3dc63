"""A small HTTP/1.1 JSON-RPC server on 127.0.0.1 (trio + h11), so web3.HTTPProvider can read the chain.

POST bodies go to `EthAPI.handle_body` in a worker thread (chain work is CPU-bound and
synchronous). Bounded everywhere: request body size, connections, idle time per connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h11
import trio

from flockd.chain.eth_api import EthAPI

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

MAX_BODY = 1024 * 1024  # a raw tx is <= 128 KiB; batches stay well under this
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 30.0
_READ_SIZE = 16384


async def serve_http(
    port: int,
    api: EthAPI,
    *,
    host: str = "127.0.0.1",
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port=0) via task_status."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = trio.Semaphore(MAX_CONNECTIONS)
    bound = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        if slots.value == 0:  # full: refuse rather than queue behind slow clients
            await stream.aclose()
            return
        async with slots:
            await _serve_connection(stream, api)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


async def _serve_connection(stream: trio.SocketStream, api: EthAPI) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    try:
        async with stream:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    request, body = await _read_request(stream, conn)
                if idle.cancelled_caught or request is None:
                    return
                if request.method != b"POST":
                    await _send(stream, conn, 405, b'{"error":"POST JSON-RPC requests only"}')
                elif body is None:
                    await _send(stream, conn, 413, b'{"error":"request body too large"}')
                    return
                else:
                    reply = await trio.to_thread.run_sync(api.handle_body, body)
                    await _send(stream, conn, 200, reply or b"")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> tuple[Any, bytes | None]:
    """(request, body) — body None when over MAX_BODY; (None, None) when the client left."""
    request = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_SIZE)
            conn.receive_data(data)
            if not data and request is None:
                return None, None
            continue
        if isinstance(event, h11.Request):
            request = event
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY:
                return request, None
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                return request, None
            chunks.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return request, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            return None, None


async def _send(stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes) -> None:
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    if status != 200:
        headers.append(("connection", "close"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
