"""JSON-RPC 2.0 without I/O: bytes of one request line in, bytes of one reply line out.

Methods come from namespace objects: a class with `namespace = "node"` exposes each of its
own methods named `node_<name>` (lower case, no leading underscore after the prefix) as the
RPC method of the same name, as geth does. Nothing else on the object is reachable: the
method table is built once, at registration, and requests are looked up in it, never
with getattr on a client-supplied name.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flockd import safejson
from flockd.logs import get_logger
from flockd.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NODE_NOT_READY,
    PARSE_ERROR,
    RPCError,
)
from flockd.rpc.params import ParamsError, Signature, clip, short_repr

log = get_logger("flockd.rpc")

DEFAULT_MAX_BATCH = 100
_NAMESPACE_NAME = re.compile(r"[a-z][a-z0-9]*")
_METHOD_SUFFIX = re.compile(r"[a-z][a-z0-9_]*")
_REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


@dataclass(frozen=True)
class AfterReply:
    """A method's result plus an action to run once the reply is on its way (node_stop)."""

    result: Any
    action: Callable[[], None]


@dataclass(frozen=True)
class Reply:
    """What to send back (one line, no newline; None = nothing), then what to run."""

    data: bytes | None
    after_send: tuple[Callable[[], None], ...] = ()


@dataclass(frozen=True)
class Method:
    name: str
    func: Callable[..., Any]
    signature: Signature
    doc: str  # first line of the docstring

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.signature.params]


