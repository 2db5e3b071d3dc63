"""Fuzz targets of the local endpoints: control-socket requests (the dispatcher, the line
framing, a real Unix socket), the JSON decoder under both, Ethereum JSON-RPC bodies and a
real HTTP server. The clients are hostile too: any local process, or a web page posting
to 127.0.0.1."""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import strategies as st

from flockd import safejson
from flockd.bench._fuzz_base import (
    JSON_VALUES,
    JSON_WRONG_TYPES,
    MSGPACK_EXPANSION,
    PropertyBroken,
    Target,
    decoder_check,
    linear_bound,
    mutate,
    mutate_bytes,
)
from flockd.bench._fuzz_chain import ALICE, BOB, world
from flockd.chain.client.backends import InProcessBackend
from flockd.chain.ethrpc.eth_api import EthAPI
from flockd.chain.ethrpc.eth_http import serve_http
from flockd.rpc.chain import CHAIN_ERROR, ChainNamespace
from flockd.rpc.dispatch import Dispatcher
from flockd.rpc.meta import RPCNamespace
from flockd.rpc.server import LineBuffer, RequestTooLarge, serve_ipc

# JSON splices: deep nesting, a huge number, a lone surrogate, a BOM, bare constants, a
# newline (a second line on the control socket), bytes that are not UTF-8.
JSON_SPLICES = (b"[" * 5000, b"{\"a\":" * 300, b"9" * 5000, b'"\\ud800"', b"\xef\xbb\xbf", b"NaN",
                b"-Infinity", b"1e999999", b"\n", b"\xff\xfe", b"\x00")
# What a client may get back: the spec's codes (control.md, chain.md), never -32603, which
# means a method failed on input it should have refused.
CONTROL_CODES = frozenset({-32700, -32600, -32601, -32602, CHAIN_ERROR})
ETH_CODES = frozenset({-32700, -32600, -32601, -32602, -32000, 3})


@st.composite
def json_documents(draw: st.DrawFn, requests: st.SearchStrategy[Any]) -> bytes:
    """One request or a batch, mutated field by field, encoded (UTF-8, sometimes UTF-16 or
    -32, which JSON parsers detect on their own), then maybe mutated as bytes."""
    batch = draw(st.integers(0, 5)) == 0
    value: Any = draw(st.lists(requests, min_size=1, max_size=4)) if batch else draw(requests)
    layer = draw(st.sampled_from(("fields", "fields", "valid", "bytes", "encoding")))
    if layer == "fields":
        value = mutate(draw, value, JSON_VALUES, wrong=JSON_WRONG_TYPES)
    data = json.dumps(value).encode()
    if layer == "encoding":
        return json.dumps(value).encode(draw(st.sampled_from(["utf-16-le", "utf-16", "utf-32"])))
    return mutate_bytes(draw, data, splices=JSON_SPLICES) if layer == "bytes" else data


def _nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_nesting(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_nesting(v) for v in value.values()), default=0)
    return 0


def _check_replies(data: bytes | None, codes: frozenset[int]) -> None:
    if data is None:
        return
    if b"\n" in data:
        raise PropertyBroken("a reply holds a raw newline")
    replies = json.loads(data)
    for reply in replies if isinstance(replies, list) else [replies]:
        code = reply.get("error", {}).get("code")
        if code is not None and code not in codes:
            raise PropertyBroken(f"error code {code} ({reply['error'].get('message')!r}) is not one the spec lists")


# -- the JSON decoder ----------------------------------------------------------------------------


def _safejson_check(data: bytes) -> None:
    try:
        value = safejson.loads(data)
    except ValueError:
        return
    if _nesting(value) > safejson.MAX_DEPTH:
        raise PropertyBroken(f"safejson accepted a document nested {_nesting(value)} deep")


def _nested_documents() -> st.SearchStrategy[bytes]:
    """Deep nesting hidden where a depth counter may not look: inside strings, behind
    escapes, in other encodings."""
    prefix = st.sampled_from(['"\\""', '"\\\\"', '"["', '"\\\\\\""', "0"])
    return st.builds(
        lambda p, depth, enc: ("[" + p + "," + "[" * depth + "]" * depth + "]").encode(enc),
        prefix, st.integers(60, 200), st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32"]),
    )


def _safejson_target() -> Target:
    return Target(
        "rpc.safejson",
        st.binary(max_size=256) | json_documents(JSON_VALUES) | _nested_documents(),
        decoder_check(_safejson_check, (), bound=linear_bound(MSGPACK_EXPANSION)),
    )


# -- the control socket ----------------------------------------------------------------------------


