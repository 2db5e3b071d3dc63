"""The ASGI app: the OpenAI-compatible API, the node's pages and their JSON, behind one
gate (Host, Origin, API key).

The gate, before any route: a Host header that does not name this server is refused (a
DNS-rebinding page can only use a name); a request from a web page of another origin is
refused (so no site a user visits can drive the local API); with an API key, every
``/v1/`` and ``/api/`` request needs ``Authorization: Bearer KEY`` (compared in constant
time). The page itself is public: it holds no data and asks for the key.

A generation runs in a worker thread; the request's task watches for the client's
``http.disconnect`` meanwhile and, when it comes, leaves the line or stops the thread
between two tokens (``GenerationResponse``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from flockd.asgi import Receive, Scope, Send, header_values, host_allowed, respond
from flockd.serve.admission import Admission
from flockd.serve.classifier import ServedClassifier
from flockd.serve.errors import APIError, bad_request
from flockd.serve.lm import Generation, ServedLM
from flockd.serve.prompt import chat_prompt, retrieval_query, with_sources
from flockd.serve.replies import ReplyShape, sse
from flockd.serve.requests import (
    MAX_BODY_BYTES,
    Sampling,
    decode_chat,
    decode_completion,
    decode_json,
    decode_predict,
)
from flockd.serve.retrieval import Hit, KnowledgeIndex
from flockd.stats import Counters

ServedModel = ServedLM | ServedClassifier
TaskView = Callable[[], Awaitable[list[dict[str, Any]]]]
# The chain's listings, a page at a time (start, limit): flockd.market.catalogue.ListingCatalogue.page.
ListingsView = Callable[[int, int], Awaitable[dict[str, Any]]]
LISTINGS_PAGE = 10  # listings on a page unless the page asks otherwise
# A listing's lineage replayed by this node (flockd.market.catalogue.ListingReplays).
ListingReplay = Callable[[int], Awaitable[dict[str, Any]]]

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions
DEFAULT_CHAT_TOKENS = 256
_PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


@dataclass(frozen=True)
class Gate:
    api_key: str | None = None
    vhosts: tuple[str, ...] = ("localhost",)

    def refusal(self, scope: Scope) -> APIError | None:
        hosts = header_values(scope, b"host")
        if len(hosts) != 1 or not host_allowed(hosts[0].decode("latin-1"), self.vhosts):
            return APIError(403, "this host name is not served here", type="permission_error", code="host_refused")
        host = hosts[0].decode("latin-1")
        origins = header_values(scope, b"origin")
        if origins and origins[0].decode("latin-1") not in (f"http://{host}", f"https://{host}"):
            return APIError(403, "requests from another web origin are refused", type="permission_error",
                            code="origin_refused")
        path: str = scope.get("path", "")
        if self.api_key and path.startswith(("/v1/", "/api/")):
            given = b"".join(header_values(scope, b"authorization")[:1])
            if not hmac.compare_digest(given, b"Bearer " + self.api_key.encode()):
                return APIError(401, "a valid API key is needed: Authorization: Bearer KEY",
                                type="invalid_request_error", code="invalid_api_key")
        return None


class ServeApp:
    def __init__(
        self,
        models: list[ServedModel],
        *,
        index: KnowledgeIndex | None = None,
        admission: Admission | None = None,
        gate: Gate = Gate(),
        default_top_k: int = 0,
        tasks: TaskView | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.index = index
        self.admission = admission or Admission()
        self.gate = gate
        self.default_top_k = default_top_k
        self.tasks = tasks
        self.listings: ListingsView | None = None  # in a daemon, once its Market client is open
        self.replay_listing: ListingReplay | None = None
        self.counters = Counters()
        routes = [Route(path, self._page, methods=["GET"]) for path in _PAGES]
        routes += [
            Route("/v1/models", self._list_models, methods=["GET"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/predict", self._predict, methods=["POST"]),
            Route("/api/catalogue", self._catalogue, methods=["GET"]),
            Route("/api/listings", self._listing_view, methods=["GET"]),
            Route("/api/listings/{listing_id:int}/replay", self._listing_replay, methods=["POST"]),
            Route("/api/tasks", self._task_view, methods=["GET"]),
            Route("/api/search", self._search, methods=["POST"]),
        ]
        self._routes = Starlette(routes=routes, exception_handlers={APIError: self._error, 404: self._not_found,
                                                                    405: self._not_allowed})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.counters.incr("requests")
            refused = self.gate.refusal(scope)
            if refused is not None:
                self.counters.incr("requests_refused")
                await _respond_json(send, refused.status, refused.body())
                return
        await self._routes(scope, receive, send)  # type: ignore[arg-type]

    # -- the OpenAI API -------------------------------------------------------
    async def _list_models(self, request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "flockd"} for name in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _completions(self, request: Request) -> Response:
        req = decode_completion(decode_json(await _body(request)))
        model = self._lm(req.model)
        ids = await trio.to_thread.run_sync(model.encode_prompt, req.prompt)
        budget = model.budget(ids, req.sampling, DEFAULT_COMPLETION_TOKENS)
        return GenerationResponse(self, model, ids, budget, req.sampling, ReplyShape.new(False, model.name),
                                  stream=req.stream, include_usage=req.include_usage)

    async def _chat(self, request: Request) -> Response:
        req = decode_chat(decode_json(await _body(request)))
        model = self._lm(req.model)
        top_k = self.default_top_k if req.retrieval_top_k is None else req.retrieval_top_k
        hits = await self._retrieve(retrieval_query(req.messages), top_k) if top_k else []
        prompt = chat_prompt(with_sources(req.messages, hits))
        ids = await trio.to_thread.run_sync(model.encode_prompt, prompt)
        budget = model.budget(ids, req.sampling, DEFAULT_CHAT_TOKENS)
        shape = ReplyShape.new(True, model.name, tuple(hits), prompt if req.return_prompt else None)
        return GenerationResponse(self, model, ids, budget, req.sampling, shape,
                                  stream=req.stream, include_usage=req.include_usage)

    async def _predict(self, request: Request) -> Response:
        req = decode_predict(decode_json(await _body(request)))
        model = self.models.get(req.model)
        if not isinstance(model, ServedClassifier):
            raise self._unknown(req.model, "classifier")
        async with self.admission.slot():
            data = await trio.to_thread.run_sync(model.predict, req.inputs)
        return JSONResponse({"object": "list", "model": model.name, "data": data})

    # -- the page's JSON ------------------------------------------------------
    async def _catalogue(self, request: Request) -> Response:
        return JSONResponse({"models": [describe_model(m) for m in self.models.values()],
                             "knowledge": await self._knowledge()})

    async def _listing_view(self, request: Request) -> Response:
        if self.listings is None:
            return JSONResponse({"available": False, "why": "this server does not run inside a daemon (flockd serve "
                                 "alone), so it reads no chain", "listings": []})
        start, limit = _query_int(request, "start", 1), _query_int(request, "limit", LISTINGS_PAGE)
        try:
            view = await self.listings(start, limit)
        except ValueError as exc:  # the page's bounds
            raise bad_request(str(exc), "limit" if "limit" in str(exc) else "start") from None
        served = self._served_listings()
        return JSONResponse({**view, "replay": self.replay_listing is not None,
                             "listings": [{**row, "served": served.get(row["listing_id"])} for row in view["listings"]]})

    async def _listing_replay(self, request: Request) -> Response:
        if self.replay_listing is None:
            raise APIError(404, "this server does not run inside a daemon: it replays no lineage", code="unavailable")
        listing_id = request.path_params["listing_id"]
        if not 1 <= listing_id < 2**63:
            raise bad_request("listing_id must be an integer >= 1", "listing_id")
        return JSONResponse(await self.replay_listing(listing_id))

    def _served_listings(self) -> dict[int, dict[str, str]]:
        """listing id -> the model name and endpoint this node serves it under."""
        out = {}
        for name, model in self.models.items():
            if model.listing is not None:
                endpoint = "/v1/predict" if isinstance(model, ServedClassifier) else "/v1/chat/completions"
                out[int(model.listing["listing_id"])] = {"model": name, "endpoint": endpoint}
        return out

    async def _task_view(self, request: Request) -> Response:
        if self.tasks is None:
            return JSONResponse({"available": False, "why": "this server does not run inside a daemon (flockd serve "
                                 "alone); enable [serve] in the daemon's config.toml to see its tasks", "tasks": []})
        return JSONResponse({"available": True, "tasks": await self.tasks()})

    async def _search(self, request: Request) -> Response:
        body = decode_json(await _body(request))
        query, top_k = body.get("query"), body.get("top_k", 4)
        if not isinstance(query, str) or len(query) > 2000:
            raise bad_request("query must be a string of at most 2000 characters", "query")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 16:
            raise bad_request("top_k must be an integer in [1, 16]", "top_k")
        hits = await self._retrieve(query, top_k)
        return JSONResponse({"sources": [{"file": h.file, "chunk": h.chunk, "score": h.score, "text": h.text}
                                         for h in hits]})

    async def _page(self, request: Request) -> Response:
        name, media_type = _PAGES[request.url.path]
        return Response(resources.files("flockd.serve").joinpath("web", name).read_bytes(), media_type=media_type)

    # -- helpers ----------------------------------------------------------------
    async def _retrieve(self, query: str, top_k: int) -> list[Hit]:
        if self.index is None:
            raise bad_request("this server has no knowledge folder to retrieve from", "retrieval",
                              "retrieval_unavailable")
        self.counters.incr("retrievals")
        return await trio.to_thread.run_sync(self.index.search, query, top_k)

    async def _knowledge(self) -> dict[str, Any]:
        if self.index is None:
            return {"folder": None, "chunks": 0}
        return {"folder": str(self.index.folder), "chunks": await trio.to_thread.run_sync(self.index.chunk_count)}

    def _lm(self, name: str) -> ServedLM:
        model = self.models.get(name)
        if not isinstance(model, ServedLM):
            raise self._unknown(name, "language")
        return model

    def _unknown(self, name: str, kind: str) -> APIError:
        served = ", ".join(n for n, m in self.models.items() if m.kind == ("classifier" if kind == "classifier"
                                                                           else "causal-lm")) or "none"
        return APIError(404, f"the model {name[:100]!r} is not a {kind} model served here (served: {served})",
                        param="model", code="model_not_found")

    async def _error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        self.counters.incr("request_errors")
        return JSONResponse(exc.body(), status_code=exc.status)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return await self._error(request, APIError(404, f"no such endpoint: {request.url.path[:200]}",
                                                   code="unknown_url"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return await self._error(request, APIError(405, f"{request.method} is not allowed here",
                                                   code="method_not_allowed"))


class GenerationResponse(Response):
    """Runs one generation when the server sends the response: in line first (the bounded
    queue), then in a worker thread, as one JSON object or a stream of server-sent events.
    A client that disconnects meanwhile stops it."""

    def __init__(
        self, app: ServeApp, model: ServedLM, prompt_ids: list[int], budget: int, sampling: Sampling,
        shape: ReplyShape, *, stream: bool, include_usage: bool,
    ) -> None:
        super().__init__()
        self.app, self.model, self.prompt_ids, self.budget, self.sampling = app, model, prompt_ids, budget, sampling
        self.shape, self.stream, self.include_usage = shape, stream, include_usage
        self._left = threading.Event()  # the client has gone
        self._answered = False  # a disconnect after the whole response is no news

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, receive, nursery.cancel_scope)
            try:
                async with self.app.admission.slot():
                    await (self._send_stream(send) if self.stream else self._send_whole(send))
            except APIError as exc:  # refused before a byte of the response went out
                self.app.counters.incr("queue_full")
                await _respond_json(send, exc.status, exc.body())
            finally:
                self._answered = True
                nursery.cancel_scope.cancel()

    async def _watch(self, receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self._left.set()
        if not self._answered:
            self.app.counters.incr("client_disconnects")
        scope.cancel()  # leaves the line; a running thread sees _left between two tokens

    async def _generate(self, on_text: Callable[[str], None] | None) -> Generation:
        done: list[Generation] = []

        def work() -> Generation:
            gen = self.model.generate(self.prompt_ids, self.budget, self.sampling, cancelled=self._left.is_set,
                                      on_text=on_text)
            done.append(gen)
            return gen

        try:  # counted in finally: a disconnect cancels this task once the thread is back
            return await trio.to_thread.run_sync(work)
        finally:
            for gen in done:
                self.app.counters.incr("generations_cancelled" if gen.finish_reason == "cancelled" else "generations")
                self.app.counters.incr("tokens_generated", gen.completion_tokens)

    async def _send_whole(self, send: Send) -> None:
        gen = await self._generate(None)
        self._answered = True
        await _respond_json(send, 200, self.shape.whole(gen))

    async def _send_stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        first = self.shape.first_chunk()
        if first is not None:
            await _send_body(send, sse(first))
        pieces_in, pieces_out = trio.open_memory_channel[str](math.inf)  # bounded by the token budget
        token = trio.lowlevel.current_trio_token()

        def deliver(piece: str) -> None:
            with contextlib.suppress(trio.ClosedResourceError):  # the stream has ended: nobody reads it
                pieces_in.send_nowait(piece)

        def on_text(piece: str) -> None:  # in the worker thread: queue it, never wait for the loop
            token.run_sync_soon(deliver, piece)

        async def forward() -> None:
            async for piece in pieces_out:
                await _send_body(send, sse(self.shape.piece_chunk(piece)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                gen = await self._generate(on_text)
            finally:
                pieces_in.close()
        await _send_body(send, sse(self.shape.last_chunk(gen)))
        if self.include_usage:
            await _send_body(send, sse(self.shape.usage_chunk(gen)))
        await _send_body(send, sse("[DONE]"))
        self._answered = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond_json(send: Send, status: int, value: dict[str, Any]) -> None:
    await respond(send, status, json.dumps(value).encode(), [(b"content-type", b"application/json")])


async def _send_body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES while it is read (a declared length first)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _query_int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise bad_request(f"{name} must be a non-negative integer", name)
    return int(text)


def describe_model(model: ServedModel) -> dict[str, Any]:
    listing = model.listing
    common = {"id": model.name, "kind": model.kind, "parameters": model.parameters, "path": str(model.path),
              "lineage": listing, "lineage_note": _lineage_note(listing)}
    if isinstance(model, ServedLM):
        return {**common, "context": model.context, "files_hash": "0x" + model.files_hash.hex()}
    return {**common, "recipe": model.recipe.name, "model_hash": "0x" + model.model_hash.hex(),
            "features": model.num_features, "classes": model.num_classes}


def _lineage_note(listing: dict[str, Any] | None) -> str:
    if listing is None:
        return "not listed on chain: served from a file this node was given, so no on-chain lineage"
    return (f"listing {listing['listing_id']} of task {listing['task_id']}: {listing['rounds']} round(s) from "
            f"{listing['lineage_root'][:10]}…, replayed from the chain and verified")