class Dispatcher:
    """Routes requests to namespace methods; adding a namespace is one add_namespace() call."""

    def __init__(self, namespaces: Iterable[object] = (), *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.error_counts: Counter[int] = Counter()  # error replies by code, for the metrics endpoint
        self._methods: dict[str, Method] = {}
        self._namespaces: set[str] = set()
        self._restricted: tuple[str, frozenset[str]] | None = None  # (why, the methods still answered)
        for ns in namespaces:
            self.add_namespace(ns)

    def add_namespace(self, ns: object) -> None:
        """Expose ns's public `<namespace>_*` methods; raises TypeError/ValueError on a bad class."""
        name = getattr(type(ns), "namespace", None)
        if not isinstance(name, str) or not _NAMESPACE_NAME.fullmatch(name):
            raise TypeError(f"{type(ns).__name__}.namespace must be a lower-case word, got {name!r}")
        if name in self._namespaces:
            raise ValueError(f"namespace {name!r} registered twice")
        found = {m.name: m for m in _public_methods(ns, name)}
        self._namespaces.add(name)
        self._methods.update(found)

    def restrict(self, reason: str, answered: frozenset[str]) -> None:
        """Refuse every method but `answered` with NODE_NOT_READY (a node starting or stopping)."""
        self._restricted = (reason, answered)

    def unrestrict(self) -> None:
        self._restricted = None

    def count_error(self, code: int) -> None:
        """Count an error reply (also those the transport sends on its own: busy, too large)."""
        self.error_counts[code] += 1

    def _error_reply(self, request_id: str | int | None, exc: RPCError) -> bytes:
        self.count_error(exc.code)
        return error_response(request_id, exc)

    def methods(self) -> list[Method]:
        return [self._methods[name] for name in sorted(self._methods)]

    async def handle_line(self, line: bytes) -> bytes | None:
        """The reply to one request line, for callers with no transport: after-send actions run now."""
        reply = await self.handle(line)
        for action in reply.after_send:
            action()
        return reply.data

    async def handle(self, line: bytes) -> Reply:
        after: list[Callable[[], None]] = []
        try:
            message = _decode(line)
        except RPCError as exc:
            return Reply(self._error_reply(None, exc))
        if isinstance(message, list):
            data = await self._handle_batch(message, after)
        else:
            data = await self._handle_one(message, after)
        return Reply(data, tuple(after))

    async def _handle_batch(self, batch: list[Any], after: list[Callable[[], None]]) -> bytes | None:
        if not batch:
            return self._error_reply(None, RPCError(INVALID_REQUEST, "empty batch"))
        if len(batch) > self.max_batch:
            message = f"batch too large: {len(batch)} requests, limit {self.max_batch}"
            return self._error_reply(None, RPCError(INVALID_REQUEST, message))
        # Sequential, in order: a batch is one client's script, and a slow item must not
        # multiply into many concurrent ones.
        replies = [await self._handle_one(item, after) for item in batch]
        parts = [r for r in replies if r is not None]
        return b"[" + b",".join(parts) + b"]" if parts else None

    async def _handle_one(self, request: Any, after: list[Callable[[], None]]) -> bytes | None:
        """The encoded response, or None for a notification (which never gets one, even on error)."""
        try:
            request_id, method, params = _parse_request(request)
        except _InvalidRequest as exc:
            return self._error_reply(exc.request_id, RPCError(INVALID_REQUEST, exc.message))
        is_notification = "id" not in request
        try:
            result = await self._call(method, params)
        except RPCError as exc:
            reply = self._error_reply(request_id, exc)  # counted even when nobody gets it
            return None if is_notification else reply
        if isinstance(result, AfterReply):
            after.append(result.action)
            result = result.result
        if is_notification:
            return None
        try:
            return _encode({"jsonrpc": "2.0", "id": request_id, "result": result})
        except (TypeError, ValueError) as exc:
            log.error("rpc result is not JSON", method=method, error=str(exc))
            return self._error_reply(request_id, RPCError(INTERNAL_ERROR, f"{method} returned a result that is not JSON"))

    async def _call(self, name: str, params: list[Any] | dict[str, Any] | None) -> Any:
        if self._restricted is not None and name not in self._restricted[1]:
            raise RPCError(NODE_NOT_READY, f"{short_repr(name)}: {self._restricted[0]}")
        method = self._methods.get(name)
        if method is None:
            raise RPCError(METHOD_NOT_FOUND, f"method not found: {short_repr(name)}")
        try:
            kwargs = method.signature.bind(params)
        except ParamsError as exc:
            raise RPCError(INVALID_PARAMS, str(exc)) from None
        try:
            result = method.func(**kwargs)
            if inspect.isawaitable(result):
                result = await result
        except RPCError:
            raise
        except Exception as exc:
            # The client gets what failed; the traceback stays in the daemon's log.
            log.exception("rpc method failed", method=name)
            raise RPCError(INTERNAL_ERROR, f"{name} failed: {type(exc).__name__}: {clip(str(exc), 200)}") from None
        return result


def _public_methods(ns: object, namespace: str) -> Iterable[Method]:
    prefix = namespace + "_"
    seen: set[str] = set()
    for cls in type(ns).__mro__:
        if cls is object:
            continue
        for attr, value in vars(cls).items():
            if attr in seen or not attr.startswith(prefix) or attr[len(prefix) :].startswith("_"):
                continue
            seen.add(attr)
            if not inspect.isfunction(value):
                continue  # class constants, properties, static/class methods: not RPC methods
            if not _METHOD_SUFFIX.fullmatch(attr[len(prefix) :]):
                raise TypeError(f"{type(ns).__name__}.{attr}: RPC method names are lower_snake_case")
            func = getattr(ns, attr)
            doc = (inspect.getdoc(func) or "").strip().splitlines()
            yield Method(attr, func, Signature(attr, func), doc[0] if doc else "")


class _InvalidRequest(Exception):
    def __init__(self, request_id: str | int | None, message: str) -> None:
        self.request_id = request_id
        self.message = message


def _parse_request(request: Any) -> tuple[str | int | None, str, list[Any] | dict[str, Any] | None]:
    if not isinstance(request, dict):
        raise _InvalidRequest(None, "a request must be a JSON object")
    request_id = request.get("id")
    if request_id is not None and type(request_id) not in (str, int):
        raise _InvalidRequest(None, f"id must be a string, an integer or null, got {type(request_id).__name__}")
    for member in request:
        if member not in _REQUEST_MEMBERS:
            raise _InvalidRequest(request_id, f"unexpected member {short_repr(member)}")
    if request.get("jsonrpc") != "2.0":
        raise _InvalidRequest(request_id, 'jsonrpc must be "2.0"')
    method = request.get("method")
    if not isinstance(method, str):
        raise _InvalidRequest(request_id, "method must be a string")
    params = request.get("params")
    if "params" in request and not isinstance(params, list | dict):
        raise _InvalidRequest(request_id, "params must be an array or an object")
    return request_id, method, params


def _decode(line: bytes) -> Any:
    try:
        return safejson.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (RecursionError, safejson.TooDeep):
        raise RPCError(PARSE_ERROR, "parse error: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RPCError(PARSE_ERROR, f"parse error: {clip(str(exc), 120)}") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in object")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def error_response(request_id: str | int | None, exc: RPCError) -> bytes:
    """An encoded error response (no newline)."""
    response = {"jsonrpc": "2.0", "id": request_id, "error": exc.to_json()}
    try:
        return _encode(response)
    except (TypeError, ValueError):
        # A method put something unencodable in RPCError.data: the code and message still go.
        response["error"] = RPCError(exc.code, exc.message).to_json()
        return _encode(response)


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
