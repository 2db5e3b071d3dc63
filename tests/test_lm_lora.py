"""LoRA adapters through the worker: the codec round trip, exact aggregation (and the naive
way's error), deterministic bytes, and malformed adapters voted -1."""

from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from peft import PeftModel
from peft.tuners import lora as peft_lora

from flockd.fl.aggregate import MAX_UPDATE_RATIO, aggregate
from flockd.fl.builtin import DigitsMLP
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import MAX_DELTA_VALUE, decode_delta, delta_hash, encode_delta
from flockd.fl.recipe import BadRecipeConfig, load_recipe
from flockd.fl.tensors import model_state, shapes
from flockd.lm.lora import (
    LoraConfig,
    LoraError,
    LoraRecipe,
    adapter_values,
    attached,
    expand,
    factor_mean,
    fresh_adapter,
    lora_keys,
    split_state,
)
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

pytestmark = pytest.mark.usefixtures("recipes_from_this_module")


class LoraDigits(LoraRecipe, DigitsMLP):
    """digits-mlp fine-tuned through rank-4 adapters on both of its linear layers."""

    name = "lora-digits"
    default_config: ClassVar[dict[str, Any]] = {
        **DigitsMLP.default_config, "epochs": 2, "lr": 0.05, **lora_keys(4, 8.0, ["0", "2"])
    }


CONFIG = LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
MODEL = {
    "layers.0.q_proj.weight": (16, 12),
    "layers.0.v_proj.weight": (6, 12),
    "layers.0.k_proj.weight": (6, 12),
    "layers.0.q_proj.bias": (16,),
}


def random_adapter(rng: np.random.Generator, shared_a: dict | None = None) -> dict[str, np.ndarray]:
    out = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in CONFIG.adapter_layout(MODEL).items()}
    return {**out, **(shared_a or {})}


def reference_update(adapter: dict[str, np.ndarray], layer: str) -> np.ndarray:
    a = adapter[layer + ".lora_A"].astype(np.float64)
    b = adapter[layer + ".lora_B"].astype(np.float64)
    return CONFIG.scale * (b @ a)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def test_adapter_layout_and_config_errors():
    layout = CONFIG.adapter_layout(MODEL)
    assert layout == {
        "layers.0.q_proj.lora_A": (8, 12), "layers.0.q_proj.lora_B": (16, 8),
        "layers.0.v_proj.lora_A": (8, 12), "layers.0.v_proj.lora_B": (6, 8),
    }
    with pytest.raises(LoraError):
        LoraConfig(rank=8, alpha=16.0, targets=("o_proj",)).adapter_layout(MODEL)
    for bad in ({"lora_rank": 0}, {"lora_alpha": -1.0}, {"lora_targets": "0"}, {"lora_targets": []}):
        with pytest.raises(BadRecipeConfig):
            load_recipe(f"{__name__}:LoraDigits", bad)
    fresh = fresh_adapter(CONFIG, MODEL, seed=3)
    assert all(not v.any() for n, v in fresh.items() if n.endswith("lora_B"))  # a fresh adapter changes nothing
    assert all(np.array_equal(fresh[n], v) for n, v in fresh_adapter(CONFIG, MODEL, seed=3).items())


def test_adapter_codec_round_trip():
    adapter = random_adapter(np.random.default_rng(0))
    wire = encode_delta(adapter, samples=5)
    decoded = decode_delta(wire, expected_shapes=CONFIG.adapter_layout(MODEL))
    assert all(np.array_equal(decoded.tensors[n], adapter[n]) for n in adapter)
    assert encode_delta(decoded.tensors, samples=5) == wire  # one adapter, one encoding


