"""The root-direction vote on lm-lora: the demo corpus's root set (deterministic, an equal
share of every domain, never test text, bounded) and the vote on adapters, on the tiny
Llama the other LM tests build: in round 0 an honest adapter from a domain the voter does
not hold passes, noise, a boosted sign flip and an adapter trained on garbage text do not,
and a node with its own text votes as local-model. (In later rounds a garbage-text
adapter can point along the root update: docs/lm.md, "The root set and the root votes".)"""

import numpy as np
import pytest
import test_lm_hf
from test_lm_hf import FAST

from flockd.fl.attacks import parse_behaviour
from flockd.fl.codec import Delta, decode_delta
from flockd.fl.data import MAX_ROOT_ROWS, DataError, DataSpec
from flockd.fl.recipe import load_recipe, training_seed
from flockd.fl.root_vote import direction_votes
from flockd.fl.score import Scorer, vote_on_proposals
from flockd.lm.corpus import garbage_text
from flockd.lm.recipe import CausalLoraRecipe
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import ROOT_TRAINER, Worker

ROWS = 12
THREE = ["json", "textwrap", "csv"]  # 73, 25 and 24 paragraphs
store = test_lm_hf.store  # the tiny base, built for this module


def recipe_for(built, **config) -> CausalLoraRecipe:
    recipe = load_recipe("lm-lora", {"base_hash": "0x" + built.base_hash.hex(), **FAST, **config})
    assert isinstance(recipe, CausalLoraRecipe)
    return recipe


def test_the_root_set_is_an_equal_share_of_every_domains_train_and_validation_text(store):
    _, built = store
    recipe = recipe_for(built, domains=THREE)
    data = DataSpec(node_index=0, num_nodes=3, seed=1)
    root = recipe.root_examples(data, ROWS)
    assert len(root) == ROWS
    for index in range(3):  # every node derives the same
        again = DataSpec(node_index=index, num_nodes=3, seed=1)
        assert recipe.root_examples(again, ROWS) == root
        assert recipe.load_root(again, ROWS) == recipe.load_root(data, ROWS)
    assert recipe.root_examples(DataSpec(num_nodes=3, seed=2), ROWS) != root  # the task's seed draws it
    for index in range(3):
        domain = recipe._domain(index)
        test = set(recipe._domain_test_examples(data, index))
        drawn = [e for e in root if e in set(domain)]
        assert len(drawn) == ROWS // 3, THREE[index]
        assert not test & set(drawn)
    assert len(recipe.load_root(data, ROWS)) >= ROWS  # tokenized like the training text: a window or more each


def test_a_root_set_larger_than_a_domain_can_give_is_refused(store):
    _, built = store
    recipe = recipe_for(built, domains=THREE)
    data = DataSpec(num_nodes=3, seed=1)
    pools = {d: len(recipe._domain(i)) - len(recipe._domain_test_examples(data, i)) for i, d in enumerate(THREE)}
    smallest = min(pools, key=pools.__getitem__)  # csv: 19 of train and validation
    assert len(recipe.root_examples(data, 3 * pools[smallest])) == 3 * pools[smallest]
    with pytest.raises(DataError, match=repr(smallest)):
        recipe.load_root(data, 3 * pools[smallest] + 3)
    for rows in (0, MAX_ROOT_ROWS + 1):
        with pytest.raises(DataError, match="1 to"):
            recipe.load_root(data, rows)


@pytest.fixture(scope="module")
def voting(store, tmp_path_factory):
    """Node 0 (json) votes by root-direction; node 1 (textwrap) proposes; and the attacks."""
    _, built = store
    spec = TaskSpec("lm-lora", config={"base_hash": "0x" + built.base_hash.hex(), **FAST}, num_nodes=2, seed=1, root_rows=ROWS)
    voter = Worker(spec, 0, scoring="root-direction")
    base = voter.initial_model()
    garbage = tmp_path_factory.mktemp("garbage") / "garbage.txt"
    garbage.write_text(garbage_text(seed=5, chars=6000))
    proposals = {
        "honest, another domain": Worker(spec, 1).train(base, 0),
        **{text: Worker(spec, 1, behaviour=parse_behaviour(text)).train(base, 0) for text in ("noise", "sign-flip:4", "sign-flip")},
        "trained on garbage text": Worker(spec, 1, str(garbage)).train(base, 0),
    }
    return spec, voter, base, proposals


