"""The response objects of the OpenAI API (completion, chat completion, their stream
chunks, usage), plus the ``sources`` a chat with retrieval returns."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flockd.serve.lm import Generation
from flockd.serve.retrieval import Hit


@dataclass(frozen=True)
class ReplyShape:
    """One request's identity in every object it answers with."""

    chat: bool
    model: str
    id: str
    created: int
    sources: tuple[Hit, ...] = ()
    prompt: str | None = None  # set when the client asked for it (return_prompt)

    @staticmethod
    def new(chat: bool, model: str, sources: tuple[Hit, ...] = (), prompt: str | None = None) -> ReplyShape:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return ReplyShape(chat, model, prefix + secrets.token_hex(12), int(time.time()), sources, prompt)

    def whole(self, gen: Generation) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": gen.text}}
        else:
            choice = {"index": 0, "text": gen.text, "logprobs": None}
        choice["finish_reason"] = _finish(gen)
        return {**self._head(False), "choices": [choice], "usage": usage(gen), **self._extras()}

    def first_chunk(self) -> dict[str, Any] | None:
        """The chat stream opens with the role (and the sources); a completion stream has none."""
        if not self.chat:
            return None
        return {**self._head(True), "choices": [self._delta({"role": "assistant", "content": ""}, None)], **self._extras()}

    def piece_chunk(self, text: str) -> dict[str, Any]:
        return {**self._head(True), "choices": [self._delta({"content": text}, None) if self.chat else self._text(text, None)]}

    def last_chunk(self, gen: Generation) -> dict[str, Any]:
        finish = _finish(gen)
        return {**self._head(True), "choices": [self._delta({}, finish) if self.chat else self._text("", finish)]}

    def usage_chunk(self, gen: Generation) -> dict[str, Any]:
        return {**self._head(True), "choices": [], "usage": usage(gen)}

    def _head(self, chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind + (".chunk" if chunk and self.chat else ""), "created": self.created,
                "model": self.model}

    def _extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        if self.sources:
            extras["sources"] = sources_json(self.sources)
        if self.prompt is not None:
            extras["prompt"] = self.prompt
        return extras

    @staticmethod
    def _delta(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish}

    @staticmethod
    def _text(text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}


def usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens}


def sources_json(hits: tuple[Hit, ...]) -> list[dict[str, Any]]:
    """Numbered as the prompt cites them: [1] is the first."""
    return [{"index": i, "file": h.file, "chunk": h.chunk, "score": round(h.score, 6), "text": h.text}
            for i, h in enumerate(hits, 1)]


def sse(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _finish(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"  # "cancelled": nobody is listening
