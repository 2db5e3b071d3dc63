"""The root-direction vote (issue 12): every honest voter judges a proposal against the same
update, trained on the task's public root set, so the honest stake votes as one."""

import numpy as np
import pytest
from test_fl_worker import SPEC, A, B, C, a_digits_round, attack_delta, garbage, hostile, only

from flockd.fl.attacks import parse_behaviour
from flockd.fl.codec import Delta, decode_delta, encode_delta
from flockd.fl.data import DataError, DataSpec, Split, root_sample, split_held_out
from flockd.fl.recipe import load_recipe
from flockd.fl.root_vote import MAX_NORM_RATIO, direction_votes
from flockd.fl.score import Scorer, vote_on_proposals
from flockd.fl.tensors import model_state
from flockd.fl.vote_scoring import (
    DEFAULT_ROOT_ROWS,
    DEFAULT_VOTE_SCORING,
    ROOT_SCORINGS,
    root_rows_for,
)
from flockd.tasks.spec import SpecError, TaskSpec, default_root_rows
from flockd.tasks.work import Worker

ROOT = "root-direction"


def data(n: int = 1000, classes: int = 10) -> Split:
    y = np.arange(n) % classes
    return Split(np.arange(n, dtype=np.float32).reshape(-1, 1), y.astype(np.int64))


# --- the root set ----------------------------------------------------------------------


def test_the_root_set_is_a_stratified_sample_of_the_pool_never_of_the_test_split():
    d, spec = data(), DataSpec(num_nodes=4, seed=7)
    root = root_sample(d, spec, 100)
    test, _ = split_held_out(d.y, spec.test_fraction, spec.seed)
    assert len(root) == 100
    assert np.bincount(root.y).tolist() == [10] * 10
    assert not set(root.x[:, 0].astype(int)) & set(test.tolist())
    again = root_sample(d, spec, 100)
    assert np.array_equal(again.x, root.x)  # every node derives the same rows
    other = root_sample(d, DataSpec(num_nodes=4, seed=8), 100)
    assert not np.array_equal(other.x, root.x)


def test_every_class_of_the_pool_is_in_the_root_set_however_small():
    y = np.array([0] * 990 + [1] * 10)
    d = Split(np.zeros((1000, 1), np.float32), y)
    assert set(root_sample(d, DataSpec(), 10).y.tolist()) == {0, 1}


@pytest.mark.parametrize("rows", [0, -1, 10_001, 801])
def test_a_root_set_out_of_bounds_is_refused(rows):
    with pytest.raises(DataError):
        root_sample(data(), DataSpec(), rows)  # 801: more than the pool of 800


def test_a_spec_without_a_root_set_hashes_as_before():
    plain, rooted = TaskSpec("digits-mlp", num_nodes=4), TaskSpec("digits-mlp", num_nodes=4, root_rows=100)
    assert b"root_rows" not in plain.canonical()
    assert plain.spec_hash == TaskSpec.from_json(plain.to_json()).spec_hash
    assert rooted.spec_hash != plain.spec_hash
    assert TaskSpec.from_json(rooted.to_json()) == rooted
    for bad in (-1, 10_001, 1.5, True):
        with pytest.raises(SpecError):
            TaskSpec("digits-mlp", root_rows=bad)


# --- direction_votes -------------------------------------------------------------------


def delta(**tensors) -> Delta:
    return Delta({k: np.asarray(v, np.float32) for k, v in tensors.items()}, 1, "test", bytes(32))


def test_a_delta_is_accepted_when_it_points_the_way_of_the_reference_and_is_not_far_larger():
    ref = {"w": np.array([1.0, 1.0]), "b": np.array([0.0])}
    votes = direction_votes(ref, [
        delta(w=[1, 0.5], b=[0]),  # same way
        delta(w=[-1, -1], b=[0]),  # flipped
        delta(w=[1, -1], b=[0]),  # orthogonal: no sign of learning the task
        delta(w=[1.5, 1.5], b=[0]),  # larger, within the bound
        delta(w=[MAX_NORM_RATIO + 1, MAX_NORM_RATIO + 1], b=[0]),  # boosted
        delta(w=[0, 0], b=[0]),  # does nothing
        delta(w=[1, 1]),  # another layout
        None,  # missing or unusable
    ])
    assert votes == (1, -1, -1, 1, -1, -1, -1, -1)


