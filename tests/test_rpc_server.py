"""The control socket over a real Unix socket: framing, caps, misbehaving clients, the client."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from test_rpc_dispatch import FakeNetwork, FakeNode

from flockd.rpc.client import DaemonNotRunning, IPCClient
from flockd.rpc.dispatch import AfterReply, Dispatcher
from flockd.rpc.errors import RPCError
from flockd.rpc.meta import RPCNamespace
from flockd.rpc.net import NetNamespace
from flockd.rpc.node import NodeNamespace
from flockd.rpc.server import IPCServerError, LineBuffer, RequestTooLarge, serve_ipc


class FakeFaultyNamespace:
    """A method whose after-reply action blows up: the server must shrug it off."""

    namespace: ClassVar[str] = "faulty"

    def faulty_then_crash(self) -> AfterReply:
        def crash() -> None:
            raise RuntimeError("after-reply action failed")

        return AfterReply("sent", crash)

    async def faulty_hang(self) -> None:
        await trio.sleep_forever()


class Served:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.node = FakeNode()
        self.network = FakeNetwork()
        self.dispatcher = Dispatcher([NodeNamespace(self.node), NetNamespace(self.network), FakeFaultyNamespace()])
        self.dispatcher.add_namespace(RPCNamespace(self.dispatcher))


async def start_server(nursery: trio.Nursery, directory: Path, **limits: Any) -> Served:
    served = Served(directory / "flockd.ipc")
    await nursery.start(partial(serve_ipc, served.path, served.dispatcher, **limits))
    return served


class Conn:
    """A raw line-level client, so tests can misbehave in ways IPCClient never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.lines = LineBuffer(16 << 20)

    @classmethod
    async def open(cls, path: Path) -> Conn:
        return cls(await trio.open_unix_socket(os.fspath(path)))

    async def send(self, message: Any) -> None:
        line = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        await self.stream.send_all(line)

    async def recv(self) -> Any:
        """The next reply, decoded; None once the server has closed the connection."""
        with trio.fail_after(10):
            while (line := self.lines.next_line()) is None:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None  # closed with our unread request still queued: a reset
                if not data:
                    return None
                self.lines.feed(data)
        return json.loads(line)

    async def call(self, method: str, params: Any = None, id: Any = 1) -> Any:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            request["params"] = params
        await self.send(request)
        return await self.recv()


async def assert_still_answers(path: Path) -> None:
    conn = await Conn.open(path)
    async with conn.stream:
        reply = await conn.call("node_info", id="fresh")
    assert reply["id"] == "fresh" and reply["result"]["peer_id"] == FakeNode.peer_id


async def test_socket_is_0600_and_removed_on_exit(short_tmp: Path) -> None:
    async with trio.open_nursery() as nursery:
        served = await start_server(nursery, short_tmp)
        st = os.lstat(served.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        await assert_still_answers(served.path)
        nursery.cancel_scope.cancel()
    assert not served.path.exists()


async def test_bad_requests_get_error_replies_and_the_server_keeps_answering(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    conn = await Conn.open(served.path)
    await conn.send(b"{not json\n")
    assert (await conn.recv())["error"]["code"] == -32700
    await conn.send(b'{"jsonrpc":"2.0","id":1,"method":["node_info"]}\n')
    assert (await conn.recv())["error"]["code"] == -32600
    assert (await conn.call("net_connect", [42]))["error"]["code"] == -32602
    for name in ("node_nope", "node__secret", "_x", "node_request_stop"):
        assert (await conn.call(name))["error"]["code"] == -32601
    assert (await conn.call("node_info"))["result"]["version"] == "0.1.0"  # same connection still usable
    await conn.stream.aclose()
    await assert_still_answers(served.path)
    # Every error reply is counted by code, for the metrics endpoint.
    assert served.dispatcher.error_counts == {-32700: 1, -32600: 1, -32602: 1, -32601: 4}


async def test_pipelined_lines_are_answered_in_order_and_blank_lines_skipped(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    conn = await Conn.open(served.path)
    lines = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "node_info"}) for i in range(5)]
    await conn.send(("\n\n \r\n".join(lines) + "\n").encode())
    assert [(await conn.recv())["id"] for _ in lines] == list(range(5))
    batch = [{"jsonrpc": "2.0", "id": "a", "method": "net_peers"}, {"jsonrpc": "2.0", "method": "node_info"}]
    await conn.send(batch)
    assert [r["id"] for r in await conn.recv()] == ["a"]
    await conn.stream.aclose()


