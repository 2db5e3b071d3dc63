"""What a listing and a peer hand a fetching node, checked before anything keeps or serves
it: names and bounds, the listed spec against its recipe hash, and model bytes (size
before parsing, safetensors only, layout, float32, finite, the listed hash)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from flockd.chain.client.market import MAX_DESCRIPTION_LEN, MAX_NAME_LEN, Listing
from flockd.fl.checkpoint import (
    CheckpointHashMismatch,
    CheckpointMismatch,
    CheckpointTooLarge,
    MalformedCheckpoint,
    checkpoint_bytes,
    model_hash,
)
from flockd.fl.errors import FLError
from flockd.market import checks
from flockd.market.checks import ListingError, check_model_bytes
from flockd.tasks.spec import TaskSpec

LAYOUT = {"w": (4, 3), "b": (3,)}
STATE = {"w": np.arange(12, dtype=np.float32).reshape(4, 3), "b": np.ones(3, dtype=np.float32)}
SPEC = TaskSpec(recipe="digits-mlp", num_nodes=2)


def listing(**over) -> Listing:
    fields = dict(listing_id=1, lister=b"\x01" * 20, kind="task", task_id=1, competition_id=0,
                  model_hash=model_hash(STATE), lineage_root=bytes(32),
                  recipe_hash=SPEC.spec_hash, listed_block=5, active=True, name="digits", description="",
                  licence="MIT", spec=checks.spec_text(SPEC))
    fields.update(over)
    return Listing(**fields)


@pytest.mark.parametrize("name", ["", "a b", "<script>", "-lead", ".hidden", "x" * (MAX_NAME_LEN + 1), "ünï", "a/b"])
def test_names_that_are_no_safe_model_id_are_refused(name: str) -> None:
    with pytest.raises(ListingError, match="name"):
        checks.check_listing_fields(name, "", "")
    with pytest.raises(ListingError, match="name"):
        checks.check_listed_name(listing(name=name))


def test_fields_over_the_contracts_bounds_are_refused_before_any_gas() -> None:
    checks.check_listing_fields("digits-mlp_v1.0", "d" * MAX_DESCRIPTION_LEN, "Apache-2.0")
    with pytest.raises(ListingError, match="description"):
        checks.check_listing_fields("ok", "é" * (MAX_DESCRIPTION_LEN // 2 + 1), "")  # bytes, not characters
    with pytest.raises(ListingError, match="licence"):
        checks.check_listing_fields("ok", "", "l" * 65)


def test_the_listed_spec_is_the_one_that_hashes_to_the_recipe_hash() -> None:
    assert checks.listed_spec(listing()) == SPEC
    with pytest.raises(ListingError, match="does not hash"):
        checks.listed_spec(listing(recipe_hash=TaskSpec(recipe="digits-mlp").spec_hash))
    for bad in ("{", "[]", '{"recipe": "no-such-recipe"}', '{"recipe": "digits-mlp", "evil": 1}', '"x"'):
        with pytest.raises(ListingError, match="unusable spec"):
            checks.listed_spec(listing(spec=bad))


def test_the_listed_model_passes() -> None:
    data = checkpoint_bytes(STATE)
    state = check_model_bytes(data, LAYOUT, model_hash(STATE))
    assert model_hash(state) == model_hash(STATE)


def test_other_bytes_are_refused_each_for_its_reason() -> None:
    digest = model_hash(STATE)
    other = {"w": STATE["w"] + 1, "b": STATE["b"]}
    with pytest.raises(CheckpointHashMismatch):
        check_model_bytes(checkpoint_bytes(other), LAYOUT, digest)
    with pytest.raises(CheckpointMismatch):
        check_model_bytes(checkpoint_bytes({"w": np.zeros((3, 4), np.float32), "b": STATE["b"]}), LAYOUT, digest)
    with pytest.raises(CheckpointMismatch):
        check_model_bytes(checkpoint_bytes({**STATE, "extra": np.zeros(1, np.float32)}), LAYOUT, digest)
    with pytest.raises(MalformedCheckpoint):
        check_model_bytes(st_save({"w": STATE["w"] * np.nan, "b": STATE["b"]}), LAYOUT, digest)
    with pytest.raises(MalformedCheckpoint):  # a pickle is never unpickled
        check_model_bytes(pickle.dumps(STATE), LAYOUT, digest)
    with pytest.raises(CheckpointTooLarge):  # refused on its length, before parsing
        check_model_bytes(b"\0" * (checks.max_model_bytes(LAYOUT) + 1), LAYOUT, digest)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_with_a_checkpoint_error(data: bytes) -> None:
    with pytest.raises(FLError):
        check_model_bytes(data, LAYOUT, model_hash(STATE))


def test_a_spec_asking_for_a_model_no_checkpoint_carries_is_refused_before_it_is_built() -> None:
    assert checks.check_model_size(SPEC) == 64 * 128 + 128 + 128 * 10 + 10
    huge = TaskSpec(recipe="digits-mlp", config={"hidden": 10**9})  # 75e9 parameters: 300 GB if built
    with pytest.raises(ListingError, match="more than a checkpoint may carry"):
        checks.check_model_size(huge)