def test_a_late_label_flip_near_orthogonal_but_large_is_refused():
    """Late in a task converged honest work and a label flip both point almost nowhere
    (cosine near 0); the flip is the one 2 to 9 times the reference's norm, honest work
    about 1 (flockd/fl/root_vote.py)."""
    ref = {"w": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0])}
    converged = delta(w=[0.1, 0.9, 0.4], b=[0])  # cosine 0.1, 0.99 times the norm
    flipped = delta(w=[0.25, 2.2, 1.0], b=[0])  # cosine 0.1, 2.4 times the norm
    assert direction_votes(ref, [converged, flipped]) == (1, -1)


def test_a_reference_that_cannot_judge_says_so():
    assert direction_votes({"w": np.zeros(3)}, [delta(w=[1, 1, 1])]) is None
    assert direction_votes({"w": np.array([np.nan, 1, 1])}, [delta(w=[1, 1, 1])]) is None


# --- the vote in a Worker --------------------------------------------------------------
# A model after two IID rounds, three honest IID proposals, and one honest proposal
# trained on digits 5-9 only; the voter validates on digits 0-4 only.


@pytest.fixture(scope="module")
def rooted_round():
    return a_digits_round(TaskSpec("digits-mlp", num_nodes=4, seed=0, root_rows=100))


def narrow_voter(spec: TaskSpec, scoring: str) -> Worker:
    voter = Worker(spec, 0, scoring=scoring)
    voter.val_split = only(voter.val_split, lambda y: y < 5)
    return voter


def test_honest_work_on_labels_the_voter_never_sees_is_accepted(rooted_round):
    """Under the old default (local-model) it was rejected; under the root votes, the
    default among them, it is accepted."""
    spec, base, honest, skewed = rooted_round
    deltas, proposers = [skewed, *honest], [A, B, C, A]
    assert narrow_voter(spec, "local-model").score(base, deltas, proposers, False, 5) == (-1, 1, 1, 1)
    assert narrow_voter(spec, ROOT).score(base, deltas, proposers, False, 5) == (1, 1, 1, 1)
    assert narrow_voter(spec, DEFAULT_VOTE_SCORING).score(base, deltas, proposers, False, 5) == (1, 1, 1, 1)


@pytest.mark.parametrize("attack", ["label-flip", "noise:1", "noise:0.2", "sign-flip:4", "scaled:4"])
def test_an_attack_beside_foreign_honest_work_is_rejected(rooted_round, attack):
    spec, base, honest, skewed = rooted_round
    bad = attack_delta(spec, base, attack)
    votes = narrow_voter(spec, ROOT).score(base, [bad, skewed, *honest], [A] * 5, False, 5)
    assert votes == (-1, 1, 1, 1, 1)


def test_every_honest_voter_casts_the_same_votes_whatever_its_own_data(rooted_round):
    spec, base, honest, skewed = rooted_round
    flipper = Worker(spec, 2, behaviour=parse_behaviour("label-flip")).train(base, 5)
    deltas = [flipper, skewed, *honest]
    ballots = {Worker(spec, i, scoring=ROOT).score(base, deltas, [A] * 5, False, 5) for i in range(4)}
    assert ballots == {(-1, 1, 1, 1, 1)}


def test_hostile_deltas_get_minus_one(rooted_round):
    spec, base, honest, _ = rooted_round
    voter = Worker(spec, 0, scoring=ROOT)
    for what, bad in hostile(honest[0], base).items():
        votes = voter.score(base, [honest[0], bad, honest[1], None], [A, B, C, A], False, 5)
        assert votes == (1, -1, 1, -1), what


def test_a_task_without_a_root_set_is_voted_on_as_local_model():
    by_root, by_local = Worker(SPEC, 1, scoring=ROOT), Worker(SPEC, 1, scoring="local-model")
    base = by_local.initial_model()
    good = Worker(SPEC, 2).train(base, 1)
    deltas = [good, garbage(good), good]
    assert by_root.score(base, deltas, [A, B, C], False, 1) == by_local.score(base, deltas, [A, B, C], False, 1)


def test_a_tiny_copy_of_the_reference_direction_passes_but_moves_little(rooted_round):
    """Direction is all the vote asks of a small delta; what it can move is bounded by its
    own size, so near-zero deltas pass without steering the model."""
    spec, base, honest, _ = rooted_round
    tensors = decode_delta(honest[0]).tensors
    tiny = encode_delta({k: v * 1e-3 for k, v in tensors.items()}, samples=1)
    assert Worker(spec, 0, scoring=ROOT).score(base, [tiny, *honest], [A] * 4, False, 5) == (1, 1, 1, 1)


