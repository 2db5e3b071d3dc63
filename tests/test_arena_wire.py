"""Decoders and checks of what an Arena member receives from peers and clients: the
evaluation-set exchange (hypothesis: any bytes give a value or a clear error), the
evaluation set and submissions as checkpoints, and the arena_* parameter checks, which
refuse before anything reaches the chain."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flockd.arena.exchange import (
    EvalExchangeError,
    decode_eval_reply,
    decode_eval_request,
    encode_eval_reply,
    encode_eval_request,
)
from flockd.arena.spec import (
    ArenaSpec,
    ArenaSpecError,
    decode_eval_set,
    encode_eval_set,
    load_submission,
    score_model,
)
from flockd.fl.checkpoint import checkpoint_bytes, model_hash
from flockd.fl.data import Split
from flockd.fl.tensors import shapes
from flockd.rpc.arena import ArenaNamespace
from flockd.rpc.dispatch import Dispatcher

SPEC = ArenaSpec("digits-mlp", seed=1)


@given(st.binary(max_size=64))
def test_any_request_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(EvalExchangeError):
        assert decode_eval_request(data) > 0


@given(st.binary(max_size=256))
def test_any_reply_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(EvalExchangeError):
        salt, _ = decode_eval_reply(data, 128)
        assert len(salt) == 32


@given(st.integers(1, 2**64 - 1), st.binary(min_size=32, max_size=32), st.binary(max_size=100))
def test_round_trips(cid: int, salt: bytes, body: bytes) -> None:
    assert decode_eval_request(encode_eval_request(cid)) == cid
    assert decode_eval_reply(encode_eval_reply(salt, body), 100) == (salt, body)


def test_a_reply_above_the_cap_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(EvalExchangeError):
        decode_eval_reply(encode_eval_reply(bytes(32), bytes(101)), 100)


def eval_split(n: int = 20) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.random((n, 64), dtype=np.float32), rng.integers(0, 10, n))


def test_the_eval_set_round_trips_under_its_hash() -> None:
    data, digest = encode_eval_set(eval_split())
    split, again = decode_eval_set(data, SPEC)
    assert again == digest and np.array_equal(split.y, eval_split().y)


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"x": np.zeros((4, 64), np.float32), "y": np.full(4, 10, np.float32)}, "labels"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.full(4, 0.5, np.float32)}, "labels"),
        ({"x": np.zeros((4, 63), np.float32), "y": np.zeros(4, np.float32)}, "do not fit"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.zeros(3, np.float32)}, "do not fit"),
        ({"x": np.zeros((4, 64), np.float32), "y": np.zeros(4, np.float32), "z": np.zeros(1, np.float32)}, "exactly"),
    ],
)
def test_an_eval_set_that_does_not_fit_the_recipe_is_refused(tensors: dict[str, Any], reason: str) -> None:
    with pytest.raises(ArenaSpecError, match=reason):
        decode_eval_set(checkpoint_bytes(tensors), SPEC)


def test_garbage_is_not_an_eval_set() -> None:
    with pytest.raises(ArenaSpecError):
        decode_eval_set(b"\x00" * 64, SPEC)


def test_a_submission_must_be_the_committed_model_in_the_base_layout() -> None:
    base = SPEC.base_model()
    layout = shapes(base)
    data = checkpoint_bytes(base)
    assert load_submission(data, model_hash(base), layout).keys() == base.keys()
    with pytest.raises(ArenaSpecError, match="hash"):
        load_submission(data, bytes(32), layout)
    other = {k: v[..., :1] for k, v in base.items()}
    with pytest.raises(ArenaSpecError):
        load_submission(checkpoint_bytes(other), model_hash(other), layout)


def test_scores_are_deterministic_millionths() -> None:
    base, split = SPEC.base_model(), eval_split()
    score = score_model(SPEC, base, split)
    assert score == score_model(SPEC, base, split) and 0 <= score <= 10**6


def test_the_spec_is_pinned_by_its_hash_and_classifiers_only() -> None:
    assert ArenaSpec.from_json(SPEC.to_json()).spec_hash == SPEC.spec_hash
    assert ArenaSpec("digits-mlp", seed=2).spec_hash != SPEC.spec_hash
    with pytest.raises(ArenaSpecError, match="unknown"):
        ArenaSpec.from_json({**SPEC.to_json(), "extra": 1})
    with pytest.raises(ArenaSpecError):
        ArenaSpec("no-such-recipe")


class NoService:
    """Any use of the service means a check let a bad request through."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the request reached the service ({name})")


async def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
    d = Dispatcher([ArenaNamespace(NoService())])  # type: ignore[arg-type]
    reply = await d.handle_line(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode())
    assert reply is not None
    error: dict[str, Any] = json.loads(reply)["error"]
    return error


@pytest.mark.parametrize(
    ("method", "params", "reason"),
    [
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": "1e18", "creator_bond": 1, "join_blocks": 0}, "join_blocks"),
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": "1e18", "creator_bond": 1, "reveal_blocks": 7}, "reveal_blocks"),
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": "1e18", "creator_bond": 1, "slash_bps": 5001}, "slash_bps"),
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": 0, "creator_bond": 1}, "reward_pool"),
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": 1, "creator_bond": 1, "validator_cap": 1}, "validator_cap"),
        ("arena_create", {"recipe": "lm-lora", "reward_pool": 1, "creator_bond": 1}, "spec|classifier"),
        ("arena_join", {"competition_id": 0, "spec": {"recipe": "digits-mlp"}, "role": "trainer", "stake": 1}, "competition_id"),
        ("arena_join", {"competition_id": 1, "spec": {"recipe": "digits-mlp"}, "role": "creator", "stake": 1}, "role"),
        ("arena_join", {"competition_id": 1, "spec": {"recipe": "digits-mlp"}, "role": "trainer", "stake": "-1"}, "stake"),
        ("arena_submit", {"competition_id": 1, "node_index": 2, "num_nodes": 2}, "node_index"),
        ("arena_submit", {"competition_id": 1, "lr": 0}, "lr"),
        ("arena_status", {"competition_id": 2**70}, "competition_id"),
    ],
)
async def test_bad_params_are_refused_before_the_chain(method: str, params: dict[str, Any], reason: str) -> None:
    error = await call(method, params)
    assert error["code"] == -32602, error
    assert re.search(reason, error["message"]), error