async def test_oversized_request_is_refused_and_the_connection_closed(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    conn = await Conn.open(served.path)
    huge = b'{"jsonrpc":"2.0","id":1,"method":"node_info","params":["' + b"x" * (5 << 20) + b'"]}\n'

    async def send_until_refused() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await conn.send(huge)

    async with trio.open_nursery() as sender:
        sender.start_soon(send_until_refused)
        reply = await conn.recv()
        assert reply["id"] is None
        assert reply["error"] == {"code": -32600, "message": "request too large (limit 1048576 bytes)"}
        assert await conn.recv() is None  # closed
    assert served.dispatcher.error_counts == {-32600: 1}
    await conn.stream.aclose()
    await assert_still_answers(served.path)


async def test_a_half_written_request_blocks_nobody_and_times_out(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp, idle_timeout=0.2)
    stalled = await Conn.open(served.path)
    await stalled.send(b'{"jsonrpc":"2.0","id":1,"method":"node_')  # no newline, ever
    await assert_still_answers(served.path)
    assert await stalled.recv() is None  # dropped once idle, without a reply
    await stalled.stream.aclose()
    await assert_still_answers(served.path)


async def test_a_request_trickled_byte_by_byte_is_cut_off(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp, idle_timeout=0.3)
    trickler = await Conn.open(served.path)
    request = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": ["x" * 1000]}).encode()
    with trio.fail_after(30):
        for byte in request:  # each read is prompt, the request never completes in time
            try:
                await trickler.send(bytes([byte]))
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.02)
        else:
            pytest.fail("the server waited for the whole trickled request")
    await trickler.stream.aclose()
    await assert_still_answers(served.path)


