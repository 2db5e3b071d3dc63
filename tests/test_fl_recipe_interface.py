"""The open recipe interface: recipes named module:attr, recipes choosing which parameters
travel, recipes without a bundled test split, and aggregation rules plugged in by name."""

from importlib.metadata import EntryPoint, EntryPoints

import numpy as np
import pytest

import flockd.fl.aggregate as aggregate_module
from flockd.fl.aggregate import BadRule, Rule, aggregate
from flockd.fl.builtin import DigitsMLP
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import DeltaShapeMismatch, decode_delta, encode_delta
from flockd.fl.data import DataSpec
from flockd.fl.recipe import RECIPE_MODULES_ENV, RecipeError, UnknownRecipe, load_recipe
from flockd.fl.tensors import Shapes, Tensors, subtract
from flockd.tasks.spec import SpecError, TaskSpec
from flockd.tasks.work import Worker

HEAD = ("2.bias", "2.weight")  # digits-mlp's output layer


@pytest.fixture(scope="module", autouse=True)
def allow_this_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RECIPE_MODULES_ENV, f"json,{__name__}")
        yield


class HeadOnly(DigitsMLP):
    """digits-mlp whose deltas carry only the output layer: the rest stays as built."""

    name = "head-only"

    def delta_layout(self, model_layout: Shapes) -> Shapes:
        return {name: model_layout[name] for name in HEAD}

    def local_update(self, model, base, data, *, seed):
        delta, stats = super().local_update(model, base, data, seed=seed)
        return {name: delta[name] for name in HEAD}, stats

    def expand_update(self, base: Tensors, delta: Tensors) -> Tensors:
        return {name: delta[name] for name in HEAD}


class NoTestSplit(DigitsMLP):
    name = "no-test-split"

    def load_test(self, spec: DataSpec) -> None:
        return None


def test_a_recipe_is_named_module_attr_without_packaging():
    assert type(load_recipe("flockd.fl.builtin:DigitsMLP")) is DigitsMLP
    assert type(load_recipe(f"{__name__}:HeadOnly", {"epochs": 1})) is HeadOnly
    spec = TaskSpec(f"{__name__}:HeadOnly", num_nodes=2)
    assert TaskSpec.from_json(spec.to_json()) == spec
    for bad in (
        "no_such_module_here:X", "flockd.fl.builtin:Nope", "json:dumps", "flockd.fl.builtin:TorchClassifier",
        "antigravity:X", "os.path:join",  # packages not allowed: never imported
    ):
        with pytest.raises(RecipeError):
            load_recipe(bad)
        with pytest.raises(SpecError):
            TaskSpec(bad)
    for malformed in (":HeadOnly", "flockd.fl.builtin:", "flockd..fl:X", "flockd.fl.builtin:Digits MLP"):
        with pytest.raises(UnknownRecipe):
            load_recipe(malformed)


@pytest.fixture(scope="module")
def head_workers() -> list[Worker]:
    spec = TaskSpec(f"{__name__}:HeadOnly", config={"epochs": 1}, num_nodes=3, seed=5)
    return [Worker(spec, i) for i in range(3)]


def test_the_recipe_decides_which_parameters_travel(head_workers):
    first = head_workers[0]
    base = first.initial_model()
    assert set(first.layout) == set(HEAD) and set(first.model_layout) > set(HEAD)
    wire = [w.train(base, 0) for w in head_workers]
    assert set(decode_delta(wire[0]).tensors) == set(HEAD)
    whole = encode_delta(subtract(base, {k: v * 0 for k, v in base.items()}))
    with pytest.raises(DeltaShapeMismatch):
        first.decode(whole)
    assert first.usable(base, [whole]) == [None]  # a whole-state delta is refused
    new = first.aggregate(base, wire)
    for name in base:
        assert np.array_equal(new[name], base[name]) == (name not in HEAD)
    expected = np.mean([decode_delta(d).tensors["2.weight"].astype(np.float64) for d in wire], axis=0)
    np.testing.assert_allclose(new["2.weight"] - base["2.weight"], expected, atol=1e-6)
    # Every node gets the same bytes, whatever order the deltas came in.
    assert model_hash(head_workers[2].aggregate(base, wire[::-1])) == model_hash(new)
    votes = head_workers[1].score(base, [wire[0], b"junk", whole], [b"a" * 20] * 3, False, 0)
    assert votes[1:] == (-1, -1)


def test_a_recipe_without_a_test_split_is_measured_on_validation():
    worker = Worker(TaskSpec(f"{__name__}:NoTestSplit", num_nodes=2), 0)
    assert worker.test_split is None
    state = worker.initial_model()
    assert worker.evaluate_test(state) == worker.recipe.evaluate(worker.recipe.build_model(0), worker.val_split)


def coordinate_max(deltas, params):
    """A toy plug-in rule: per coordinate, the largest value times a factor."""
    factor = float(params[0])
    return {
        name: (np.max([d.tensors[name] for d in deltas], axis=0) * factor).astype(np.float32)
        for name in deltas[0].tensors
    }


@pytest.fixture
def plugged(monkeypatch):
    plugins = EntryPoints([
        EntryPoint("coordinate-max", f"{__name__}:coordinate_max", aggregate_module.RULE_ENTRY_POINT_GROUP),
        EntryPoint("broken", f"{__name__}:no_such_function", aggregate_module.RULE_ENTRY_POINT_GROUP),
    ])
    monkeypatch.setattr(aggregate_module, "entry_points", lambda group: plugins)


def test_aggregation_rules_plug_in_by_name(plugged):
    rule = Rule.parse("coordinate-max:0.5")
    assert str(rule) == "coordinate-max:0.5" and rule.params == ("0.5",)
    deltas = [
        decode_delta(encode_delta({"w": np.array([1.0, -2.0], np.float32)})),
        decode_delta(encode_delta({"w": np.array([3.0, -4.0], np.float32)})),
    ]
    assert aggregate(deltas, "coordinate-max:0.5")["w"].tolist() == [1.5, -1.0]
    assert TaskSpec("digits-mlp", rule="coordinate-max:2").rule == "coordinate-max:2"
    for bad in ("no-such-rule", "broken"):
        with pytest.raises(BadRule):
            Rule.parse(bad)
        with pytest.raises(SpecError):
            TaskSpec("digits-mlp", rule=bad)
    assert aggregate(deltas, "fedavg")["w"].tolist() == [2.0, -3.0]  # built-ins unchanged
