"""How the contract client reaches a chain: Ethereum JSON-RPC, in process or over HTTP.

Both implement flockd.chain.client.abc.ChainBackend — one JSON-RPC 2.0 request in, its `result`
out, or a specific ChainError — so the client above them has one code path (DESIGN: "One
path for both chains"):

    InProcessBackend(EthAPI(chain))   the daemon's own EmbeddedChain; EthAPI.handle runs in
                                      a worker thread (chain work is synchronous and CPU-bound;
                                      EmbeddedChain serialises callers with its own lock, and
                                      eth_call runs outside it under a time budget)
    HttpBackend(url)                  an external node (anvil, geth, ...): httpx's async client
                                      (anyio runs under trio); every reply size-capped and the
                                      whole exchange under one deadline, so a slow-dripping or
                                      flooding node fails fast instead of hanging the daemon

`open_backend(config, embedded)` picks one from `[chain] rpc_url` (`--chain-rpc URL`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import trio

from flockd import safejson
from flockd.chain.client.abc import ChainBackend, ChainBackendError, ChainRPCError, ChainUnavailable

if TYPE_CHECKING:
    from flockd.chain.ethrpc.eth_api import EthAPI
    from flockd.chain.node.embedded import EmbeddedChain
    from flockd.config import Config

DEFAULT_TIMEOUT = 15.0  # seconds for one whole request/reply exchange
MAX_REPLY_BYTES = 16 * 1024 * 1024  # a getLogs page or a full block stays far below


# The seam (flockd.chain.client.abc) names the base errors; these are the specific ones.
ChainError = ChainBackendError  # base of every error a chain backend raises
RPCError = ChainRPCError  # the node answered with a JSON-RPC error object


class ChainTimeout(ChainUnavailable):
    """The node did not answer in time."""


class MalformedReply(ChainUnavailable):
    """The reply is not a JSON-RPC 2.0 response to our request (or a result of the wrong shape)."""


class ReplyTooLarge(MalformedReply):
    """The reply exceeds the backend's size cap."""


def parse_reply(reply: Any, request_id: int) -> Any:
    """The result of a decoded JSON-RPC reply to request `request_id`; strict about its shape."""
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
        raise MalformedReply(f"not a JSON-RPC 2.0 response: {_preview(reply)}")
    if reply.get("id") != request_id:
        raise MalformedReply(f"response id {_preview(reply.get('id'))} does not match request {request_id}")
    has_result, has_error = "result" in reply, "error" in reply
    if has_result == has_error:
        raise MalformedReply("a response holds exactly one of result and error")
    if has_result:
        return reply["result"]
    error = reply["error"]
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        raise MalformedReply(f"malformed error object: {_preview(error)}")
    raise RPCError(error["code"], error["message"][:1000], error.get("data"))


def _preview(value: Any) -> str:
    return repr(value)[:120]