def test_a_root_set_larger_than_the_pool_leaves_the_node_voting_as_local_model():
    spec = TaskSpec("cancer-logreg", num_nodes=4, seed=3, root_rows=10_000)  # the pool holds ~455
    by_root, by_local = Worker(spec, 1, scoring=ROOT), Worker(spec, 1, scoring="local-model")
    assert by_root.counters.snapshot()["root_set_unusable"] == 1
    base = by_local.initial_model()
    good = Worker(spec, 2).train(base, 1)
    assert by_root.score(base, [good, None], [A, B], False, 1) == by_local.score(base, [good, None], [A, B], False, 1)


def test_a_node_on_its_own_data_has_no_root_set_from_the_bundled_pool():
    """The bundled pool says nothing about a task learnt from the nodes' own files, so a
    node given a data path votes as local-model whatever the spec's root_rows."""
    recipe = load_recipe("digits-mlp")
    assert recipe.load_root(DataSpec(0, 4, "iid", 0, path="own.csv"), 100) is None
    assert len(recipe.load_root(DataSpec(0, 4, "iid", 0), 100)) == 100


def test_the_default_vote_is_a_root_vote_and_tasks_carry_a_root_set_by_default():
    assert DEFAULT_VOTE_SCORING == "root-or-local-model" and DEFAULT_VOTE_SCORING in ROOT_SCORINGS
    assert root_rows_for(DEFAULT_VOTE_SCORING, None) == DEFAULT_ROOT_ROWS > 0
    assert root_rows_for("local-model", None) == 0 and root_rows_for(DEFAULT_VOTE_SCORING, 0) == 0
    assert root_rows_for("local-model", None, default_root_rows("lm-lora")) == 0
    assert default_root_rows("digits-mlp") == default_root_rows("lm-lora") == DEFAULT_ROOT_ROWS
    assert default_root_rows("no-such-recipe") == 0


def test_root_or_local_model_accepts_what_either_vote_accepts(rooted_round):
    """A sign-flipped honest delta scaled to almost nothing points away from the root
    update (root-direction: -1) and changes nothing on the voter's split (local-model:
    +1); the label flip is rejected by both."""
    spec, base, honest, _ = rooted_round
    tensors = decode_delta(honest[0]).tensors
    backwards = encode_delta({k: -1e-3 * v for k, v in tensors.items()}, samples=1)
    flipper = attack_delta(spec, base, "label-flip")
    deltas = [backwards, flipper, *honest]
    assert Worker(spec, 0, scoring=ROOT).score(base, deltas, [A] * 5, False, 5) == (-1, -1, 1, 1, 1)
    either = Worker(spec, 0, scoring="root-or-local-model")
    assert either.score(base, deltas, [A] * 5, False, 5) == (1, -1, 1, 1, 1)


@pytest.mark.parametrize("scoring", ["root-or-local-model", None])  # None: the Worker's default
def test_the_or_is_of_the_root_vote_and_the_own_model_vote_nothing_else(rooted_round, scoring):
    """Each proposal's verdict is the larger of root-direction's and local-model's, so a
    delta both reject is rejected: `sign-flip:4` and `noise:0.2`, which a leave-one-out
    contribution would have let in (docs/learning.md, "Voting on a proposal's
    contribution"); the default vote is this OR."""
    spec, base, honest, skewed = rooted_round
    deltas = [attack_delta(spec, base, "sign-flip:4"), attack_delta(spec, base, "noise:0.2"), skewed, *honest]
    proposers = [A] * len(deltas)
    root = Worker(spec, 0, scoring=ROOT).score(base, deltas, proposers, False, 5)
    own = Worker(spec, 0, scoring="local-model").score(base, deltas, proposers, False, 5)
    either = Worker(spec, 0) if scoring is None else Worker(spec, 0, scoring=scoring)
    assert either.score(base, deltas, proposers, False, 5) == tuple(map(max, root, own))
    assert root[:2] == own[:2] == (-1, -1)


def test_the_own_split_scorer_refuses_the_root_votes():
    recipe = load_recipe("digits-mlp")
    scorer = Scorer(recipe, model_state(recipe.build_model(0)), Split(np.zeros((1, 64), np.float32), np.zeros(1, np.int64)))
    for scoring in ROOT_SCORINGS:
        with pytest.raises(ValueError, match="root set"):
            vote_on_proposals(scorer, [], scoring=scoring)
