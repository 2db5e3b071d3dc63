"""A small blocking client for the control socket, for flockctl, scripts and tests."""

from __future__ import annotations

import itertools
import json
import os
import select
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from flockd import safejson
from flockd.rpc.errors import RPCError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_REPLY_BYTES = 64 << 20


class DaemonNotRunning(ConnectionError):
    """Nothing listens on the control socket."""


class IPCProtocolError(ConnectionError):
    """The daemon's reply is not the JSON-RPC response we asked for."""


class IPCClient:
    """One connection, opened on first use and reopened after the daemon closed it.

    A timed-out call closes the connection: its late reply would be read as the next one's.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._ids = itertools.count(1)

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        """The method's result; raises RPCError on an error reply, ConnectionError/TimeoutError otherwise."""
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        sock = self._connection()
        try:
            sock.sendall(line)
            return _result(self._read_line(sock), request_id)
        except RPCError:
            raise  # a well-formed error reply: the connection is still in step
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._buffer.clear()

    def __enter__(self) -> IPCClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _connection(self) -> socket.socket:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()  # the daemon dropped an idle connection
        if self._sock is None:
            self._sock = self._connect()
        return self._sock

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(f"no daemon at {self.path}: is flockd running?") from None
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        return sock

    def _read_line(self, sock: socket.socket) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > self.max_reply_bytes:
                raise IPCProtocolError(f"reply from {self.path} exceeds {self.max_reply_bytes} bytes")
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError(f"no reply from {self.path} within {self.timeout} s") from None
            if not data:
                raise ConnectionError(f"daemon at {self.path} closed the connection without a reply")
            self._buffer += data


def _closed_by_peer(sock: socket.socket) -> bool:
    # select() first: a socket with a timeout waits that long in recv(), MSG_DONTWAIT or not.
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False  # open, nothing to read: the normal case
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _result(line: bytes, request_id: int) -> Any:
    try:
        reply = safejson.loads(line)
    except ValueError:
        raise IPCProtocolError(f"reply is not JSON: {line[:80]!r}") from None
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0":
        raise IPCProtocolError(f"reply is not a JSON-RPC 2.0 response: {line[:80]!r}")
    error = reply.get("error")
    if isinstance(error, dict):
        # id may be null: the server refused the request before reading its id (too large, busy).
        if reply.get("id") not in (request_id, None):
            raise IPCProtocolError(f"reply id {reply.get('id')!r} does not match request id {request_id}")
        code, message = error.get("code"), error.get("message")
        if not isinstance(code, int) or not isinstance(message, str):
            raise IPCProtocolError(f"malformed error object: {error!r:.80}")
        raise RPCError(code, message, error.get("data"))
    if reply.get("id") != request_id or "result" not in reply:
        raise IPCProtocolError(f"reply does not answer request {request_id}: {line[:80]!r}")
    return reply["result"]
