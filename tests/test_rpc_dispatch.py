"""The JSON-RPC dispatcher without sockets: every error code, batches, params, method exposure."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import pytest
import structlog

from flockd.p2p.abc import P2PError, P2PNetwork, PeerInfo
from flockd.rpc.dispatch import Dispatcher
from flockd.rpc.errors import RPCError
from flockd.rpc.meta import RPCNamespace
from flockd.rpc.net import NetNamespace
from flockd.rpc.node import NodeNamespace

PEER_A = "16Uiu2HAmH2f6sELYJuC7yr9VcBddZL5Vpv4tR4PfLS4eXBwGqwyT"
GOOD_ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER_A}"
UNREACHABLE_ADDR = f"/ip4/127.0.0.1/tcp/9/p2p/{PEER_A}"


class FakeNode:
    """Test double for the daemon's NodeControl side."""

    version = "0.1.0"
    address = "0x00000000000000000000000000000000000000Aa"
    peer_id = PEER_A
    started_at = 1000.0

    def __init__(self) -> None:
        self.stop_requests = 0
        self.state = "running"
        self.services_up = ["rpc", "p2p"]

    def listen_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]

    def request_stop(self) -> None:
        self.stop_requests += 1


class FakeNetwork(P2PNetwork):
    """Test double for the p2p service: one known peer, one address that never answers."""

    def __init__(self) -> None:
        self.dialled: list[str] = []

    @property
    def peer_id(self) -> str:
        return PEER_A

    def listen_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(PEER_A, "0x00000000000000000000000000000000000000Bb", [GOOD_ADDR], "outbound", 1.5)]

    async def connect(self, multiaddr: str) -> str:
        self.dialled.append(multiaddr)
        if multiaddr == UNREACHABLE_ADDR:
            raise P2PError("dial timed out")
        return multiaddr.rsplit("/", 1)[-1]

    async def publish(self, topic: str, kind: str, payload: object) -> None:
        raise NotImplementedError

    def subscribe(self, topic: str, handler: Any) -> None:
        raise NotImplementedError

    def handle_blobs(self, kind: str, handler: Any, *, max_size: int) -> None:
        raise NotImplementedError

    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        raise NotImplementedError

    def penalize_peer(self, peer_id: str, points: float, reason: str) -> None:
        raise NotImplementedError

    def penalize_sender(self, address: str, points: float, reason: str) -> None:
        raise NotImplementedError


class FakeTypedNamespace:
    """Methods with every supported annotation, plus things that must never be callable."""

    namespace: ClassVar[str] = "fake"
    fake_constant = "not a method"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fake_echo(self, text: str, count: int = 1, *, scale: float = 1.0) -> dict[str, Any]:
        """Echo the params back."""
        return {"text": text, "count": count, "scale": scale}

    async def fake_shapes(
        self,
        names: list[str],
        weights: dict[str, int],
        mode: Literal["iid", "dirichlet"] = "iid",
        note: str | None = None,
        flag: bool = False,
    ) -> str:
        return "ok"

    def fake_record(self, what: str) -> None:
        self.calls.append(what)

    def fake_boom(self) -> None:
        raise ValueError("the wheels fell off")

    def fake_refuse(self) -> None:
        raise RPCError(-32042, "refused on purpose", {"why": "test"})

    def fake_not_json(self) -> object:
        return {1, 2}

    def fake_nan(self) -> float:
        return float("nan")

    def fake__secret(self) -> str:
        return "leaked"

    def _fake_hidden(self) -> str:
        return "leaked"

    def helper(self) -> str:
        return "leaked"

    @property
    def fake_prop(self) -> str:
        return "leaked"

    @staticmethod
    def fake_static() -> str:
        return "leaked"


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def network() -> FakeNetwork:
    return FakeNetwork()


@pytest.fixture
def typed() -> FakeTypedNamespace:
    return FakeTypedNamespace()


