"""The OpenAI-compatible API driven by the official ``openai`` client against a real
hypercorn server (trio worker) and a real tiny Llama: listing, completions and chat,
streamed and not, usage, the error objects, the bounded queue, a client that leaves in
the middle of a stream, the gate (API key, Host, Origin) and /v1/predict."""

import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import trio
from serve_tiny import tiny_model_dir

from flockd.fl.checkpoint import save_checkpoint
from flockd.fl.recipe import load_recipe
from flockd.serve.admission import Admission
from flockd.serve.app import Gate, ServeApp
from flockd.serve.classifier import ClassifierError, ServedClassifier
from flockd.serve.lm import ServedLM
from flockd.serve.requests import MAX_BODY_BYTES, MAX_PROMPT_CHARS
from flockd.serve.thread import ServerThread


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return ServedLM("tiny", tiny_model_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    recipe = load_recipe("digits-mlp")
    state = {k: v.numpy() for k, v in recipe.build_model(3).state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    save_checkpoint(path, state)
    return ServedClassifier("digits", "digits-mlp", path)


@pytest.fixture(scope="module")
def server(lm, classifier):
    app = ServeApp([lm, classifier])
    with ServerThread(app) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def error_of(call):
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}  # the client unwraps {"error": ...}
    return caught.value.status_code, body


def chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}], **kw)


def test_the_models_are_listed(client):
    assert sorted(m.id for m in client.models.list()) == ["digits", "tiny"]


def test_a_chat_reply_has_a_message_and_usage(client):
    reply = chat(client, max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "tiny"
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("length", "stop")
    usage = reply.usage
    assert usage.prompt_tokens > 3 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_streamed_chat_joins_to_the_same_greedy_text(client):
    whole = chat(client, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    chunks = list(chat(client, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True},
                       extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12 == whole.usage.completion_tokens


def test_completions_streamed_and_not_agree(client):
    kw = {"model": "tiny", "prompt": "Return a new array", "max_tokens": 10, "temperature": 0,
          "extra_body": {"ignore_eos": True}}
    whole = client.completions.create(**kw)
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 10
    assert streamed == whole.choices[0].text


def test_a_stop_sequence_ends_the_text_before_it(client):
    kw = {"model": "tiny", "prompt": "x", "max_tokens": 30, "temperature": 1.0, "seed": 3, "extra_body": {"ignore_eos": True}}
    free = client.completions.create(**kw).choices[0].text
    # A piece of the greedy text, first seen at its own place (the random model's text is noise):
    stop = next(free[i:i + 2] for i in range(3, len(free) - 2)
                if free[i:i + 2].strip() and "\ufffd" not in free[i:i + 2] and free.find(free[i:i + 2]) == i)
    cut = client.completions.create(stop=[stop], **kw)
    assert cut.choices[0].text == free[: free.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_sampling_with_a_seed_repeats(client):
    a, b = (chat(client, max_tokens=10, temperature=1.0, top_p=0.9, seed=7).choices[0].message.content for _ in "ab")
    assert a == b


def test_an_unknown_model_is_a_404_error_object(client):
    status, body = error_of(lambda: client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}]))
    assert status == 404 and body["code"] == "model_not_found" and body["param"] == "model"
    status, body = error_of(lambda: client.completions.create(model="digits", prompt="x"))
    assert status == 404 and body["code"] == "model_not_found"  # a classifier does not complete text


def test_an_oversized_prompt_is_refused(client):
    status, body = error_of(lambda: client.completions.create(model="tiny", prompt="a" * (MAX_PROMPT_CHARS + 1)))
    assert status == 400 and body["code"] == "context_length_exceeded" and body["param"] == "prompt"
    # Under the character bound but over the model's 2048-token context:
    status, body = error_of(lambda: client.completions.create(model="tiny", prompt="zq " * 5000))
    assert status == 400 and body["code"] == "context_length_exceeded"


def test_too_many_tokens_is_refused(client):
    status, body = error_of(lambda: chat(client, max_tokens=100_000))
    assert status == 400 and body["param"] == "max_tokens" and body["code"] == "context_length_exceeded"
    status, body = error_of(lambda: chat(client, max_tokens=0))
    assert status == 400 and body["param"] == "max_tokens"


@pytest.mark.parametrize("body, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (json.dumps({"model": "tiny", "messages": []}).encode(), None),
    (json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}).encode(), None),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}).encode(), None),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}).encode(), None),
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), None),
])
def test_malformed_requests_get_400_error_objects(server, body, code):
    response = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if code:
        assert error["code"] == code


