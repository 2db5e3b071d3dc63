"""Request bodies decoded into typed requests. Every field a client sends is hostile until
checked here: types (a bool is not an int), ranges and sizes, before any model work.
Unknown fields are ignored, as OpenAI's clients send many optional ones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flockd import safejson
from flockd.safejson import TooDeep
from flockd.serve.errors import bad_request

MAX_BODY_BYTES = 1 << 20  # checked while reading, before any parsing
MAX_PROMPT_CHARS = 32_000  # the cheap bound; the model's context is checked on tokens
MAX_MESSAGES = 256
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_TOP_K = 16
MAX_PREDICT_ROWS = 1024
MAX_FEATURES = 4096
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None  # None: the endpoint's default, bounded by the context
    temperature: float  # 0: greedy
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    ignore_eos: bool  # vLLM's extension: keep going past the end-of-text token


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    stream: bool
    include_usage: bool
    retrieval_top_k: int | None  # None: not asked (the server's default); 0: none
    return_prompt: bool  # our extension: the prompt the model saw, in the response


@dataclass(frozen=True)
class PredictRequest:
    model: str
    inputs: tuple[tuple[float, ...], ...]


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        value = safejson.loads(body)  # the nesting is bounded before the C decoder sees it
    except TooDeep as exc:
        raise bad_request(f"the request body is {exc}", code="invalid_json") from None
    except (ValueError, RecursionError):
        raise bad_request("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(value, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return value


def decode_completion(body: dict[str, Any]) -> CompletionRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # the API allows a batch; one prompt a request here
    if not isinstance(prompt, str):
        raise bad_request("prompt must be a string (one prompt; token arrays are not supported)", "prompt")
    _check_prompt_size(len(prompt), "prompt")
    stream, include_usage = _stream(body)
    return CompletionRequest(_model(body), prompt, _sampling(body), stream, include_usage)


def decode_chat(body: dict[str, Any]) -> ChatRequest:
    messages = tuple(_message(m) for m in _items(body, "messages", MAX_MESSAGES))
    _check_prompt_size(sum(len(m.content) for m in messages), "messages")
    stream, include_usage = _stream(body)
    return ChatRequest(
        _model(body), messages, _sampling(body), stream, include_usage, _retrieval(body.get("retrieval")),
        _flag(body, "return_prompt"),
    )


def decode_predict(body: dict[str, Any]) -> PredictRequest:
    rows = []
    for row in _items(body, "input", MAX_PREDICT_ROWS):
        if not isinstance(row, list) or not 0 < len(row) <= MAX_FEATURES:
            raise bad_request(f"each input row must be a list of 1 to {MAX_FEATURES} numbers", "input")
        rows.append(tuple(_finite(v, "input") for v in row))
    return PredictRequest(_model(body), tuple(rows))


def _items(body: dict[str, Any], key: str, most: int) -> list[Any]:
    raw = body.get(key)
    if not isinstance(raw, list) or not 0 < len(raw) <= most:
        raise bad_request(f"{key} must be a list of 1 to {most} items", key)
    return raw


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 256:
        raise bad_request("model must be a non-empty string", "model")
    return model


def _check_prompt_size(chars: int, param: str) -> None:
    if chars > MAX_PROMPT_CHARS:
        raise bad_request(
            f"the prompt has {chars} characters; at most {MAX_PROMPT_CHARS}", param, "context_length_exceeded"
        )


def _message(raw: Any) -> ChatMessage:
    if not isinstance(raw, dict):
        raise bad_request("each message must be an object with role and content", "messages")
    role = raw.get("role")
    if role == "developer":  # OpenAI's newer name for the system role
        role = "system"
    if role not in ROLES:
        raise bad_request(f"message role must be one of {', '.join(ROLES)}", "messages")
    content = raw.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise bad_request("only text content parts are supported", "messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad_request("message content must be a string", "messages")
    return ChatMessage(role, content)


def _sampling(body: dict[str, Any]) -> Sampling:
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise bad_request("only n = 1 is supported", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and not (_is_int(max_tokens) and max_tokens >= 1):
        raise bad_request("max_tokens must be an integer >= 1", "max_tokens")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("top_p must be in (0, 1]", "top_p")
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**63):
        raise bad_request("seed must be an integer in [0, 2^63)", "seed")
    return Sampling(max_tokens, temperature, top_p, _stop(body.get("stop")), seed, _flag(body, "ignore_eos"))


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise bad_request(
            f"stop must be a string or a list of at most {MAX_STOP_SEQUENCES} strings of 1 to {MAX_STOP_CHARS} characters",
            "stop",
        )
    return tuple(stops)


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise bad_request("stream_options.include_usage must be a boolean", "stream_options")
    return stream, include_usage


def _retrieval(raw: Any) -> int | None:
    """``"retrieval": true`` (top_k 4) or ``{"top_k": K}``; false: none; absent: None."""
    if raw is None:
        return None
    if raw is False:
        return 0
    if raw is True:
        return 4
    if isinstance(raw, dict):
        top_k = raw.get("top_k", 4)
        if _is_int(top_k) and 1 <= top_k <= MAX_TOP_K:
            return int(top_k)
    raise bad_request(f"retrieval must be true or {{\"top_k\": 1..{MAX_TOP_K}}}", "retrieval")


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{key} must be a boolean", key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    number = _finite(value, key)
    if not low <= number <= high:
        raise bad_request(f"{key} must be in [{low}, {high}]", key)
    return number


def _finite(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{param} must be a number", param)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise bad_request(f"{param} is out of range", param) from None
    if not math.isfinite(number):
        raise bad_request(f"{param} must be finite", param)
    return number


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