def test_expanded_fedavg_is_the_exact_mean_of_the_updates_and_factor_means_are_not():
    rng = np.random.default_rng(1)
    adapters = [random_adapter(rng) for _ in range(4)]
    exact = aggregate([decode_delta(encode_delta(expand(a, CONFIG.scale))) for a in adapters], "fedavg")
    naive = expand(factor_mean(adapters), CONFIG.scale)
    for layer in ("layers.0.q_proj", "layers.0.v_proj"):
        want = np.mean([reference_update(a, layer) for a in adapters], axis=0)
        assert relative_error(exact[layer + ".weight"], want) < 1e-6
        assert relative_error(naive[layer + ".weight"], want) > 0.5  # ~80% at 4 updates, r=8
    # With A shared (frozen, FFA-LoRA) the factor mean is exact too: the error is B x A's.
    shared = {n: v for n, v in random_adapter(rng).items() if n.endswith("lora_A")}
    same_a = [random_adapter(rng, shared) for _ in range(4)]
    naive_same_a = expand(factor_mean(same_a), CONFIG.scale)
    want = np.mean([reference_update(a, "layers.0.q_proj") for a in same_a], axis=0)
    assert relative_error(naive_same_a["layers.0.q_proj.weight"], want) < 1e-6


def test_attached_trains_only_the_adapter_on_peft_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    before = model_state(model)
    config = LoraConfig(rank=2, alpha=2.0, targets=("0", "2"))
    adapter = fresh_adapter(config, shapes(before), seed=1)
    x = torch.randn(5, 4)
    rng_before = torch.random.get_rng_state()
    with attached(model, config, adapter) as wrapped:
        assert torch.equal(torch.random.get_rng_state(), rng_before)  # peft drew nothing
        assert isinstance(wrapped, PeftModel) and isinstance(model[0], peft_lora.Linear)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {f"{i}.lora_{ab}.default.weight" for i in (0, 2) for ab in "AB"}
        assert all(np.array_equal(v, adapter[n]) for n, v in adapter_values(wrapped).items())
        assert torch.equal(model(x), torch.nn.Sequential(model[0].base_layer, model[1], model[2].base_layer)(x))  # B = 0
        model[2].lora_B["default"].weight.data.fill_(0.5)
        trained = adapter_values(wrapped)
        with torch.no_grad():
            changed = model(x)
    assert type(model[0]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear  # peft unloaded
    after = model_state(model)
    assert after.keys() == before.keys() and all(np.array_equal(after[n], before[n]) for n in before)
    assert all(p.requires_grad for p in model.parameters())
    assert set(trained) == set(adapter) and (trained["2.lora_B"] == 0.5).all()
    folded = {**before, **{n: before[n] + u for n, u in expand(trained, 1.0).items()}}
    model.load_state_dict({n: torch.from_numpy(v) for n, v in folded.items()})
    with torch.no_grad():
        torch.testing.assert_close(model(x), changed)  # the expanded update is what the adapter did


def test_an_adapter_for_a_layer_that_is_not_linear_is_refused():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    config = LoraConfig(rank=2, alpha=2.0, targets=("0", "1"))
    with pytest.raises(LoraError, match="not a linear layer"), attached(model, config, fresh_adapter(config, shapes(model_state(model)), seed=1)):
        pass
    assert type(model[1]) is torch.nn.Linear


@pytest.fixture(scope="module")
def workers() -> list[Worker]:
    spec = TaskSpec(f"{__name__}:LoraDigits", num_nodes=3, seed=4)
    return [Worker(spec, i) for i in range(3)]


@pytest.fixture(scope="module")
def round0(workers):
    base = workers[0].initial_model()
    return base, [w.train(base, 0) for w in workers]


def updates_from(state, wire) -> list[dict[str, np.ndarray]]:
    """Each proposer's change of the model: s·B_i·A_i less the carried s·B·A it started from."""
    carried = expand(split_state(state)[1], 2.0)
    return [
        {n: u.astype(np.float64) - carried[n].astype(np.float64) for n, u in expand(decode_delta(d).tensors, 2.0).items()}
        for d in wire
    ]


def test_workers_send_adapters_and_fold_their_exact_mean(workers, round0):
    base, wire = round0
    recipe = workers[0].recipe
    layout = workers[0].layout
    assert set(layout) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"}
    assert all(set(decode_delta(d, expected_shapes=layout).tensors) == set(layout) for d in wire)
    assert set(base) == {"0.weight", "0.bias", "2.weight", "2.bias", *layout}  # the state carries an adapter
    state = base
    for round_number in range(2):  # round 1 trains from round 0's carried adapter
        wire = wire if round_number == 0 else [w.train(state, 1) for w in workers]
        new = workers[1].aggregate(state, wire)
        before, after = recipe.model_weights(state), recipe.model_weights(new)
        for name in ("0.weight", "2.weight"):
            want = np.mean([u[name] for u in updates_from(state, wire)], axis=0)
            np.testing.assert_allclose(after[name] - before[name], want, atol=1e-6)
        for name in ("0.bias", "2.bias"):
            assert np.array_equal(after[name], before[name])
        # The carried adapter is the mean of the factors; the residual weights make up the rest.
        want_adapter = factor_mean([decode_delta(d).tensors for d in sorted(wire, key=delta_hash)])
        assert all(np.array_equal(new[n], v) for n, v in want_adapter.items())
        assert model_hash(workers[2].aggregate(state, wire[::-1])) == model_hash(new)
        # The federated model learned: better held-out accuracy than the one before.
        assert workers[0].evaluate_test(new)["accuracy"] > workers[0].evaluate_test(state)["accuracy"]
        state = new


def malformed(good: bytes, base) -> dict[str, bytes]:
    tensors = decode_delta(good).tensors
    rank8 = {n: np.zeros((8, v.shape[1]) if n.endswith("A") else (v.shape[0], 8), np.float32) for n, v in tensors.items()}
    # Every value within the codec's bound; their product far beyond the update norm bound.
    big = np.sqrt(MAX_UPDATE_RATIO * 10 * max(1.0, float(np.sqrt(sum(np.square(v).sum() for v in base.values())))))
    huge = {n: np.full(v.shape, min(big, MAX_DELTA_VALUE), np.float32) for n, v in tensors.items()}
    last = tensors["2.lora_B"].size  # the body's last tensor, in name order
    return {
        "another rank": encode_delta(rank8),
        "a whole-state delta": encode_delta({n: np.zeros_like(v) for n, v in base.items()}),
        "update beyond the norm bound": encode_delta(huge),
        "NaN": good[: -4 * last] + b"\x00\x00\xc0\x7f" * last,
        "bytes": np.random.default_rng(0).bytes(len(good)),
    }


def test_a_malformed_adapter_is_voted_minus_one(workers, round0):
    base, wire = round0
    bad = malformed(wire[0], base)
    votes = workers[1].score(base, [wire[0], *bad.values()], [bytes(20)] * (1 + len(bad)), False, 0)
    assert votes == (1,) + (-1,) * len(bad), dict(zip(["honest", *bad], votes, strict=True))
    assert workers[1].usable(base, list(bad.values())) == [None] * len(bad)
    # and the aggregate leaves them out
    assert model_hash(workers[1].aggregate(base, [wire[0], *bad.values()])) == model_hash(workers[1].aggregate(base, [wire[0]]))


@pytest.mark.parametrize("rule", ["median", "trimmed-mean:0.34"])
def test_robust_rules_judge_the_expanded_updates(workers, round0, rule):
    base, wire = round0
    judge = Worker(TaskSpec(f"{__name__}:LoraDigits", num_nodes=3, seed=4, rule=rule), 0)
    new = judge.aggregate(base, wire)
    before, after = judge.recipe.model_weights(base), judge.recipe.model_weights(new)
    for name in ("0.weight", "2.weight"):
        want = np.median([u[name] for u in updates_from(base, wire)], axis=0)  # 3 deltas: trimming 1 each side is the median
        np.testing.assert_allclose(after[name] - before[name], want, atol=1e-6)