@pytest.fixture
def dispatcher(node: FakeNode, network: FakeNetwork, typed: FakeTypedNamespace) -> Dispatcher:
    d = Dispatcher([NodeNamespace(node, clock=lambda: 1012.5), NetNamespace(network), typed], max_batch=6)
    d.add_namespace(RPCNamespace(d))
    return d


async def rpc(d: Dispatcher, message: Any) -> Any:
    line = message if isinstance(message, bytes) else json.dumps(message).encode()
    reply = await d.handle_line(line)
    return None if reply is None else json.loads(reply)


def req(method: Any, params: Any = None, id: Any = 1) -> dict[str, Any]:
    r: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        r["params"] = params
    return r


def error_of(reply: dict[str, Any], code: int) -> str:
    assert "result" not in reply, reply
    assert reply["error"]["code"] == code, reply
    return reply["error"]["message"]


# -- success ------------------------------------------------------------------


async def test_node_info(dispatcher: Dispatcher) -> None:
    params: Any
    for params in (None, [], {}):
        reply = await rpc(dispatcher, req("node_info", params, id="a"))
        assert reply == {
            "jsonrpc": "2.0",
            "id": "a",
            "result": {
                "version": "0.1.0",
                "address": FakeNode.address,
                "peer_id": PEER_A,
                "listen_addrs": ["/ip4/127.0.0.1/tcp/4001"],
                "uptime_seconds": 12.5,
            },
        }


async def test_params_by_position_and_by_name(dispatcher: Dispatcher, network: FakeNetwork) -> None:
    by_position = await rpc(dispatcher, req("net_connect", [GOOD_ADDR]))
    by_name = await rpc(dispatcher, req("net_connect", {"multiaddr": GOOD_ADDR}))
    assert by_position["result"] == by_name["result"] == {"peer_id": PEER_A}
    assert network.dialled == [GOOD_ADDR, GOOD_ADDR]
    echoed = await rpc(dispatcher, req("fake_echo", {"scale": 2, "text": "hi"}))
    assert echoed["result"] == {"text": "hi", "count": 1, "scale": 2}


async def test_net_peers_are_plain_dicts(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, req("net_peers"))
    assert reply["result"] == [
        {
            "peer_id": PEER_A,
            "address": "0x00000000000000000000000000000000000000Bb",
            "addrs": [GOOD_ADDR],
            "direction": "outbound",
            "latency_ms": 1.5,
        }
    ]


async def test_id_kinds_are_echoed(dispatcher: Dispatcher) -> None:
    for request_id in (0, -7, 2**70, "", "x" * 100, None):
        reply = await rpc(dispatcher, req("node_info", id=request_id))
        assert reply["id"] == request_id and "result" in reply


# -- -32700 parse error -------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"{",
        b"",
        b"not json",
        b'{"jsonrpc": "2.0", "method": "node_info", "id": 1',
        b"\xff\xfe\x00garbage",
        b'{"jsonrpc":"2.0","id":1,"method":"node_info","params":[NaN]}',
        b'{"jsonrpc":"2.0","id":1,"id":2,"method":"node_info"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"node_info"}',
    ],
)
async def test_parse_errors(dispatcher: Dispatcher, line: bytes) -> None:
    reply = await rpc(dispatcher, line)
    assert reply["id"] is None
    assert error_of(reply, -32700).startswith("parse error")


