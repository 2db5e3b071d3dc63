"""The request decoders on hostile input: any JSON value, any bytes. A decoder either
returns a typed request whose fields are in range or raises APIError with a 4xx status;
nothing else escapes (no TypeError, OverflowError, RecursionError)."""

import json
import math
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.serve.errors import APIError
from flockd.serve.requests import (
    MAX_STOP_SEQUENCES,
    ChatRequest,
    CompletionRequest,
    PredictRequest,
    decode_chat,
    decode_completion,
    decode_json,
    decode_predict,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
fields = {
    "model": st.sampled_from(["tiny", "", 3]) | json_values,
    "prompt": st.text(max_size=30) | json_values,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x"]) | json_values,
                                                "content": st.text(max_size=20) | json_values}), max_size=3) | json_values,
    "max_tokens": st.integers(-5, 10**30) | json_values,
    "temperature": st.floats() | json_values,
    "top_p": st.floats() | json_values,
    "stop": st.lists(st.text(max_size=70), max_size=6) | json_values,
    "seed": st.integers(-(2**70), 2**70) | json_values,
    "stream": json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": json_values}) | json_values,
    "retrieval": st.fixed_dictionaries({"top_k": st.integers(-3, 40) | json_values}) | json_values,
    "input": st.lists(st.lists(st.floats() | st.integers(-(2**1100), 2**1100), max_size=5), max_size=3) | json_values,
    "n": st.integers(0, 3) | json_values,
}
bodies = st.fixed_dictionaries({}, optional=fields)


def decoded_or_refused(decode, body):
    try:
        return decode(body)
    except APIError as exc:
        assert 400 <= exc.status < 500 and exc.body()["error"]["message"]
        return None


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_the_decoders_return_checked_requests_or_refuse(body):
    for decode in (decode_completion, decode_chat, decode_predict):
        req = decoded_or_refused(decode, body)
        if isinstance(req, (CompletionRequest, ChatRequest)):
            s = req.sampling
            assert isinstance(req.model, str) and req.model
            assert s.max_tokens is None or (type(s.max_tokens) is int and s.max_tokens >= 1)
            assert 0 <= s.temperature <= 2 and 0 < s.top_p <= 1 and len(s.stop) <= MAX_STOP_SEQUENCES
            assert s.seed is None or 0 <= s.seed < 2**63
        if isinstance(req, ChatRequest):
            assert all(m.role in ("system", "user", "assistant") and isinstance(m.content, str) for m in req.messages)
            assert req.retrieval_top_k is None or 0 <= req.retrieval_top_k <= 16
        if isinstance(req, PredictRequest):
            assert all(math.isfinite(v) for row in req.inputs for v in row)


@given(st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_any_bytes_decode_to_an_object_or_an_invalid_json_error(data):
    try:
        assert isinstance(decode_json(data), dict)
    except APIError as exc:
        assert exc.status == 400 and exc.code == "invalid_json"


def test_deeply_nested_json_is_refused_without_crashing_the_process():
    # In a daemon py-evm has raised the recursion limit (eth/__init__.py), so the C JSON
    # decoder overflows the thread's stack on deep nesting instead of raising: a separate
    # process, so that a crash fails this test rather than killing the test run.
    script = (
        "import eth\n"
        "from flockd.serve.errors import APIError\n"
        "from flockd.serve.requests import decode_json\n"
        "try:\n"
        "    decode_json(b'[' * 200_000 + b']' * 200_000)\n"
        "except APIError as exc:\n"
        "    print(exc.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "invalid_json"


def test_a_whole_chat_request_decodes():
    req = decode_chat(json.loads(json.dumps({
        "model": "tiny", "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                                      {"role": "user", "content": "hi"}],
        "max_tokens": 5, "stop": "\n", "retrieval": {"top_k": 3}, "stream": True,
        "stream_options": {"include_usage": True},
    })))
    assert [m.role for m in req.messages] == ["system", "user"] and req.messages[0].content == "be brief"
    assert req.sampling.stop == ("\n",) and req.retrieval_top_k == 3 and req.stream and req.include_usage