async def test_a_hundred_concurrent_clients(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    answered: list[int] = []

    async def client(n: int) -> None:
        conn = await Conn.open(served.path)
        async with conn.stream:
            assert (await conn.call("node_info", id=n))["id"] == n
            batch = [{"jsonrpc": "2.0", "id": f"{n}-{i}", "method": "net_peers"} for i in range(3)]
            await conn.send(batch)
            assert [r["id"] for r in await conn.recv()] == [f"{n}-{i}" for i in range(3)]
            assert (await conn.call("nope", id=n))["error"]["code"] == -32601
            answered.append(n)

    async with trio.open_nursery() as clients:
        for n in range(100):
            clients.start_soon(client, n)
    assert sorted(answered) == list(range(100))
    await assert_still_answers(served.path)


async def test_over_max_clients_new_connections_are_refused_politely(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp, max_clients=2)
    first, second = await Conn.open(served.path), await Conn.open(served.path)
    for conn in (first, second):  # make sure both have been accepted
        assert "result" in await conn.call("node_info")
    third = await Conn.open(served.path)
    reply = await third.recv()
    assert reply["id"] is None and reply["error"]["code"] == -32001
    assert reply["error"]["message"] == "too many clients (limit 2), try again later"
    assert served.dispatcher.error_counts == {-32001: 1}
    assert await third.recv() is None
    await third.stream.aclose()
    await first.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()  # the server notices the close
    await assert_still_answers(served.path)
    await second.stream.aclose()


async def test_node_stop_replies_then_stops(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    conn = await Conn.open(served.path)
    assert (await conn.call("node_stop"))["result"] is True
    await conn.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert served.node.stop_requests == 1


async def test_a_failing_after_reply_action_does_not_kill_the_server(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    conn = await Conn.open(served.path)
    assert (await conn.call("faulty_then_crash"))["result"] == "sent"
    assert "result" in await conn.call("node_info")  # the same connection lives on too
    await conn.stream.aclose()
    await assert_still_answers(served.path)


# -- the socket file -----------------------------------------------------------


async def test_a_stale_socket_file_is_replaced(short_tmp: Path, nursery: trio.Nursery) -> None:
    path = short_tmp / "flockd.ipc"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.fspath(path))  # bound, never listening: what a killed daemon leaves
    dead.close()
    await start_server(nursery, short_tmp)
    await assert_still_answers(path)


async def test_a_live_socket_is_never_taken_over(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    with pytest.raises(IPCServerError, match="another process is serving"):
        await serve_ipc(served.path, served.dispatcher)
    await assert_still_answers(served.path)


async def test_a_regular_file_is_never_removed(short_tmp: Path) -> None:
    path = short_tmp / "flockd.ipc"
    path.write_text("precious")
    with pytest.raises(IPCServerError, match="not a socket"):
        await serve_ipc(path, Dispatcher())
    assert path.read_text() == "precious"


async def test_a_path_too_long_is_a_clear_error(short_tmp: Path) -> None:
    with pytest.raises(IPCServerError, match="socket path too long"):
        await serve_ipc(short_tmp / ("d" * 120) / "flockd.ipc", Dispatcher())


def test_line_buffer_refuses_before_holding_more_than_the_cap() -> None:
    lines = LineBuffer(max_line=10)
    lines.feed(b"0123456789\nabc")
    assert lines.next_line() == b"0123456789"
    assert lines.next_line() is None
    lines.feed(b"defghijk")  # 11 bytes, no newline yet
    with pytest.raises(RequestTooLarge):
        lines.next_line()
    complete_but_too_long = LineBuffer(max_line=3)
    complete_but_too_long.feed(b"abcd\n")
    with pytest.raises(RequestTooLarge):
        complete_but_too_long.next_line()


# -- the blocking client ------------------------------------------------------


async def test_client_calls_and_raises_error_replies(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    with IPCClient(served.path, timeout=10) as client:
        info = await trio.to_thread.run_sync(client.call, "node_info")
        assert info["address"] == FakeNode.address
        with pytest.raises(RPCError) as caught:
            await trio.to_thread.run_sync(client.call, "net_connect", {"multiaddr": 1})
        assert caught.value.code == -32602
        peers = await trio.to_thread.run_sync(client.call, "net_peers")
        assert [p["peer_id"] for p in peers] == [FakeNode.peer_id]


async def test_client_reconnects_after_the_daemon_closed_its_connection(short_tmp: Path) -> None:
    with IPCClient(short_tmp / "flockd.ipc", timeout=10) as client:
        for version in ("first", "second"):  # a daemon restart in between
            async with trio.open_nursery() as nursery:
                served = await start_server(nursery, short_tmp)
                served.node.version = version
                assert (await trio.to_thread.run_sync(client.call, "node_info"))["version"] == version
                nursery.cancel_scope.cancel()


async def test_client_times_out_on_a_daemon_that_never_answers(short_tmp: Path, nursery: trio.Nursery) -> None:
    served = await start_server(nursery, short_tmp)
    with IPCClient(served.path, timeout=0.2) as client:
        with pytest.raises(TimeoutError, match="no reply from"):
            await trio.to_thread.run_sync(client.call, "faulty_hang")
        # the late reply would be out of step: the client starts over on a new connection
        assert (await trio.to_thread.run_sync(client.call, "node_info"))["version"] == "0.1.0"


def test_client_without_daemon_says_so(short_tmp: Path) -> None:
    path = short_tmp / "flockd.ipc"
    with pytest.raises(DaemonNotRunning, match=f"no daemon at {path}: is flockd running\\?"):
        IPCClient(path).call("node_info")
    assert issubclass(DaemonNotRunning, ConnectionError)
