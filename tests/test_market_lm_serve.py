"""A listed language model served: an lm-lora global state (residual weights and a carried
LoRA adapter) in the store, with its market record, becomes a Hugging Face directory over
the base from this node's base store (the adapter folded in) and is served by the LM
server under its listed name: /v1/models lists it, /v1/chat/completions answers (the
official openai client over a real hypercorn server). A node without the base, or whose
checkpoint is no longer the listed model, refuses it."""

from __future__ import annotations

import numpy as np
import openai
import pytest
import trio
from safetensors.numpy import load_file
from serve_tiny import TINY

from flockd.fl.checkpoint import checkpoint_bytes, save_checkpoint
from flockd.fl.errors import FLError
from flockd.fl.recipe import load_recipe
from flockd.fl.tensors import model_state, shapes
from flockd.lm.base import BASES_ENV
from flockd.lm.build import build_base
from flockd.market.checks import ListingError, check_model_bytes
from flockd.market.held import HeldModels, served_models
from flockd.market.lm_serve import held_base
from flockd.market.service import MarketService
from flockd.serve.app import ServeApp, describe_model
from flockd.serve.lm import ServedLM
from flockd.serve.thread import ServerThread
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

NAME = "tiny-chat"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BASES_ENV, str(tmp_path_factory.mktemp("lm-bases")))
        yield build_base(TINY)


@pytest.fixture(scope="module")
def listed(base, tmp_path_factory):
    """(spec, trained-looking state, its hash, a store directory holding it)."""
    spec = TaskSpec("lm-lora", config={"base_hash": "0x" + base.base_hash.hex(), "lora_rank": 4, "lora_alpha": 8.0},
                    num_nodes=2, seed=1)
    recipe = load_recipe(spec.recipe, spec.config)
    state = recipe.initial_state(model_state(recipe.build_model(spec.seed)), spec.seed)
    rng = np.random.default_rng(0)
    for name in state:  # a carried adapter whose product is not zero, as after rounds
        if name.endswith(".lora_B"):
            state[name] = rng.normal(0, 0.05, state[name].shape).astype(np.float32)
    models = tmp_path_factory.mktemp("store")
    digest = save_checkpoint(models / "scratch.safetensors", state)
    (models / "scratch.safetensors").rename(models / f"{digest.hex()}.safetensors")
    return spec, state, digest, models


def record_of(spec: TaskSpec, digest: bytes, listing_id: int = 4) -> dict:
    return {"listing_id": listing_id, "name": NAME, "task_id": 9, "model_hash": "0x" + digest.hex(),
            "lineage_root": "0x" + "cd" * 32, "lister": "0x" + "02" * 20, "licence": "Apache-2.0",
            "spec": spec.to_json(), "lineage": {"rounds_checked": 3}}


def held_with(tmp_path, spec, digest) -> HeldModels:
    held = HeldModels(tmp_path / "market")
    held.save(record_of(spec, digest))
    return held


def test_a_held_listed_lm_is_exported_with_its_adapter_folded_in(base, listed, tmp_path) -> None:
    spec, state, digest, models = listed
    held = held_with(tmp_path, spec, digest)
    (model,) = served_models(held, lambda h: models / f"{h.hex()}.safetensors")
    assert isinstance(model, ServedLM) and model.name == NAME
    assert model.path == held.exports / digest.hex()
    recipe = load_recipe(spec.recipe, spec.config)
    exported = load_file(str(model.path / "model.safetensors"))
    expected = recipe.model_weights(state)
    assert sorted(exported) == sorted(expected) and not any(n.endswith((".lora_A", ".lora_B")) for n in exported)
    assert all(np.array_equal(exported[n], expected[n]) for n in expected)
    folded = [n for n in expected if not np.array_equal(expected[n], state[n])]
    assert folded and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in folded)
    described = describe_model(model)
    assert described["lineage"]["listing_id"] == 4 and described["lineage_note"].startswith("listing 4 of task 9: 3 round(s)")


async def test_market_serve_adds_the_listed_lm_to_the_running_api(base, listed, tmp_path) -> None:
    spec, _, digest, models = listed
    app = ServeApp([])
    held = HeldModels(tmp_path / "market")
    market = MarketService(None, None, held, lambda: app)  # type: ignore[arg-type]  # _serve needs neither
    record = {**record_of(spec, digest), "path": str(models / f"{digest.hex()}.safetensors")}
    assert await market._serve(record)

    def talk() -> tuple[list[str], openai.types.chat.ChatCompletion]:
        with ServerThread(app) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            names = [m.id for m in client.models.list()]
            reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hello"}],
                                                   max_tokens=6, temperature=0)
            return names, reply

    names, reply = await trio.to_thread.run_sync(talk)
    assert names == [NAME]
    assert reply.model == NAME and reply.usage.completion_tokens >= 1 and reply.choices[0].message.content is not None
    other = {**record, "listing_id": 5}
    with pytest.raises(ListingError, match="already serves another model named"):
        await market._serve(other)


def test_a_node_without_the_base_refuses_the_listed_lm(listed, tmp_path, monkeypatch) -> None:
    spec, _, digest, models = listed
    held = held_with(tmp_path, spec, digest)
    monkeypatch.setenv(BASES_ENV, str(tmp_path / "empty-store"))
    with pytest.raises(ListingError, match="lacks the base model 0x"):
        held_base(spec)
    assert served_models(held, lambda h: models / f"{h.hex()}.safetensors") == []


def test_a_checkpoint_that_is_no_longer_the_listed_model_is_not_served(base, listed, tmp_path) -> None:
    spec, state, digest, _ = listed
    held = held_with(tmp_path, spec, digest)
    changed = {name: value + 1.0 if name.endswith(".lora_A") else value for name, value in state.items()}
    path = tmp_path / "changed.safetensors"
    save_checkpoint(path, changed)
    assert served_models(held, lambda h: path) == []
    assert not (held.exports / digest.hex()).exists()


def test_a_fetch_checks_an_lm_checkpoint_against_the_global_state_layout(base, listed) -> None:
    """The bytes peers serve hold the carried adapter too: the model's own layout refuses
    them, the state's (what market_fetch checks against) takes them."""
    spec, state, digest, _ = listed
    worker = Worker(spec, 0)
    data = checkpoint_bytes(state)
    with pytest.raises(FLError):
        check_model_bytes(data, worker.model_layout, digest)
    assert shapes(check_model_bytes(data, shapes(worker.initial_model()), digest)) == shapes(state)


def test_a_listed_lm_is_sized_from_its_base_header(base, listed) -> None:
    """from_pretrained refuses torch's meta device: an LM spec is sized from the base's
    safetensors header, this node's own copy."""
    from flockd.market.checks import check_model_size

    spec, _, _, _ = listed
    assert check_model_size(spec, held_base(spec)) == base.parameters
    with pytest.raises(ListingError, match="cannot size"):
        check_model_size(spec)  # the meta-device build the classifiers use