def test_a_body_over_the_cap_is_refused_with_413(server):
    response = httpx.post(server.url + "/v1/completions", content=b" " * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_unknown_paths_and_methods_get_error_objects(server):
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "unknown_url"
    response = httpx.get(server.url + "/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_a_full_queue_refuses_with_503(lm, client):
    app = ServeApp([lm], admission=Admission(running=1, waiting=0))
    release = trio.Event()
    held = threading.Event()

    async def hold() -> None:
        async with app.admission.slot():
            held.set()
            await release.wait()

    with ServerThread(app) as running:
        trio.from_thread.run_sync(running.nursery.start_soon, hold, trio_token=running.token)
        held.wait()
        busy = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        status, body = error_of(lambda: busy.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}]))
        assert status == 503 and body["code"] == "queue_full"
        trio.from_thread.run_sync(release.set, trio_token=running.token)
        assert busy.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2).usage
    assert app.counters.get("queue_full") == 1


def test_a_client_that_leaves_mid_stream_stops_its_generation(lm):
    app = ServeApp([lm])
    with ServerThread(app) as running:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", running.url + "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # generating
        deadline = time.monotonic() + 60  # a bound on waiting, not an assertion on speed
        while app.counters.get("generations_cancelled") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert app.counters.get("generations_cancelled") == 1 and app.counters.get("client_disconnects") == 1
    assert app.counters.get("tokens_generated") < 2000


def test_the_api_key_is_required_when_set(lm):
    with ServerThread(ServeApp([lm], gate=Gate(api_key="s3cret"))) as running:
        status, body = error_of(lambda: openai.OpenAI(base_url=running.url + "/v1", api_key="wrong",
                                                      max_retries=0).models.list())
        assert status == 401 and body["code"] == "invalid_api_key"
        assert httpx.get(running.url + "/v1/models").status_code == 401
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list()] == ["tiny"]
        assert httpx.get(running.url + "/").status_code == 200  # the page holds no data


def test_other_hosts_and_origins_are_refused(server):
    url = server.url + "/v1/models"
    assert httpx.get(url, headers={"host": "evil.example"}).json()["error"]["code"] == "host_refused"
    assert httpx.get(url, headers={"host": f"localhost:{server.port}"}).status_code == 200
    refused = httpx.get(url, headers={"origin": "http://evil.example"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "origin_refused"
    assert httpx.get(url, headers={"origin": server.url}).status_code == 200


def test_predict_classifies_digit_rows(server, classifier):
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = digits.data[:5].tolist()
    reply = httpx.post(server.url + "/v1/predict", json={"model": "digits", "input": rows}).json()
    assert [d["index"] for d in reply["data"]] == list(range(5))
    import torch

    with torch.no_grad():
        expected = classifier.model(torch.tensor(np.asarray(rows) / 16.0, dtype=torch.float32)).argmax(-1).tolist()
    assert [d["label"] for d in reply["data"]] == expected
    assert all(abs(sum(d["probabilities"]) - 1) < 1e-3 for d in reply["data"])
    bad = httpx.post(server.url + "/v1/predict", json={"model": "digits", "input": [[1.0, 2.0]]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    assert httpx.post(server.url + "/v1/predict", json={"model": "tiny", "input": [[1.0]]}).status_code == 404


def test_a_checkpoint_of_another_shape_is_refused(tmp_path):
    state = {k: v.numpy() for k, v in load_recipe("digits-mlp", {"hidden": 16}).build_model(0).state_dict().items()}
    save_checkpoint(tmp_path / "small.safetensors", state)
    with pytest.raises(ClassifierError):
        ServedClassifier("digits", "digits-mlp", tmp_path / "small.safetensors")


def test_special_token_names_in_a_prompt_are_text(lm):
    ids = lm.encode_prompt("stop here <|end|> and <|bos|>")
    assert ids[0] == lm.tokenizer.bos_id and not set(ids[1:]) & ({lm.tokenizer.bos_id} | lm.eos_ids)
    assert lm.tokenizer.decode(ids[1:]) == "stop here <|end|> and <|bos|>"
