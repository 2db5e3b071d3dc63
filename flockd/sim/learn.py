"""The learning side of every simulated node, on one shared torch model.

A node's work is `flockd.tasks.work.Worker`'s, unchanged: the same train, score and
aggregate code the daemon runs. One Worker per node would build hundreds of models, so
the simulation builds one and gives each node a shallow copy that differs only in its
data (its own train/validation split, `DataSpec(i, N, partition, seed)`) and its index
(the training seed); the torch model, recipe and test split are shared. Calls run one
after another in this thread, so sharing the model is safe.

Models and deltas live in one content-addressed map (hash -> tensors / bytes): a node's
FetchDelta or FetchModel is a look-up there, checked by the machine as the daemon's are.
Work that is the same for every node is done once: the aggregate for a given base model
and accepted deltas (deterministic, so every node would compute the same bytes) and the
test metrics of a model.

Malicious behaviours (`flockd.fl.attacks`) are the Worker's own: a node's copy carries
its behaviour, so it trains on flipped labels, poisons its delta and casts malicious
votes exactly as a daemon started with `--attack` does.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from flockd.fl.attacks import HONEST, Behaviour, training_split
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import Delta
from flockd.fl.data import DataSpec
from flockd.fl.recipe import Metrics
from flockd.fl.tensors import Tensors
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VoteScoring
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

CREATOR_ROUNDS = 10**9  # the training seeds of the creator's steps (a registry task has far fewer rounds)


class _SharedWorker(Worker):
    """The Worker every node's copy is made from. Which of a round's deltas are usable, and
    their decoding, depend on the base model and the bytes alone (``usable_deltas``: the
    same on every node), so the voters of a round share one decoding instead of each
    decoding every proposal again. Kept for the latest base only (holding the base itself,
    so its id names it), in a map every copy shares. Refusals are logged and counted once
    per round, not once per voter. Aggregation (``sent`` given) decodes as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoded: dict[int, tuple[Tensors, dict[tuple[bytes | None, ...], list[Delta | None]]]] = {}

    def _usable(
        self, base: Tensors, weights: Tensors, deltas: Sequence[bytes | None], sent: dict[bytes, Delta] | None = None
    ) -> list[Delta | None]:
        if sent is not None:
            return super()._usable(base, weights, deltas, sent)
        held = self.decoded.get(id(base))
        if held is None or held[0] is not base:
            self.decoded.clear()
            held = self.decoded[id(base)] = (base, {})
        key = tuple(deltas)
        if key not in held[1]:
            held[1][key] = super()._usable(base, weights, deltas)
        return list(held[1][key])


class Learner:
    def __init__(
        self, spec: TaskSpec, score_sample: int | None = None, scoring: VoteScoring = DEFAULT_VOTE_SCORING
    ) -> None:
        self.spec = spec
        self.shared = _SharedWorker(spec, 0, scoring=scoring)  # limits torch to one thread
        self.recipe = self.shared.recipe
        self.score_sample = score_sample
        self.models: dict[bytes, Tensors] = {}
        self.deltas: dict[bytes, bytes] = {}
        self._aggregates: dict[tuple[bytes, tuple[bytes, ...]], bytes] = {}
        self._metrics: dict[bytes, Metrics] = {}

    def initial_model(self, creator_steps: int = 0) -> bytes:
        """The task's round-0 model: the recipe's random one, then ``creator_steps`` local
        updates of node 0 (honest) on its own split, each applied whole (seeded as rounds
        CREATOR_ROUNDS, +1, ..., past any task's last round, so no round's training repeats one)."""
        state = self.shared.initial_model()
        if creator_steps:  # node 0's data is loaded only for a creator's model
            creator = self.worker(0, HONEST, frozenset())
            for step in range(creator_steps):
                state = creator.aggregate(state, [creator.train(state, CREATOR_ROUNDS + step)])
        return self.put_model(state)

    def put_model(self, state: Tensors) -> bytes:
        digest = model_hash(state)
        self.models.setdefault(digest, state)
        return digest

    def worker(self, index: int, behaviour: Behaviour, colluders: frozenset[bytes]) -> Worker:
        """Node `index`'s Worker: the shared one with this node's data, index and behaviour."""
        data = DataSpec(index, self.spec.num_nodes, self.spec.partition, self.spec.seed)
        train, val = self.recipe.load_data(data)
        if self.score_sample is not None and len(val) > self.score_sample:
            val = val.take(np.arange(self.score_sample))
        work = copy.copy(self.shared)
        work.node_index, work.behaviour, work.colluders = index, behaviour, colluders
        work.train_split, work.val_split = training_split(behaviour, train, self.recipe), val
        return work

    def train(self, work: Worker, base: bytes, round_number: int) -> bytes:
        return work.train(self.models[base], round_number)

    def score(
        self, work: Worker, base: bytes, deltas: Sequence[bytes | None], proposers: Sequence[bytes],
        whole_round: bool, round_number: int,
    ) -> tuple[int, ...]:
        return work.score(self.models[base], deltas, proposers, whole_round, round_number)

    def aggregate(self, base: bytes, deltas: Sequence[bytes]) -> bytes:
        key = (base, tuple(deltas))
        if key not in self._aggregates:
            self._aggregates[key] = self.put_model(self.shared.aggregate(self.models[base], list(deltas)))
        return self._aggregates[key]

    def evaluate(self, digest: bytes) -> Metrics:
        if digest not in self._metrics:
            self._metrics[digest] = self.shared.evaluate_test(self.models[digest])
        return self._metrics[digest]
