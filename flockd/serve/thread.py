"""An app served from a thread of its own (its own trio loop) on 127.0.0.1: for callers
that are not trio code, such as the tests and the benchmark driving the server with the
blocking ``openai`` client."""

from __future__ import annotations

import threading
from functools import partial
from types import TracebackType

import trio

from flockd.asgi import ASGIApp, serve_asgi


class ServerThread:
    def __init__(self, app: ASGIApp, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        self.port = 0
        self.nursery: trio.Nursery | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="flockd-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the server did not start") from self._failure
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        nursery = self.nursery
        if nursery is not None:
            trio.from_thread.run_sync(nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join()

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to __enter__ when it happens before start
            self._failure = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(partial(serve_asgi, self.app, 0, host=self.host))
            self.token = trio.lowlevel.current_trio_token()
            self.nursery = nursery
            self._ready.set()
