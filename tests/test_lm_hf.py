"""lm-lora on a real (tiny) Llama built here: the base build is cached and reproducible, a
federated round through the worker, refusals before transformers runs, and the exported
model loading with transformers."""

import json
import shutil

import numpy as np
import pytest
import torch

from flockd.fl.attacks import parse_behaviour
from flockd.fl.checkpoint import checkpoint_bytes, model_hash
from flockd.fl.codec import decode_delta, encode_delta
from flockd.fl.data import DataSpec
from flockd.fl.tensors import load_model_state
from flockd.lm.base import BASES_ENV, RemoteCodeRefused, base_hash, check_base_dir, export_model_dir
from flockd.lm.build import BaseBuild, build_base
from flockd.lm.corpus import garbage_text
from flockd.lm.hf import greedy_text
from flockd.lm.testnet import lm_markdown, lm_report
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

TINY = BaseBuild(vocab=512, hidden=32, layers=2, heads=2, ffn=64, seq_len=64, batch_size=8, steps=20, threads=1)
FAST = {"domains": ["json", "textwrap"], "seq_len": 64, "batch_size": 8, "steps": 12, "lr": 1e-2, "lora_rank": 4, "lora_alpha": 8.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-bases")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BASES_ENV, str(root))
        yield root, build_base(TINY)


def spec_for(digest: bytes) -> TaskSpec:
    return TaskSpec("lm-lora", config={"base_hash": "0x" + digest.hex(), **FAST}, num_nodes=2, seed=1)


def test_the_base_is_built_once_and_rebuilt_to_the_same_bytes(store, tmp_path, monkeypatch):
    _, built = store
    assert not built.cached and built.held_out_bpc is not None and built.parameters > 30_000
    assert check_base_dir(built.path) == built.base_hash
    assert sorted(p.name for p in built.path.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"
    ]
    again = build_base(TINY)
    assert again.cached and again.base_hash == built.base_hash
    monkeypatch.setenv(BASES_ENV, str(tmp_path / "elsewhere"))
    rebuilt = build_base(TINY)
    assert not rebuilt.cached and rebuilt.base_hash == built.base_hash  # same machine, same bytes


def test_a_base_carrying_remote_code_is_refused_before_transformers_runs(store, tmp_path):
    root, built = store
    spoiled = tmp_path / "spoiled"
    shutil.copytree(built.path, spoiled)
    config = json.loads((spoiled / "config.json").read_text())
    (spoiled / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    digest = base_hash(spoiled)
    shutil.copytree(spoiled, root / digest.hex())  # filed under its own hash: only the code check stops it
    with pytest.raises(RemoteCodeRefused):
        Worker(spec_for(digest), 0)


@pytest.fixture(scope="module")
def federated(store):
    _, built = store
    workers = [Worker(spec_for(built.base_hash), i) for i in range(2)]
    base = workers[0].initial_model()
    wire = [w.train(base, 0) for w in workers]
    return workers, base, wire, workers[0].aggregate(base, wire)


def test_a_federated_lm_round_sends_adapters_and_agrees_on_bytes(federated):
    workers, base, wire, new = federated
    layout = workers[0].layout
    assert layout and all(name.split(".")[-2] in ("q_proj", "v_proj") for name in layout)
    assert sum(np.prod(s) for s in layout.values()) * 4 < sum(v.nbytes for v in base.values()) / 5
    assert model_hash(workers[1].aggregate(base, wire[::-1])) == model_hash(new)
    recipe = workers[0].recipe
    before, after = recipe.model_weights(base), recipe.model_weights(new)
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    assert changed and all(n.endswith(("q_proj.weight", "v_proj.weight")) for n in changed)
    assert set(new) == set(before) | set(layout)  # the residual weights and the carried adapter
    votes = workers[0].score(base, [*wire, b"garbage"], [bytes(20), bytes([1]) * 20, bytes([2]) * 20], False, 0)
    assert votes[2] == -1
    before, after = workers[0].evaluate_test(base), workers[0].evaluate_test(new)
    assert after["loss"] < before["loss"], (before, after)  # bits per character on both domains' test text


def test_the_federated_model_exports_and_loads_with_transformers(federated, store, tmp_path):
    from transformers import AutoModelForCausalLM

    workers, _, _, new = federated
    _, built = store
    weights = workers[0].recipe.model_weights(new)  # the carried adapter folded in
    out = export_model_dir(built.path, weights, tmp_path / "export")
    loaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32)
    reference = workers[0].recipe.build_model(0)
    reference.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})
    ids = torch.tensor([[0, *workers[0].recipe.tokenizer.encode("Return the value")]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)
    text = greedy_text(loaded, workers[0].recipe.tokenizer, "Return the", 8)
    assert isinstance(text, str) and text


def test_the_vote_rejects_poisoned_adapters_and_a_proposer_trained_on_garbage_text(federated, store, tmp_path):
    workers, base, wire, _ = federated
    spec = workers[0].spec
    attacks = {
        spec_text: Worker(spec, 1, behaviour=parse_behaviour(spec_text)).train(base, 0)
        for spec_text in ("sign-flip:4", "noise", "garbage")
    }
    (tmp_path / "garbage.txt").write_text(garbage_text(seed=5, chars=6000))
    attacks["trained on garbage text"] = Worker(spec, 1, str(tmp_path / "garbage.txt")).train(base, 0)
    honest = decode_delta(wire[1]).tensors
    last = next(reversed(honest.values())).size  # the body's last tensor, in name order
    attacks["NaN"] = wire[1][: -4 * last] + b"\x00\x00\xc0\x7f" * last
    attacks["another rank"] = encode_delta({n: v[:2] if n.endswith("lora_A") else v[:, :2] for n, v in honest.items()})
    attacks["a whole-state delta"] = encode_delta({n: np.zeros_like(v) for n, v in base.items()})
    deltas = [wire[1], *attacks.values()]
    votes = workers[0].score(base, deltas, [bytes([i]) * 20 for i in range(len(deltas))], False, 0)
    assert votes == (1,) + (-1,) * len(attacks), dict(zip(["honest", *attacks], votes, strict=True))


def test_the_testnet_report_shows_bits_per_character_adapter_bytes_and_samples(federated, tmp_path):
    workers, base, wire, new = federated
    final = tmp_path / "final.safetensors"
    final.write_bytes(checkpoint_bytes(new))
    spec = workers[0].spec
    lm = lm_report(spec.config, spec.num_nodes, spec.seed, final, tmp_path / "report", rounds=1)
    assert set(lm["base"]["bpc_by_domain"]) == set(FAST["domains"])
    assert lm["final"]["bpc_pooled"] == pytest.approx(workers[0].evaluate_test(new)["loss"])  # the rounds' measure
    assert lm["base"]["bpc_pooled"] == pytest.approx(workers[0].evaluate_test(base)["loss"])
    assert lm["final"]["bpc_mean"] < lm["base"]["bpc_mean"]
    # local-only: each node alone for the task's one round, exactly the node's own round-0
    # update (a federation of one), measured on every domain
    lone = lm["local_only"]
    assert lone["nodes"] == 2 and set(lone["bpc_by_domain"]) == set(FAST["domains"])
    recipe = workers[0].recipe
    data = DataSpec(num_nodes=spec.num_nodes, seed=spec.seed)
    for d, domain in enumerate(FAST["domains"]):
        bpc = []
        for i, worker in enumerate(workers):
            model = recipe.build_model(0)
            load_model_state(model, recipe.model_weights(worker.aggregate(base, [wire[i]])))
            bpc.append(recipe.evaluate(model, recipe.domain_test(data, d))["loss"])
        assert lone["bpc_by_domain"][domain] == pytest.approx(sum(bpc) / 2)
    assert "| local-only |" in lm_markdown(lm)
    assert abs(lm["adapter_bytes"] - len(wire[0])) <= 8  # only the samples count's encoding differs
    assert all(isinstance(lm[k]["sample"], str) for k in ("base", "final"))
    check_base_dir(lm["exported_model_dir"])
    text = lm_markdown(lm)
    assert "| base |" in text and "| final |" in text and f"{lm['adapter_bytes']:,} bytes" in text
