"""Arena competitions for language models (flockd.arena.lm): the spec's submission kinds
(a classifier's spec hashes as before), the evaluation-set envelope and its strict decoder
(hypothesis), the bits-per-character score map, and a whole LM competition on the embedded
chain with the real contract: a trainer's adapter trained on its own text, a garbage
trainer whose committed model is a full model in an adapter competition (scored 0, the
validator does not stall), arena_verify on every member, and the hand-off of the winning
adapter to an lm-lora Alliance task."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save
from serve_tiny import TINY
from test_anvil import E18, MEMBERS, embedded_env, genesis
from test_arena_anvil import advance_to
from test_arena_roles import Nodes, node, params
from test_arena_wire import call

from flockd.arena.handoff import Handoff
from flockd.arena.lm import (
    MAX_LM_EVAL_RECORDS,
    MAX_LM_EVAL_TEXT_BYTES,
    bpc_score,
    decode_lm_eval_text,
    encode_lm_eval,
    lm_eval_hash,
)
from flockd.arena.spec import (
    ArenaSpec,
    ArenaSpecError,
    TrainerSettings,
    base_layout,
    creator_eval_set,
    decode_eval_set,
    score_model,
    submission_weights,
    train_submission,
)
from flockd.arena.verify import verify_competition
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    submission_digest,
)
from flockd.fl.checkpoint import load_checkpoint, model_hash, save_checkpoint
from flockd.fl.recipe import canonical_json
from flockd.fl.tensors import shapes
from flockd.lm.base import BASES_ENV
from flockd.lm.build import build_base
from flockd.lm.recipe import CAUSAL_LORA_DEFAULTS
from flockd.tasks.service import TaskService
from flockd.tasks.spec import TaskSpec

FAST = {"domains": ["json", "textwrap"], "seq_len": 64, "batch_size": 8, "steps": 4, "lr": 1e-2, "lora_rank": 4,
        "lora_alpha": 8.0}
MAX_CHARS = CAUSAL_LORA_DEFAULTS["max_chars"]


@pytest.fixture
def tiny_base(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny Llama's hash, from the serving tests' store (built once a session)."""
    monkeypatch.setenv(BASES_ENV, str(tmp_path_factory.getbasetemp() / "serve-bases"))
    return "0x" + build_base(TINY).base_hash.hex()


def lm_spec(base_hash: str, submission: str = "adapter") -> ArenaSpec:
    return ArenaSpec("lm-lora", {"base_hash": base_hash, **FAST}, seed=0, submission=submission)


# -- the spec -----------------------------------------------------------------------------

def test_a_classifier_spec_hashes_as_before_and_takes_full_models_only() -> None:
    spec = ArenaSpec("digits-mlp", {"epochs": 1}, seed=3)
    assert spec.spec_hash == keccak(canonical_json({"recipe": "digits-mlp", "config": {"epochs": 1}, "seed": 3}))
    assert "submission" not in spec.to_json() and ArenaSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ArenaSpecError, match="full model"):
        replace(spec, submission="adapter")
    with pytest.raises(ArenaSpecError, match="submission must be one of"):
        ArenaSpec.from_json({"recipe": "digits-mlp", "submission": "weights"})


def test_an_lm_spec_names_its_submission_kind() -> None:
    adapter = lm_spec("0x" + "11" * 32)
    assert adapter.to_json()["submission"] == "adapter" and ArenaSpec.from_json(adapter.to_json()) == adapter
    model = lm_spec("0x" + "11" * 32, "model")
    assert "submission" not in model.to_json() and model.spec_hash != adapter.spec_hash


@pytest.mark.parametrize(
    ("method", "params_", "reason"),
    [
        ("arena_create", {"recipe": "digits-mlp", "reward_pool": 1, "creator_bond": 1, "submission": "adapter"}, "full model"),
        ("arena_create", {"recipe": "lm-lora", "config": {"base_hash": "0x" + "11" * 32}, "reward_pool": 1,
                          "creator_bond": 1, "submission": "weights"}, "submission"),
        ("arena_submit", {"competition_id": 1, "steps": 0}, "steps"),
    ],
)
async def test_lm_params_are_refused_before_the_chain(method: str, params_: dict[str, object], reason: str) -> None:
    error = await call(method, params_)
    assert error["code"] == -32602 and reason in error["message"], error


