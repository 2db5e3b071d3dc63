"""The CPU side of a node's part in a task: train, score, aggregate, evaluate.

Synchronous and deterministic; the runner calls every method through trio.to_thread so
the event loop keeps serving the network while torch works.

A Worker given a malicious ``behaviour`` (flockd.fl.attacks, a research tool) trains on
flipped labels, poisons the delta it sends and replaces its honest votes; its random
draws come from the task seed, round and node index, so a replay repeats them.

What travels is the recipe's choice (``Recipe.delta_layout``, ``local_update``): the
whole state's difference for the built-ins, an adapter for a LoRA recipe. A usable delta
is expanded (``Recipe.expand_update``) into a change of the model's own tensors before it
is scored or aggregated, so every rule combines updates, never their factors.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from flockd.fl.aggregate import aggregate, usable_deltas
from flockd.fl.attacks import (
    HONEST,
    Behaviour,
    attack_rng,
    cast_votes,
    poison_delta,
    poison_wire,
    training_split,
)
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import Delta, decode_delta, delta_hash, encode_delta
from flockd.fl.data import DataError, DataSpec
from flockd.fl.recipe import (
    LocalData,
    Metrics,
    RootTest,
    limit_torch_threads,
    load_recipe,
    training_seed,
)
from flockd.fl.root_vote import direction_votes
from flockd.fl.score import Scorer, vote_on_proposals
from flockd.fl.tensors import Tensors, load_model_state, model_state, require_same_layout, shapes
from flockd.fl.vote_scoring import (
    DEFAULT_VOTE_SCORING,
    ROOT_SCORINGS,
    VoteScoring,
    parse_vote_scoring,
)
from flockd.logs import get_logger
from flockd.stats import Counters
from flockd.tasks.spec import TaskSpec

log = get_logger("flockd.tasks")

# The training seed of the root set's update: node index -1, which no node has.
ROOT_TRAINER = -1


class Worker:
    def __init__(
        self,
        spec: TaskSpec,
        node_index: int,
        data_path: str | None = None,
        *,
        behaviour: Behaviour = HONEST,
        colluders: frozenset[bytes] = frozenset(),
        scoring: VoteScoring = DEFAULT_VOTE_SCORING,
    ) -> None:
        parse_vote_scoring(scoring)  # a ValueError before any data is loaded
        limit_torch_threads(1)  # several daemons share a few cores
        self.spec = spec
        self.recipe = load_recipe(spec.recipe, spec.config)
        self.node_index = node_index
        self.data_path = data_path
        self.behaviour = behaviour
        self.colluders = colluders
        self.scoring = scoring  # how this node judges proposals (flockd.fl.score.VoteScoring)
        data = DataSpec(
            node_index=node_index % spec.num_nodes,
            num_nodes=spec.num_nodes,
            partition=spec.partition,
            seed=spec.seed,
            path=data_path,
        )
        train_split, self.val_split = self.recipe.load_data(data)
        self.train_split = training_split(behaviour, train_split, self.recipe)
        # A recipe with no bundled test split is measured on this node's validation split.
        self.test_split = self.recipe.load_test(data)
        self._model = self.recipe.build_model(spec.seed)
        self.model_layout = shapes(model_state(self._model))
        self.layout = self.recipe.delta_layout(self.model_layout)  # what a delta holds
        self._lock = threading.Lock()  # one torch model, one user at a time
        self.counters = Counters()
        # The task's root set (drawn from the recipe's bundled data) and the round's update
        # on it, for the root votes. Shared by the simulation's shallow copies of one
        # Worker: the same for every voter, so trained once a round.
        self._root = self._load_root(data) if scoring in ROOT_SCORINGS and spec.root_rows > 0 else None
        self._root_updates: dict[tuple[int, bytes], Tensors] = {}

    def initial_model(self) -> Tensors:
        return self.recipe.initial_state(model_state(self.recipe.build_model(self.spec.seed)), self.spec.seed)

    def decode(self, data: bytes, expected_hash: bytes | None = None) -> Delta:
        return decode_delta(data, expected_shapes=self.layout, expected_hash=expected_hash)

    def train(self, base: Tensors, round_number: int) -> bytes:
        with self._lock:
            seed = training_seed(self.spec.seed, round_number, self.node_index)
            delta, stats = self.recipe.local_update(self._model, base, self.train_split, seed=seed)
            rng = attack_rng(self.spec.seed, round_number, self.node_index, "delta")
            wire = encode_delta(poison_delta(self.behaviour, delta, rng), samples=stats["samples"])
            return poison_wire(self.behaviour, wire, rng)

    def score(
        self,
        base: Tensors,
        deltas: Sequence[bytes | None],
        proposers: Sequence[bytes],
        whole_round: bool,
        round_number: int,
    ) -> tuple[int, ...]:
        """Per-proposal: +1 / -1 for each delta (a missing or unusable one is -1).
        Whole-round: one vote, +1 when the aggregate of the usable deltas does not lower
        the voter's validation accuracy, else -1. ``proposers`` (in the deltas' order)
        matter only to a colluding voter. Never raises on a peer's bytes."""
        honest = self.honest_score(base, deltas, whole_round, round_number)
        rng = attack_rng(self.spec.seed, round_number, self.node_index, "vote")
        return cast_votes(self.behaviour, honest, proposers, self.colluders, rng, whole_round)

    def honest_score(
        self, base: Tensors, deltas: Sequence[bytes | None], whole_round: bool, round_number: int = 0
    ) -> tuple[int, ...]:
        with self._lock:
            weights = self.recipe.model_weights(base)  # once: both the checks and the scorer need it
            usable = self._usable(base, weights, deltas)  # cheap checks before any evaluation
            if self.scoring in ROOT_SCORINGS and not whole_round:
                test = "direction" if self.scoring == "root-direction" else self.recipe.root_test
                votes = self._root_votes(base, weights, usable, round_number, test)
                if votes is not None and self.scoring == "root-or-local-model":
                    # The voter's own split accepts converged honest work whose direction
                    # is noise, and lets almost no label flip in on its own.
                    local = self._own_split_votes(weights, usable, self.val_split)
                    votes = tuple(max(by_root, by_own) for by_root, by_own in zip(votes, local, strict=True))
                if votes is not None:
                    return votes
            if whole_round:
                kept = [d for d in usable if d is not None]
                if not kept:
                    return (-1,)
                scorer = Scorer(self.recipe, weights, self.val_split)
                gain = scorer.score(aggregate(kept, self.spec.rule)).accuracy_gain
                return (1 if gain >= 0 else -1,)
            scoring = "local-model" if self.scoring in ROOT_SCORINGS else self.scoring
            return self._own_split_votes(weights, usable, self.val_split, scoring)

    def _own_split_votes(
        self, weights: Tensors, usable: Sequence[Delta | None], split: LocalData, scoring: VoteScoring = "local-model"
    ) -> tuple[int, ...]:
        """``vote_on_proposals`` on ``split`` (the voter's validation split, or the root set
        for a recipe whose root test is the proposer's model there), under the task's bounds."""
        return vote_on_proposals(
            Scorer(self.recipe, weights, split), usable, scoring=scoring,
            rule=self.spec.rule, max_accuracy_drop=self.spec.max_accuracy_drop,
        )

    def _load_root(self, data: DataSpec) -> LocalData | None:
        """The task's root set, or None (then this node votes as local-model) when the task
        asks for more rows than the recipe's pool holds: the creator's mistake must not stop
        this node voting."""
        try:
            return self.recipe.load_root(data, self.spec.root_rows)
        except DataError as exc:
            self.counters.incr("root_set_unusable")
            log.warning("no root set: voting as local-model", node=self.node_index, reason=str(exc))
            return None

    def _root_votes(
        self, base: Tensors, weights: Tensors, usable: Sequence[Delta | None], round_number: int, test: RootTest
    ) -> tuple[int, ...] | None:
        """The votes of the root ``test`` (``Recipe.root_test``), or None when the task has
        no root set (or its update cannot judge): the caller then votes as ``local-model``."""
        if self._root is None:
            return None
        if test == "model":  # the proposer's model on the root set, as local-model on a split
            return self._own_split_votes(weights, usable, self._root)
        key = (round_number, model_hash(base))
        if key not in self._root_updates:
            seed = training_seed(self.spec.seed, round_number, ROOT_TRAINER)
            update, _ = self.recipe.local_update(self._model, base, self._root, seed=seed)
            self._root_updates.clear()  # one round's at a time
            self._root_updates[key] = self.expand(base, weights, Delta(update, 0, "root", b"")).tensors
        return direction_votes(self._root_updates[key], usable)

    def usable(
        self, base: Tensors, deltas: Sequence[bytes | None], sent: dict[bytes, Delta] | None = None
    ) -> list[Delta | None]:
        """Each delta decoded and expanded, or None where it is missing or unusable for
        ``base``. ``sent``, when given, also receives each usable delta as sent, by hash."""
        return self._usable(base, self.recipe.model_weights(base), deltas, sent)

    def _usable(
        self, base: Tensors, weights: Tensors, deltas: Sequence[bytes | None], sent: dict[bytes, Delta] | None = None
    ) -> list[Delta | None]:
        def expand(delta: Delta) -> Delta:
            if sent is not None:
                sent[delta.hash] = delta
            return self.expand(base, weights, delta)

        return usable_deltas(weights, deltas, self._refuse, delta_layout=self.layout, expand=expand)

    def expand(self, base: Tensors, weights: Tensors, delta: Delta) -> Delta:
        """``delta`` as a change of every tensor of ``weights`` (the model of the global
        state ``base``; zero where the recipe's update leaves one alone), under the same
        hash: what the rules and the scorer combine."""
        update = self.recipe.expand_update(base, delta.tensors)
        if update is delta.tensors:
            return delta
        require_same_layout(shapes(weights), shapes({**weights, **update}), "expanded update")
        # np.zeros maps untouched pages lazily: the unchanged tensors cost no memory.
        full = {name: update.get(name, np.zeros(weights[name].shape, np.float32)) for name in sorted(weights)}
        return replace(delta, tensors=full)

    def _refuse(self, data: bytes, reason: str) -> None:
        self.counters.incr("deltas_unusable")
        log.warning("unusable delta", node=self.node_index, delta=delta_hash(data).hex()[:16], reason=reason)

    def aggregate(self, base: Tensors, deltas: Sequence[bytes]) -> Tensors:
        """``base`` plus the task's aggregate of the usable deltas (unusable ones are left
        out, as every node leaves them out; none usable: ``base`` unchanged). Raises only
        AggregationError, never on a peer's bytes alone."""
        sent: dict[bytes, Delta] = {}
        usable = [d for d in self.usable(base, deltas, sent) if d is not None]
        if not usable:
            return dict(base)
        update = aggregate(usable, self.spec.rule)
        return self.recipe.next_state(base, update, [sent[d.hash] for d in usable], self.spec.rule)

    def evaluate_test(self, state: Tensors) -> Metrics:
        with self._lock:
            load_model_state(self._model, self.recipe.model_weights(state))
            held_out = self.val_split if self.test_split is None else self.test_split
            return self.recipe.evaluate(self._model, held_out)