@functools.cache
def _dispatcher() -> Dispatcher:
    """The daemon's dispatcher with the namespaces that need no p2p host: rpc_* and chain_*
    over the embedded chain."""
    backend = InProcessBackend(EthAPI(world().source))
    dispatcher = Dispatcher([ChainNamespace(backend, None, confirmations=2)])
    dispatcher.add_namespace(RPCNamespace(dispatcher))
    return dispatcher


def _control_requests() -> st.SearchStrategy[Any]:
    call = st.sampled_from(
        [("rpc_methods", []), ("chain_head", []), ("chain_status", []), ("chain_tx", ["0x" + "ab" * 32]),
         ("chain_tx", {"tx_hash": "0x" + "00" * 32}), ("node_stop", [])]
    )
    return st.builds(
        lambda c, request_id: {"jsonrpc": "2.0", "method": c[0], "params": c[1], "id": request_id},
        call, st.integers(0, 2**53) | st.text(max_size=8) | st.none(),
    )


def _dispatch(line: bytes) -> None:
    reply = trio.run(_dispatcher().handle, line)
    _check_replies(reply.data, CONTROL_CODES)


def _dispatch_target() -> Target:
    return Target(
        "rpc.request",
        st.binary(max_size=256) | json_documents(_control_requests()),
        decoder_check(_dispatch, (), bound=linear_bound(MSGPACK_EXPANSION)),
    )


def _line_buffer_check(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    lines = LineBuffer(max_line=64)
    at, cut = 0, 0
    with contextlib.suppress(RequestTooLarge):
        while at < len(data):
            size = cuts[cut % len(cuts)] if cuts else len(data)
            lines.feed(data[at : at + size])
            at, cut = at + size, cut + 1
            while lines.next_line() is not None:
                pass
            if len(lines._buffer) > 64 + size:
                raise PropertyBroken(f"holding {len(lines._buffer)} bytes of one line, cap 64")


def _line_buffer_target() -> Target:
    streams = st.lists(st.binary(max_size=40) | st.just(b"\n") | st.just(b"x" * 70), max_size=8).map(b"".join)
    return Target(
        "rpc.line_buffer",
        st.tuples(streams, st.lists(st.integers(1, 100), max_size=6)),
        decoder_check(_line_buffer_check, (), bound=linear_bound(4), size=lambda c: len(c[0])),
    )


async def _converse_ipc(data: bytes) -> None:
    """Serve the control socket, send `data` and end our side; every reply must parse, the
    server must close the connection, and a new client must still get an answer."""
    with tempfile.TemporaryDirectory(prefix="fz-", dir="/tmp") as directory:
        path = Path(directory) / "flockd.ipc"
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve_ipc, path, _dispatcher(), max_request_bytes=4096))
            with trio.fail_after(20):  # the server closes as soon as it has read our EOF
                stream = await trio.open_unix_socket(str(path))
                async with stream:
                    await _send_all(stream, data)
                    received = await _read_all(stream)
                for line in received.split(b"\n")[:-1]:
                    _check_replies(line, CONTROL_CODES | {-32001})
                probe = await trio.open_unix_socket(str(path))
                async with probe:
                    await probe.send_all(b'{"jsonrpc":"2.0","id":1,"method":"rpc_methods"}\n')
                    await probe.send_eof()
                    if b'"result"' not in await _read_all(probe):
                        raise PropertyBroken("the control socket stopped answering")
            nursery.cancel_scope.cancel()


async def _send_all(stream: trio.SocketStream, data: bytes) -> None:
    # The server may close before it has read everything (a line or a header too large):
    # what it answered is still there to read.
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)
        await stream.send_eof()


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _socket_target() -> Target:
    line = json_documents(_control_requests()).map(lambda d: d + b"\n")
    streams = st.lists(line | st.binary(max_size=64) | st.just(b"x" * 5000), min_size=1, max_size=4).map(b"".join)
    return Target(
        "rpc.socket",
        streams,
        decoder_check(lambda data: trio.run(_converse_ipc, data), (), bound=linear_bound(MSGPACK_EXPANSION, 4 << 20)),
        examples=40,
    )


# -- Ethereum JSON-RPC -----------------------------------------------------------------------------

_HASH = "0x" + "11" * 32