# -- -32600 invalid request ---------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "reply_id", "message"),
    [
        ({"jsonrpc": "1.0", "id": 1, "method": "node_info"}, 1, 'jsonrpc must be "2.0"'),
        ({"jsonrpc": 2.0, "id": 1, "method": "node_info"}, 1, 'jsonrpc must be "2.0"'),
        ({"id": 1, "method": "node_info"}, 1, 'jsonrpc must be "2.0"'),
        ({"jsonrpc": "2.0", "id": 1, "method": 7}, 1, "method must be a string"),
        ({"jsonrpc": "2.0", "id": 1}, 1, "method must be a string"),
        ({"jsonrpc": "2.0", "id": True, "method": "node_info"}, None, "id must be"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "node_info"}, None, "id must be"),
        ({"jsonrpc": "2.0", "id": [1], "method": "node_info"}, None, "id must be"),
        ({"jsonrpc": "2.0", "id": {}, "method": "node_info"}, None, "id must be"),
        ({"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": "x"}, 1, "params must be"),
        ({"jsonrpc": "2.0", "id": 1, "method": "node_info", "params": 3}, 1, "params must be"),
        ({"jsonrpc": "2.0", "id": 1, "method": "node_info", "param": []}, 1, "unexpected member 'param'"),
        (1, None, "must be a JSON object"),
        ("node_info", None, "must be a JSON object"),
        (None, None, "must be a JSON object"),
    ],
)
async def test_invalid_requests(dispatcher: Dispatcher, request_: Any, reply_id: Any, message: str) -> None:
    reply = await rpc(dispatcher, request_)
    assert reply["id"] == reply_id
    assert message in error_of(reply, -32600)


# -- -32601 method not found: unknown and private names ------------------------


@pytest.mark.parametrize(
    "name",
    [
        "nope",
        "node_nope",
        "",
        "node_",
        "_x",
        "node__secret",
        "fake__secret",
        "_fake_hidden",
        "fake_helper",
        "helper",
        "fake_constant",
        "fake_prop",
        "fake_static",
        "node_request_stop",
        "node_listen_addrs",
        "node___init__",
        "__init__",
        "fake___class__",
        "NODE_INFO",
        "node_info ",
        "rpc.discover",
        "x" * 10_000,
    ],
)
async def test_unknown_and_private_names(dispatcher: Dispatcher, name: str) -> None:
    reply = await rpc(dispatcher, req(name))
    message = error_of(reply, -32601)
    assert message.startswith("method not found")
    assert len(message) < 120  # a client-supplied name is echoed, cut short
    assert "leaked" not in json.dumps(reply)


# -- -32602 invalid params ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("node_stop", [1], "node_stop takes no params"),
        ("node_info", {"verbose": True}, "node_info takes no params"),
        ("net_connect", [], "net_connect: missing required param 'multiaddr'"),
        ("net_connect", {}, "net_connect: missing required param 'multiaddr'"),
        ("net_connect", [7], "net_connect: param 'multiaddr' expected str, got int"),
        ("net_connect", {"multiaddr": None}, "net_connect: param 'multiaddr' expected str, got null"),
        ("net_connect", [GOOD_ADDR, 1], "net_connect takes at most 1 positional params, got 2"),
        ("net_connect", {"multiaddr": GOOD_ADDR, "x": 1}, "net_connect: unexpected param 'x'"),
        ("net_connect", ["garbage"], "net_connect: invalid multiaddr"),
        ("net_connect", ["/ip4/127.0.0.1/tcp/99999"], "net_connect: invalid multiaddr"),
        ("net_connect", [""], "net_connect: multiaddr '' must end in /p2p/<peer id>"),
        ("net_connect", ["/ip4/127.0.0.1/tcp/1"], "net_connect: multiaddr '/ip4/127.0.0.1/tcp/1' must end in /p2p/"),
        ("net_connect", [f"/p2p/{PEER_A}"], "net_connect: multiaddr "),
        ("fake_echo", ["a", True], "fake_echo: param 'count' expected int, got bool"),
        ("fake_echo", ["a", 1.5], "fake_echo: param 'count' expected int, got float"),
        ("fake_echo", ["a", 1, 2.0], "fake_echo takes at most 2 positional params, got 3"),
        ("fake_echo", {"text": "a", "scale": "big"}, "fake_echo: param 'scale' expected float, got str"),
        ("fake_shapes", [["a", 1], {}], "fake_shapes: param 'names' item 1: expected str, got int"),
        ("fake_shapes", [[], {"a": "1"}], "fake_shapes: param 'weights' key 'a': expected int, got str"),
        ("fake_shapes", [[], [], "iid"], "fake_shapes: param 'weights' expected dict[str, int], got list"),
        ("fake_shapes", [[], {}, "other"], "fake_shapes: param 'mode' expected one of 'iid', 'dirichlet', got 'other'"),
        ("fake_shapes", [[], {}, "iid", 3], "fake_shapes: param 'note' expected str | null, got int"),
        ("fake_shapes", [[], {}, "iid", None, 1], "fake_shapes: param 'flag' expected bool, got int"),
    ],
)
async def test_invalid_params(dispatcher: Dispatcher, method: str, params: Any, message: str) -> None:
    reply = await rpc(dispatcher, req(method, params))
    assert error_of(reply, -32602).startswith(message)