# -- the evaluation set -------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_envelope_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    with contextlib.suppress(ArenaSpecError):
        examples, digest = decode_lm_eval_text(data, MAX_CHARS)
        assert examples and len(digest) == 32


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["jsonl", "txt", "csv", "x"]), st.binary(max_size=300))
def test_any_text_in_the_envelope_decodes_or_fails_cleanly(fmt: str, text: bytes) -> None:
    envelope = st_save({fmt: np.frombuffer(text, dtype=np.uint8)}) if text else st_save({fmt: np.zeros(0, np.uint8)})
    try:
        examples, digest = decode_lm_eval_text(envelope, MAX_CHARS)
    except ArenaSpecError:
        return
    assert fmt in ("jsonl", "txt") and examples and digest == lm_eval_hash(fmt, text)


@given(st.lists(st.tuples(st.text(max_size=30), st.text(min_size=1, max_size=30)), min_size=1, max_size=8))
def test_jsonl_records_round_trip(records: list[tuple[str, str]]) -> None:
    text = "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in records).encode()
    envelope, digest = encode_lm_eval("jsonl", text)
    examples, got = decode_lm_eval_text(envelope, 10_000)
    assert got == digest and [e.text for e in examples] == [p + c for p, c in records]


def test_the_decoder_refuses_what_breaks_its_bounds() -> None:
    def refused(envelope: bytes, match: str) -> None:
        with pytest.raises(ArenaSpecError, match=match):
            decode_lm_eval_text(envelope, MAX_CHARS)

    refused(st_save({"txt": np.frombuffer(b"\xff\xfe", np.uint8)}), "not UTF-8")
    refused(st_save({"txt": np.zeros(2, np.float32)}), "uint8")
    refused(st_save({"txt": np.zeros((2, 2), np.uint8)}), "uint8")
    refused(st_save({"txt": np.frombuffer(b"a", np.uint8), "jsonl": np.frombuffer(b"a", np.uint8)}), "one tensor")
    refused(st_save({"txt": np.zeros(MAX_LM_EVAL_TEXT_BYTES + 1, np.uint8)}), "1 to")
    refused(st_save({"txt": np.zeros(MAX_LM_EVAL_TEXT_BYTES + 8192, np.uint8)}), "more than")
    many = b'{"prompt": "", "completion": "x"}\n' * (MAX_LM_EVAL_RECORDS + 1)
    refused(encode_lm_eval("jsonl", many)[0], "records")
    refused(encode_lm_eval("jsonl", b'{"prompt": 1}\n')[0], "record")
    refused(encode_lm_eval("txt", b"\n\n  \n")[0], "no text")


def test_the_score_map_is_monotone_and_saturates() -> None:
    assert bpc_score(0.0) == 8_000_000 and bpc_score(2.5) == 5_500_000 and bpc_score(2.5000004) == 5_500_000
    assert bpc_score(8.0) == 0 == bpc_score(31.0) == bpc_score(float("inf")) == bpc_score(float("nan"))
    figures = [0.1 * k for k in range(100)]
    assert all(bpc_score(a) >= bpc_score(b) for a, b in zip(figures, figures[1:], strict=False))


# -- training and scoring on the tiny base ------------------------------------------------

def test_an_adapter_and_its_folded_model_score_alike(tiny_base: str) -> None:
    adapter_spec, model_spec = lm_spec(tiny_base), lm_spec(tiny_base, "model")
    envelope, digest = creator_eval_set(adapter_spec, None)
    eval_set, got = decode_eval_set(envelope, adapter_spec)
    assert got == digest
    settings_ = TrainerSettings(node_index=1, num_nodes=2, steps=3, lr=2e-2, seed=5)
    adapter = train_submission(adapter_spec, settings_)
    model = train_submission(model_spec, settings_)
    assert shapes(adapter) == base_layout(adapter_spec) and shapes(model) == base_layout(model_spec)
    assert model_hash(submission_weights(adapter_spec, adapter)) == model_hash(model)
    score = score_model(adapter_spec, adapter, eval_set)
    assert 0 < score == score_model(model_spec, model, eval_set) == score_model(adapter_spec, adapter, eval_set)
    with pytest.raises(ArenaSpecError, match="steps, not epochs"):
        train_submission(adapter_spec, TrainerSettings(epochs=1))


def test_a_prepared_submission_file_must_be_in_the_competitions_layout(tiny_base: str, tmp_path: Path) -> None:
    adapter_spec, model_spec = lm_spec(tiny_base), lm_spec(tiny_base, "model")
    adapter = train_submission(adapter_spec, TrainerSettings(steps=1, seed=2))
    path = tmp_path / "adapter.safetensors"
    save_checkpoint(path, adapter)
    assert model_hash(train_submission(adapter_spec, TrainerSettings(model_path=str(path)))) == model_hash(adapter)
    with pytest.raises(ArenaSpecError, match="model_path"):
        train_submission(model_spec, TrainerSettings(model_path=str(path)))  # an adapter where a model is asked


# -- a competition on the embedded chain, and the hand-off --------------------------------

