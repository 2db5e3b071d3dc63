"""A task started from a listed model, below the daemons: the spec's `start` (absent from
the hash while empty, so every existing task keeps its recipe hash), its checks, and the
initial model a runner and model_verify take: the start model from the store, checked
against its hash and the recipe's layout, or a clear refusal when it is not held."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from eth_utils import keccak

from flockd.fl.checkpoint import CheckpointError
from flockd.fl.recipe import canonical_json, load_recipe
from flockd.fl.tensors import model_state
from flockd.market.start import listing_started, started_spec
from flockd.store import Store, StoreError
from flockd.tasks.spec import SpecError, TaskSpec
from flockd.tasks.start import initial_state
from flockd.tasks.work import Worker

HASH = "0x" + "ab" * 32


def test_a_spec_without_start_hashes_as_before_start_existed() -> None:
    spec = TaskSpec("digits-mlp", num_nodes=2, seed=3)
    before = {k: v for k, v in asdict(spec).items() if k not in ("start", "competition", "root_rows")}
    assert spec.spec_hash == keccak(canonical_json(before)) and "start" not in spec.to_json()
    started = TaskSpec("digits-mlp", num_nodes=2, seed=3, start={"listing_id": 1, "task_id": 2, "model_hash": HASH})
    assert started.spec_hash != spec.spec_hash
    assert TaskSpec.from_json(started.to_json()) == started and started.to_json()["start"]["listing_id"] == 1


@pytest.mark.parametrize("start", [
    {"listing_id": 1},  # no model hash
    {"model_hash": "0x" + "AB" * 32},
    {"model_hash": HASH[:-2]},
    {"model_hash": HASH, "listing_id": True},
    {"model_hash": HASH, "nested": {"a": 1}},
    {"model_hash": HASH, **{f"k{i}": i for i in range(8)}},
    ["model_hash", HASH],
])
def test_a_malformed_start_is_refused(start) -> None:
    with pytest.raises(SpecError, match="start"):
        TaskSpec("digits-mlp", start=start)


def test_the_initial_model_is_the_held_start_model_checked(tmp_path) -> None:
    store = Store(tmp_path / "store")
    trained = model_state(load_recipe("digits-mlp").build_model(77))
    digest = store.put_model(trained)
    worker = Worker(TaskSpec("digits-mlp", start={"listing_id": 1, "model_hash": "0x" + digest.hex()}), 0)
    state = initial_state(worker, store, worker.spec.start)
    assert all((state[k] == trained[k]).all() for k in trained)
    plain = Worker(TaskSpec("digits-mlp"), 0)
    assert all((initial_state(plain, store, {})[k] == plain.initial_model()[k]).all() for k in trained)

    missing = Worker(TaskSpec("digits-mlp", start={"listing_id": 4, "model_hash": HASH}), 0)
    with pytest.raises(StoreError, match="market_fetch"):
        initial_state(missing, store, missing.spec.start)

    other = store.put_model(model_state(load_recipe("digits-mlp", {"hidden": 8}).build_model(0)))
    wrong_layout = Worker(TaskSpec("digits-mlp", start={"model_hash": "0x" + other.hex()}), 0)
    with pytest.raises(CheckpointError):
        initial_state(wrong_layout, store, wrong_layout.spec.start)


def test_the_new_task_takes_the_listing_recipe_and_names_the_listing() -> None:
    listed = TaskSpec("digits-mlp", config={"hidden": 8}, num_nodes=2, seed=1)
    record = {"listing_id": 3, "task_id": 5, "model_hash": HASH, "spec": listed.to_json()}
    spec = started_spec(record, "median", "dirichlet:0.5", 4, 9)
    assert (spec.recipe, spec.config, spec.rule, spec.partition, spec.num_nodes, spec.seed) == (
        "digits-mlp", {"hidden": 8}, "median", "dirichlet:0.5", 4, 9)
    assert spec.start == {"listing_id": 3, "task_id": 5, "model_hash": HASH} and listing_started(spec) == 3
    with pytest.raises(SpecError, match="does not start from a listed model"):
        listing_started(listed)


def test_a_task_starts_from_a_competition_or_a_listing_not_both() -> None:
    with pytest.raises(SpecError, match="not both"):
        TaskSpec("digits-mlp", competition=1, start={"listing_id": 1, "model_hash": HASH})