async def test_well_typed_params_pass(dispatcher: Dispatcher) -> None:
    ok = req("fake_shapes", {"names": ["a"], "weights": {"a": 1}, "mode": "dirichlet", "note": None, "flag": True})
    assert (await rpc(dispatcher, ok))["result"] == "ok"
    assert (await rpc(dispatcher, req("fake_echo", {"text": "a", "scale": 3})))["result"]["scale"] == 3


# -- -32603 internal error, and application errors ----------------------------


async def test_internal_error_says_what_failed_without_traceback(dispatcher: Dispatcher) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = await rpc(dispatcher, req("fake_boom"))
    message = error_of(reply, -32603)
    assert message == "fake_boom failed: ValueError: the wheels fell off"
    assert "Traceback" not in json.dumps(reply) and "data" not in reply["error"]
    assert any(e["event"] == "rpc method failed" and e["method"] == "fake_boom" for e in logs)


@pytest.mark.parametrize("method", ["fake_not_json", "fake_nan"])
async def test_result_that_is_not_json_is_an_internal_error(dispatcher: Dispatcher, method: str) -> None:
    reply = await rpc(dispatcher, req(method))
    assert error_of(reply, -32603) == f"{method} returned a result that is not JSON"


async def test_application_errors_keep_code_message_and_data(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, req("fake_refuse"))
    assert reply["error"] == {"code": -32042, "message": "refused on purpose", "data": {"why": "test"}}
    unreachable = await rpc(dispatcher, req("net_connect", [UNREACHABLE_ADDR]))
    assert error_of(unreachable, -32000) == "net_connect: dial timed out"


# -- notifications and batches --------------------------------------------------


async def test_notifications_get_no_reply_even_on_error(dispatcher: Dispatcher, typed: FakeTypedNamespace) -> None:
    notification = {"jsonrpc": "2.0", "method": "fake_record", "params": ["n1"]}
    assert await rpc(dispatcher, notification) is None
    assert typed.calls == ["n1"]
    for method in ("fake_boom", "nope", "net_connect"):
        assert await rpc(dispatcher, {"jsonrpc": "2.0", "method": method}) is None


async def test_batch_mixes_valid_and_invalid_items(dispatcher: Dispatcher, typed: FakeTypedNamespace) -> None:
    batch = [
        req("fake_echo", ["a"], id=1),
        {"jsonrpc": "2.0", "method": "fake_record", "params": ["in batch"]},
        req("nope", id=2),
        {"jsonrpc": "1.0", "method": "node_info", "id": 3},
        7,
        req("fake_echo", {"text": 5}, id=4),
    ]
    replies = await rpc(dispatcher, batch)
    assert [r["id"] for r in replies] == [1, 2, 3, None, 4]
    assert replies[0]["result"]["text"] == "a"
    assert [r.get("error", {}).get("code") for r in replies] == [None, -32601, -32600, -32600, -32602]
    assert typed.calls == ["in batch"]


async def test_batch_of_notifications_gets_no_reply(dispatcher: Dispatcher, typed: FakeTypedNamespace) -> None:
    batch = [{"jsonrpc": "2.0", "method": "fake_record", "params": [str(i)]} for i in range(3)]
    assert await rpc(dispatcher, batch) is None
    assert typed.calls == ["0", "1", "2"]