TEXT = "\n\n".join(
    f"The parser reads record {i} and returns a dictionary of its fields, or raises ValueError." for i in range(30)
)
EVAL = "".join(
    json.dumps({"prompt": f"Q{i}: what does loads return?", "completion": " a Python object decoded from JSON text."}) + "\n"
    for i in range(12)
)
TASK = {"rounds": 2, "expected_proposers": 2, "min_participants": 2, "min_stake": E18, "stake_unit": E18,
        "propose_blocks": 8, "commit_blocks": 6, "reveal_blocks": 8, "reward_pool": 0, "vote_mode": 0, "max_proposals": 16}


async def test_an_lm_competition_scores_bpc_zeroes_garbage_verifies_and_hands_off(tiny_base: str, tmp_path: Path) -> None:
    spec = lm_spec(tiny_base)
    (tmp_path / "eval.jsonl").write_text(EVAL)
    (tmp_path / "mine.txt").write_text(TEXT)
    async with embedded_env(genesis(arena=True)) as env:
        nodes = Nodes(env, {w: node(env, w, tmp_path) for w in range(4)})
        creator, trainer, garbage, validator = (nodes.services[w] for w in range(4))
        created = await creator.create(spec, str(tmp_path / "eval.jsonl"), params(16))
        cid = created["competition_id"]
        for svc in (trainer, garbage):
            await svc.join(cid, spec, "trainer", 10 * E18)
        await trainer.submit(cid, TrainerSettings(data_path=str(tmp_path / "mine.txt"), steps=6, lr=2e-2, seed=1))
        # the garbage trainer commits the base's full weights: not an adapter
        wrong = garbage.ctx.store.put_model(spec.base_model())
        m = garbage.members[cid]
        garbage.remember(replace(m, model_hash=wrong.hex(), submission_salt=(b"\x01" * 32).hex()))
        await garbage.arena.commit_submission(cid, submission_digest(cid, MEMBERS[2].address, wrong, b"\x01" * 32))
        await validator.join(cid, spec, "validator", 100 * E18)

        await advance_to(env, creator.arena, cid, ARENA_PHASE_SUBMIT)
        await nodes.step(3, cid)
        await advance_to(env, creator.arena, cid, ARENA_PHASE_REVEAL)
        for w in (1, 2):
            await nodes.step(w, cid)
        await advance_to(env, creator.arena, cid, ARENA_PHASE_SCORE_COMMIT)
        for w in (0, 1, 2):
            nodes.hand_over(cid, w, [3])
        await nodes.step(3, cid)  # the wrong-layout model scores 0 at once: the validator does not wait
        scores = nodes.services[3].members[cid].scores
        assert scores is not None and scores[0] > 0 and scores[1] == 0
        await advance_to(env, creator.arena, cid, ARENA_PHASE_SCORE_REVEAL)
        for w in (3, 0):
            await nodes.step(w, cid)
        await advance_to(env, creator.arena, cid, ARENA_PHASE_CLOSED)
        await nodes.step(0, cid)
        for w in (0, 1, 2):
            nodes.hand_over(cid, w, [o for o in range(4) if o != w])
        for w in range(4):
            verified = await verify_competition(nodes.services[w], await nodes.services[w].snapshot(cid), spec)
            assert verified["ok"], (w, verified["problems"])
            first, second = verified["submissions"]
            assert first["recomputed_score"] == first["median"] == scores[0] and first["rank"] == 1
            assert second["recomputed_score"] == second["median"] == second["rank"] == 0  # worthless: unranked

        # the hand-off: an lm-lora task from the winning adapter, folded into the base
        tasks = TaskService(creator.ctx, creator.token)
        tasks.handoff = Handoff(creator)
        task_spec = TaskSpec("lm-lora", spec.config, seed=spec.seed, num_nodes=2, competition=cid)
        task = await tasks.create(task_spec, **TASK)
        registry_params = await tasks.registry.get_params(task["task_id"])
        worker = await tasks.worker_for(task_spec, 0, str(tmp_path / "mine.txt"))
        initial = worker.initial_model()
        assert model_hash(initial) == registry_params.model_init_hash
        winner = load_checkpoint(trainer.ctx.store.model_path(bytes.fromhex(trainer.members[cid].model_hash or "")))
        folded = submission_weights(spec, winner)
        assert model_hash(worker.recipe.model_weights(initial)) == model_hash(folded)  # round 0's model is the winner's
        checked = await tasks.handoff.verify(task_spec)
        assert checked["ok"], checked["problems"]
        assert checked["winner"]["index"] == 0 and checked["winner"]["model_hash"] == "0x" + trainer.members[cid].model_hash
