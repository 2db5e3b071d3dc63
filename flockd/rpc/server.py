"""The control socket: newline-delimited JSON-RPC over a Unix socket, as geth's IPC.

One request (or batch) per line, one reply per line, in order, per connection. Every
connection is its own task in the server's nursery, so a client that stalls, floods or
vanishes mid-request costs only its own task, never the others'.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

import trio

from flockd.logs import get_logger
from flockd.rpc.dispatch import Dispatcher, error_response
from flockd.rpc.errors import INVALID_REQUEST, SERVER_BUSY, RPCError

log = get_logger("flockd.rpc.server")

DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_MAX_CLIENTS = 256
DEFAULT_IDLE_TIMEOUT = 120.0  # seconds a client has to complete its next request line
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes, NUL included
_RECEIVE_CHUNK = 64 * 1024
_REJECT_TIMEOUT = 1.0
# accept() errors that mean "out of resources for now", not "the listener is broken".
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class IPCServerError(Exception):
    """The control socket cannot be set up (path too long, in use, wrong permissions)."""


class RequestTooLarge(Exception):
    """A line grew past the request size cap before its newline arrived."""


class LineBuffer:
    """Splits a byte stream into lines, refusing to hold more than max_line bytes of one."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for a newline: each byte is scanned once

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line without its newline, or None until more data arrives."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > self.max_line:
                raise RequestTooLarge
            return None
        if end > self.max_line:
            raise RequestTooLarge
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line


async def serve_ipc(
    path: Path,
    dispatcher: Dispatcher,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_clients: int = DEFAULT_MAX_CLIENTS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    # The ignore: mypy reads the trio-stubs package (trio_typing, a libp2p dependency),
    # which predates trio.TaskStatus, instead of trio 0.35's own annotations.
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,  # type: ignore[name-defined]
) -> None:
    """Serve until cancelled; the socket file (mode 0600) exists exactly while this runs."""
    sock, identity = _bind(path)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        server = _Server(dispatcher, max_request_bytes, max_clients, idle_timeout)
        async with listener, trio.open_nursery() as nursery:
            log.info("control socket listening", path=str(path))
            task_status.started()
            await server.accept_loop(listener, nursery)
    finally:
        sock.close()
        _unlink_if_ours(path, identity)


class _Server:
    def __init__(self, dispatcher: Dispatcher, max_request_bytes: int, max_clients: int, idle_timeout: float):
        self.dispatcher = dispatcher
        self.max_request_bytes = max_request_bytes
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self.clients = 0

    async def accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    raise
                log.warning("control socket accept failed", error=os.strerror(exc.errno))
                await trio.sleep(0.1)
                continue
            if self.clients >= self.max_clients:
                await self._refuse(stream)
                continue
            self.clients += 1
            nursery.start_soon(self._serve_client, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        message = f"too many clients (limit {self.max_clients}), try again later"
        self.dispatcher.count_error(SERVER_BUSY)
        with trio.move_on_after(_REJECT_TIMEOUT), contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(_error_line(RPCError(SERVER_BUSY, message)))
        await trio.aclose_forcefully(stream)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to answer
        except Exception:
            log.exception("control connection failed")
        finally:
            self.clients -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        lines = LineBuffer(self.max_request_bytes)
        # A deadline per request, not per read: a client trickling one byte at a time
        # must still complete its line within idle_timeout.
        deadline = trio.current_time() + self.idle_timeout
        while True:
            try:
                line = lines.next_line()
            except RequestTooLarge:
                message = f"request too large (limit {self.max_request_bytes} bytes)"
                self.dispatcher.count_error(INVALID_REQUEST)
                with trio.move_on_after(_REJECT_TIMEOUT):
                    await stream.send_all(_error_line(RPCError(INVALID_REQUEST, message)))
                return
            if line is None:
                data = b""
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(_RECEIVE_CHUNK)
                if not data:
                    return  # end of stream, or idle too long
                lines.feed(data)
            elif line.strip():
                await self._answer(stream, line)
                deadline = trio.current_time() + self.idle_timeout

    async def _answer(self, stream: trio.SocketStream, line: bytes) -> None:
        reply = await self.dispatcher.handle(line)
        try:
            if reply.data is not None:
                with trio.move_on_after(self.idle_timeout) as sending:
                    await stream.send_all(reply.data + b"\n")
                if sending.cancelled_caught:
                    raise trio.BrokenResourceError("client does not read its replies")
        finally:
            # After the reply (node_stop), even if the client has gone meanwhile.
            for action in reply.after_send:
                try:
                    action()
                except Exception:
                    log.exception("rpc after-reply action failed")


def _error_line(error: RPCError) -> bytes:
    return error_response(None, error) + b"\n"


def _bind(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at path with mode 0600, and the file's (device, inode)."""
    if len(os.fsencode(path)) > MAX_UNIX_PATH:
        raise IPCServerError(f"socket path too long ({len(os.fsencode(path))} bytes, limit {MAX_UNIX_PATH}): {path}")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask closes the window between bind() and chmod() in which another
        # user could connect; no await happens while it is set.
        old_umask = os.umask(0o177)
        try:
            sock.bind(os.fspath(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o600:
            raise IPCServerError(f"{path}: expected a socket with mode 0600, got {oct(st.st_mode)}")
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def _remove_stale_socket(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise IPCServerError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left behind by a daemon that died
        log.info("removed stale control socket", path=str(path))
        return
    except OSError as exc:
        raise IPCServerError(f"cannot probe {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise IPCServerError(f"another process is serving {path}")


def _unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    # A daemon started after us may have replaced the file; its socket is not ours to remove.
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except FileNotFoundError:
        pass