class _Requests:
    """Request ids and bodies shared by both backends."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def build(self, method: str, params: Sequence[Any]) -> tuple[int, dict[str, Any]]:
        request_id = next(self._ids)
        return request_id, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}


class InProcessBackend(ChainBackend):
    """The daemon's own EmbeddedChain, through the same EthAPI that serves HTTP clients."""

    def __init__(self, api: EthAPI) -> None:
        self.api = api
        self._requests = _Requests()

    @classmethod
    def for_chain(cls, chain: EmbeddedChain) -> InProcessBackend:
        from flockd.chain.ethrpc.eth_api import EthAPI  # late: only the embedded chain needs py-evm

        return cls(EthAPI(chain))

    async def request(self, method: str, params: Sequence[Any]) -> Any:
        """The result, or RPCError for an error reply (same codes as over HTTP)."""
        request_id, body = self._requests.build(method, params)
        # Not abandoned on cancel: a chain call is short, and a thread left running after
        # its caller is gone is exactly the orphan structured concurrency forbids.
        reply = await trio.to_thread.run_sync(self.api.handle, body)
        return parse_reply(reply, request_id)

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> InProcessBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HttpBackend(ChainBackend):
    """An external Ethereum node's JSON-RPC over HTTP(S)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"chain rpc url {url!r} must be http:// or https://")
        self.url = url
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._requests = _Requests()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"content-type": "application/json", "accept": "application/json"},
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see our transactions
        )

    async def request(self, method: str, params: Sequence[Any]) -> Any:
        request_id, body = self._requests.build(method, params)
        content = json.dumps(body, separators=(",", ":")).encode()
        # httpx's timeouts are per read; one deadline over the whole exchange bounds a node
        # that drips a byte at a time.
        with trio.move_on_after(self.timeout) as scope:
            status, raw = await self._post(content)
        if scope.cancelled_caught:
            raise ChainTimeout(f"{self.url}: {method} got no complete reply within {self.timeout} s")
        try:
            reply = safejson.loads(raw)
        except (ValueError, UnicodeDecodeError):
            if status != 200:
                raise ChainUnavailable(f"{self.url}: HTTP {status}") from None
            raise MalformedReply(f"{method}: reply is not JSON: {raw[:80]!r}") from None
        if status != 200 and not (isinstance(reply, dict) and "error" in reply):
            raise ChainUnavailable(f"{self.url}: HTTP {status}")
        return parse_reply(reply, request_id)

    async def _post(self, content: bytes) -> tuple[int, bytes]:
        try:
            async with self._http.stream("POST", self.url, content=content) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_reply_bytes:
                    raise ReplyTooLarge(f"reply declares {declared} bytes, cap {self.max_reply_bytes}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():  # decoded: a gzip bomb hits the cap too
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        raise ReplyTooLarge(f"reply exceeds the cap of {self.max_reply_bytes} bytes")
                    chunks.append(chunk)
                return response.status_code, b"".join(chunks)
        except httpx.TimeoutException as exc:
            raise ChainTimeout(f"{self.url}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:  # connect refused, reset, protocol violations, ...
            raise ChainUnavailable(f"{self.url}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> HttpBackend:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def open_backend(config: Config, embedded: EmbeddedChain | None = None) -> InProcessBackend | HttpBackend:
    """The backend `config` asks for: `[chain] rpc_url` (flag --chain-rpc URL) names an
    external node; empty means this daemon's own `embedded` chain."""
    url = config.chain.rpc_url
    if url:
        return HttpBackend(url)
    if embedded is None:
        raise ValueError("no chain rpc url configured and no embedded chain given")
    return InProcessBackend.for_chain(embedded)


def quantity(value: Any, what: str = "quantity") -> int:
    """A JSON-RPC hex quantity from a node; MalformedReply when it is not one."""
    if isinstance(value, str) and value[:2] in ("0x", "0X") and 2 < len(value) <= 66:
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise MalformedReply(f"{what}: expected a hex quantity, got {_preview(value)}")


def data(value: Any, what: str = "data", length: int | None = None) -> bytes:
    """JSON-RPC hex data from a node; MalformedReply when it is not (of `length` bytes)."""
    if isinstance(value, str) and value[:2] in ("0x", "0X") and len(value) % 2 == 0:
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            raw = None
        if raw is not None and (length is None or len(raw) == length):
            return raw
    size = "" if length is None else f" of {length} bytes"
    raise MalformedReply(f"{what}: expected hex data{size}, got {_preview(value)}")


__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_REPLY_BYTES",
    "ChainBackend",
    "ChainBackendError",
    "ChainError",
    "ChainRPCError",
    "ChainTimeout",
    "ChainUnavailable",
    "HttpBackend",
    "InProcessBackend",
    "MalformedReply",
    "RPCError",
    "ReplyTooLarge",
    "data",
    "open_backend",
    "parse_reply",
    "quantity",
]