async def test_empty_and_oversized_batches(dispatcher: Dispatcher, typed: FakeTypedNamespace) -> None:
    empty = await rpc(dispatcher, [])
    assert empty["id"] is None and error_of(empty, -32600) == "empty batch"
    too_many = [{"jsonrpc": "2.0", "method": "fake_record", "params": ["x"]}] * 7
    reply = await rpc(dispatcher, too_many)
    assert error_of(reply, -32600) == "batch too large: 7 requests, limit 6"
    assert typed.calls == []  # refused whole, nothing ran


async def test_batch_of_non_objects(dispatcher: Dispatcher) -> None:
    replies = await rpc(dispatcher, [1, 2, 3])
    assert len(replies) == 3 and all(r["error"]["code"] == -32600 for r in replies)


# -- node_stop replies first, stops after ---------------------------------------


async def test_node_stop_runs_after_the_reply(dispatcher: Dispatcher, node: FakeNode) -> None:
    reply = await dispatcher.handle(json.dumps(req("node_stop")).encode())
    assert json.loads(reply.data or b"")["result"] is True
    assert node.stop_requests == 0  # not yet: the transport sends the reply first
    for action in reply.after_send:
        action()
    assert node.stop_requests == 1
    assert await rpc(dispatcher, {"jsonrpc": "2.0", "method": "node_stop"}) is None
    assert node.stop_requests == 2  # a notification stops too


# -- a node starting or stopping answers only what needs no service ----------


async def test_a_restricted_dispatcher_answers_status_and_stop_and_refuses_the_rest(
    dispatcher: Dispatcher, node: FakeNode
) -> None:
    node.state, node.services_up = "starting", ["rpc"]
    dispatcher.restrict("the node is starting", frozenset({"node_status", "node_stop", "rpc_methods"}))
    status = (await rpc(dispatcher, req("node_status")))["result"]
    assert status == {"state": "starting", "services": ["rpc"], "uptime_seconds": 12.5}
    for method in ("node_info", "net_peers", "fake_echo", "no_such_method"):
        error = (await rpc(dispatcher, req(method)))["error"]
        assert error["code"] == -32002 and "the node is starting" in error["message"]
    assert "result" in await rpc(dispatcher, req("rpc_methods"))
    assert (await rpc(dispatcher, req("node_stop")))["result"] is True
    assert node.stop_requests == 1
    dispatcher.unrestrict()
    assert (await rpc(dispatcher, req("node_info")))["result"]["address"] == node.address


# -- rpc_methods and registration ---------------------------------------------


async def test_rpc_methods_lists_exactly_the_public_methods(dispatcher: Dispatcher) -> None:
    methods = {m["name"]: m for m in (await rpc(dispatcher, req("rpc_methods")))["result"]}
    assert set(methods) == {
        "node_info",
        "node_status",
        "node_stop",
        "net_peers",
        "net_connect",
        "net_isolate",
        "rpc_methods",
        "fake_echo",
        "fake_shapes",
        "fake_record",
        "fake_boom",
        "fake_refuse",
        "fake_not_json",
        "fake_nan",
    }
    assert methods["net_connect"] == {
        "name": "net_connect",
        "params": ["multiaddr"],
        "doc": "Dial a peer by multiaddr (with its /p2p/ id); returns its peer id.",
    }
    assert methods["fake_echo"]["params"] == ["text", "count", "scale"]


class BadName:
    namespace = "Bad_Name"


class NoName:
    pass


class VarArgs:
    namespace = "va"

    def va_any(self, *args: Any) -> None: ...


class Unsupported:
    namespace = "un"

    def un_bytes(self, data: bytes) -> None: ...


class CamelCase:
    namespace = "cc"

    def cc_nodeInfo(self) -> None: ...


@pytest.mark.parametrize("ns", [BadName(), NoName(), VarArgs(), Unsupported(), CamelCase()])
def test_bad_namespaces_fail_at_registration(ns: object) -> None:
    with pytest.raises(TypeError):
        Dispatcher([ns])


def test_a_namespace_registers_once(node: FakeNode) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        Dispatcher([NodeNamespace(node), NodeNamespace(node)])