def test_the_root_vote_passes_an_honest_adapter_from_another_domain_and_rejects_poisoned_ones(voting):
    spec, voter, base, proposals = voting
    recipe = voter.recipe
    # The reference: the root set trained on from the round's model as a proposer trains,
    # expanded to its update of the weights; each adapter judged by its expanded update.
    root = recipe.load_root(DataSpec(num_nodes=2, seed=spec.seed), ROWS)
    assert root is not None
    update, _ = recipe.local_update(recipe.build_model(0), base, root, seed=training_seed(spec.seed, 0, ROOT_TRAINER))
    reference = recipe.expand_update(base, update)
    expanded = {name: recipe.expand_update(base, decode_delta(wire).tensors) for name, wire in proposals.items()}
    want = direction_votes(reference, [Delta(t, 0, name, b"") for name, t in expanded.items()])
    got = voter.score(base, list(proposals.values()), [bytes([i]) * 20 for i in range(len(proposals))], False, 0)
    assert got == want  # the root vote, not local-model's fallback
    verdict = dict(zip(proposals, got, strict=True))
    assert verdict == {
        "honest, another domain": 1,
        "noise": -1,
        "sign-flip:4": -1,
        # Negating both factors leaves B·A as it was: a sign flip of an adapter is the honest update.
        "sign-flip": 1,
        "trained on garbage text": -1,
    }
    honest = expanded["honest, another domain"]
    assert all(np.array_equal(honest[n], v) for n, v in expanded["sign-flip"].items())


def test_a_node_with_its_own_text_has_no_root_set_and_votes_as_local_model(voting, tmp_path):
    spec, _, base, proposals = voting
    own = tmp_path / "own.txt"
    own.write_text("\n\n".join(f"Paragraph {i} of a node's own notes about parsing JSON documents." for i in range(40)))
    assert voting[1].recipe.load_root(DataSpec(num_nodes=2, seed=spec.seed, path=str(own)), ROWS) is None
    by_root = Worker(spec, 0, str(own), scoring="root-direction")
    by_own = Worker(spec, 0, str(own), scoring="local-model")
    wires = list(proposals.values())
    proposers = [bytes([i]) * 20 for i in range(len(wires))]
    assert by_root.score(base, wires, proposers, False, 0) == by_own.score(base, wires, proposers, False, 0)
    assert "root_set_unusable" not in by_root.counters.snapshot()  # no root set is not an error


def test_the_default_vote_judges_an_adapter_by_the_proposers_model_on_the_root_set(voting):
    """lm-lora's root test is the proposer's model on the root set (every domain's text),
    which every honest voter computes alike: the default vote is that or the voter's own
    text, so an adapter both reject is out. On the voter's own text alone an honest
    adapter from another domain may look worse than the bound; on the root set, not."""
    spec, _, base, proposals = voting
    assert CausalLoraRecipe.root_test == "model" and CausalLoraRecipe.root_rows_default > 0
    wires = list(proposals.values())
    proposers = [bytes([i]) * 20 for i in range(len(wires))]
    default = Worker(spec, 0)  # root-or-local-model
    recipe = default.recipe
    root = recipe.load_root(DataSpec(num_nodes=2, seed=spec.seed), ROWS)
    assert root is not None
    on_root = vote_on_proposals(Scorer(recipe, recipe.model_weights(base), root), default.usable(base, wires))
    own = Worker(spec, 0, scoring="local-model").score(base, wires, proposers, False, 0)
    got = default.score(base, wires, proposers, False, 0)
    assert got == tuple(map(max, on_root, own))
    verdict = dict(zip(proposals, got, strict=True))
    assert verdict["honest, another domain"] == 1
    assert verdict["noise"] == verdict["sign-flip:4"] == -1
    assert verdict["trained on garbage text"] == on_root[-1] == -1