def _eth_requests() -> st.SearchStrategy[Any]:
    alice, bob = ALICE.address, BOB.address
    # eth_call and eth_estimateGas carry a small gas: the suite must not spend seconds per
    # case executing calldata (the cap on a client's own gas is the endpoint's business).
    call = {"from": alice, "to": bob, "data": "0x", "gas": "0x30000", "value": "0x0"}
    create = {"from": alice, "data": "0x600160005500", "gas": "0x30000"}
    calls = [
        ("eth_chainId", []), ("net_version", []), ("web3_clientVersion", []), ("eth_syncing", []),
        ("eth_blockNumber", []), ("eth_getBlockByNumber", ["0x1", True]), ("eth_getBlockByNumber", ["latest", False]),
        ("eth_getBlockByHash", [_HASH, False]), ("eth_getTransactionCount", [alice, "pending"]),
        ("eth_getBalance", [alice, {"blockNumber": "0x1"}]), ("eth_getCode", [bob, "earliest"]),
        ("eth_getStorageAt", [bob, "0x0", "safe"]), ("eth_call", [call, "latest"]), ("eth_call", [create]),
        ("eth_estimateGas", [call]), ("eth_sendRawTransaction", ["0x02f8"]), ("eth_getTransactionByHash", [_HASH]),
        ("eth_getTransactionReceipt", [_HASH]), ("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest", "address": bob,
                                                                    "topics": [None, [_HASH]]}]),
        ("eth_gasPrice", []), ("eth_maxPriorityFeePerGas", []), ("eth_feeHistory", ["0x4", "latest", [10, 50]]),
    ]
    return st.builds(
        lambda c, request_id: {"jsonrpc": "2.0", "method": c[0], "params": c[1], "id": request_id},
        st.sampled_from(calls), st.integers(0, 2**53) | st.none(),
    )


def _bounded_gas(body: bytes) -> bytes:
    """Keep mutated calls cheap: a call object without a small string gas gets one."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return body
    changed = False
    for request in value if isinstance(value, list) else [value]:
        params = request.get("params") if isinstance(request, dict) else None
        if isinstance(params, list) and params and isinstance(params[0], dict):
            gas = params[0].get("gas")
            if not (isinstance(gas, str) and gas[:2] == "0x" and len(gas) <= 7):
                params[0]["gas"], changed = "0x30000", True
    return json.dumps(value).encode() if changed else body


@functools.cache
def _eth_api() -> EthAPI:
    return EthAPI(world().source)


def _eth_body_check(body: bytes) -> None:
    _check_replies(_eth_api().handle_body(body), ETH_CODES)


def _eth_target() -> Target:
    return Target(
        "eth.body",
        st.binary(max_size=256) | json_documents(_eth_requests()).map(_bounded_gas),
        decoder_check(_eth_body_check, (), bound=linear_bound(MSGPACK_EXPANSION, 8 << 20)),
    )


@st.composite
def _http_requests(draw: st.DrawFn) -> bytes:
    body = draw(json_documents(_eth_requests()).map(_bounded_gas))
    method = draw(st.sampled_from([b"POST", b"POST", b"GET", b"OPTIONS", b"P\x00ST", b""]))
    headers = [b"Host: 127.0.0.1", b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    layer = draw(st.sampled_from(("valid", "headers", "length", "chunked", "bytes")))
    if layer == "headers":
        headers = mutate(draw, headers, st.sampled_from(
            [b"Host: evil.example", b"Origin: http://evil.example", b"Content-Type: text/plain",
             b"X: " + b"a" * 20000, b"Transfer-Encoding: gzip", b"bad header", b"Content-Length: -1"]
        ), wrong=st.just(b""))
    elif layer == "length":
        headers[2] = b"Content-Length: " + draw(st.sampled_from([b"0", b"99999999999", b"1048577", b"+5", b"0x10", b"1 2"]))
    elif layer == "chunked":
        headers[2] = b"Transfer-Encoding: chunked"
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if draw(st.booleans()) else b"fffffffffff\r\n" + body
    request = method + b" / HTTP/1.1\r\n" + b"".join(h + b"\r\n" for h in headers if isinstance(h, bytes)) + b"\r\n" + body
    return mutate_bytes(draw, request, splices=(b"\r\n", b"\r\n\r\n", b"\x00", b" HTTP/1.0")) if layer == "bytes" else request


async def _converse_http(data: bytes) -> None:
    """Serve HTTP, send `data` and end our side: the server answers HTTP or closes, and a
    new client still gets an HTTP answer."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, 0, _eth_api())
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await _send_all(stream, data)
                received = await _read_all(stream)
            if received and not received.startswith(b"HTTP/1.1 "):
                raise PropertyBroken(f"not an HTTP response: {received[:60]!r}")
            probe = await trio.open_tcp_stream("127.0.0.1", port)
            async with probe:
                body = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}'
                await probe.send_all(
                    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                if not (await _read_all(probe)).startswith(b"HTTP/1.1 "):
                    raise PropertyBroken("the HTTP endpoint stopped answering")
        nursery.cancel_scope.cancel()


def _http_target() -> Target:
    return Target(
        "eth.http",
        st.binary(max_size=256) | _http_requests(),
        decoder_check(lambda data: trio.run(_converse_http, data), (), bound=linear_bound(MSGPACK_EXPANSION, 8 << 20)),
        examples=40,
    )


def targets() -> list[Target]:
    return [_safejson_target(), _dispatch_target(), _line_buffer_target(), _socket_target(), _eth_target(),
            _http_target()]
