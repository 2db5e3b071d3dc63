"""In-process federated training with no network: the FL core end to end, measured.

Every round, the proposers train from the global model on their own train split, encode
their delta with the real codec, decode it as a peer would, optionally have the other
nodes vote on each proposal with ``score.accepts``, aggregate the accepted ones with the
task's rule and apply the result. The held-out test split measures each new global model.

``behaviours`` makes chosen nodes malicious (flockd.fl.attacks: flipped labels, poisoned
deltas, dishonest votes) exactly as a daemon with that ``[attack]`` config would be, and
``transform`` lets a caller tamper with deltas in any other way before encoding, so this
stays the one loop both honest and adversarial figures come from.

Run: ``python -m flockd.fl.simulate --recipe digits-mlp --nodes 8 --rounds 10``
(``--malicious 0.25 --attack sign-flip:4 --proposers 4 --vote`` for an attacked run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from flockd.fl.aggregate import Rule, aggregate, apply, usable_deltas
from flockd.fl.attacks import (
    HONEST,
    Behaviour,
    assign_behaviours,
    attack_rng,
    cast_votes,
    poison_delta,
    poison_wire,
    training_split,
)
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import Delta, encode_delta
from flockd.fl.data import DataSpec, Split
from flockd.fl.recipe import Metrics, Recipe, limit_torch_threads, load_recipe, training_seed
from flockd.fl.score import Scorer, accepts
from flockd.fl.tensors import Tensors, load_model_state, model_state, subtract

# (node index, round index, honest delta) -> the delta the node actually sends.
DeltaTransform = Callable[[int, int, Tensors], Tensors]
# What decides which proposals are aggregated: every proposal (no defence), the honest
# nodes' vote (``vote=True``), or an oracle that accepts exactly the honest proposals, the
# best any vote can do (``perfect``), optionally with the cartel's proposer slots given to
# honest nodes too (``perfect-refilled``): the ceilings a defence is measured against.
Oracle = Literal["perfect", "perfect-refilled"]


@dataclass(frozen=True)
class RoundFigures:
    round: int
    accuracy: float  # global model on the held-out test split, after this round
    loss: float
    seconds: float  # wall time of the whole round (all nodes, one process)
    proposers: list[int]
    accepted: list[int]


@dataclass
class Simulation:
    recipe: str
    nodes: int
    partition: str
    rule: str
    encoding: str
    initial: Metrics
    behaviours: dict[int, str] = field(default_factory=dict)  # the malicious nodes' specs
    rounds: list[RoundFigures] = field(default_factory=list)
    final_model_hash: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Node:
    index: int
    train: Split  # labels already flipped for a label-flipping node
    validation: Split
    behaviour: Behaviour

    @property
    def address(self) -> bytes:
        """A stand-in for the node's chain address, which colluding voters go by."""
        return self.index.to_bytes(20, "big")


def simulate(
    recipe: str | Recipe = "digits-mlp",
    *,
    nodes: int = 8,
    rounds: int = 10,
    partition: str = "iid",
    rule: Rule | str = "fedavg",
    encoding: str = "f32",
    seed: int = 0,
    proposers: int | None = None,
    vote: bool = False,
    transform: DeltaTransform | None = None,
    behaviours: Mapping[int, Behaviour] | None = None,
    on_round: Callable[[RoundFigures], None] | None = None,
    elect_probability: float | None = None,
    oracle: Oracle | None = None,
) -> Simulation:
    """Run ``rounds`` rounds over ``nodes`` nodes; ``proposers`` per round (all if None),
    the rest vote when ``vote`` is set (otherwise every proposal is accepted). Nodes
    missing from ``behaviours`` are honest. ``elect_probability``: instead of a fixed
    number, each node proposes with this probability on its own, as sortition elects
    (a round may then have no proposer). ``oracle``: see ``Oracle``; with
    ``perfect-refilled`` only honest nodes are drawn, each with the probability scaled by
    nodes / honest nodes, so a round expects as many proposals as without attackers."""
    if oracle is not None and vote:
        raise ValueError("an oracle decides instead of the vote: not both")
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    behaviours = behaviours or {}
    specs = [DataSpec(i, nodes, partition, seed) for i in range(nodes)]
    members = []
    for i, spec in enumerate(specs):
        behaviour = behaviours.get(i, HONEST)
        train, validation = recipe.load_data(spec)
        members.append(_Node(i, training_split(behaviour, train, recipe), validation, behaviour))
    test = recipe.load_test(specs[0])
    model = recipe.build_model(seed)
    state = model_state(model)
    result = Simulation(
        recipe.name,
        nodes,
        partition,
        str(rule),
        encoding,
        recipe.evaluate(model, test),
        {m.index: str(m.behaviour) for m in members if not m.behaviour.is_honest},
    )
    draw = np.random.Generator(np.random.PCG64([seed, 4]))
    honest_nodes = [m.index for m in members if m.behaviour.is_honest]
    for r in range(rounds):
        started = time.perf_counter()
        if elect_probability is not None:
            pool = honest_nodes if oracle == "perfect-refilled" else list(range(nodes))
            chance = min(1.0, elect_probability * nodes / len(pool))
            chosen = [i for i, u in zip(pool, draw.random(len(pool)), strict=True) if u < chance]
        elif oracle == "perfect-refilled":
            chosen = sorted(draw.permutation(honest_nodes)[: proposers or nodes].tolist())
        else:
            chosen = sorted(draw.permutation(nodes)[: proposers or nodes].tolist())
        wires: dict[int, bytes] = {}
        for i in chosen:
            load_model_state(model, state)
            stats = recipe.train(model, members[i].train, seed=training_seed(seed, r, i))
            delta = subtract(model_state(model), state)
            rng = attack_rng(seed, r, i, "delta")
            delta = poison_delta(members[i].behaviour, delta, rng)
            if transform is not None:
                delta = transform(i, r, delta)
            wire = encode_delta(delta, samples=stats["samples"], encoding=encoding)
            wires[i] = poison_wire(members[i].behaviour, wire, rng)
        # Decoded as a peer would (None: unusable, protocol/spec/delta.md §3).
        offered = dict(zip(wires, usable_deltas(state, list(wires.values())), strict=True))
        voters = [m for m in members if m.index not in offered] if vote else []
        if oracle is None:
            accepted = _tally(recipe, state, offered, voters, members, seed, r)
        else:
            accepted = [i for i in sorted(offered) if members[i].behaviour.is_honest]
        usable = [d for d in (offered[i] for i in accepted) if d is not None]
        if usable:
            state = apply(state, aggregate(usable, rule))
        load_model_state(model, state)
        metrics = recipe.evaluate(model, test)
        figures = RoundFigures(
            r + 1,
            metrics["accuracy"],
            metrics["loss"],
            time.perf_counter() - started,
            chosen,
            accepted,
        )
        result.rounds.append(figures)
        if on_round is not None:
            on_round(figures)
    result.final_model_hash = model_hash(state).hex()
    return result


def _tally(
    recipe: Recipe,
    state: Tensors,
    offered: Mapping[int, Delta | None],
    voters: list[_Node],
    members: list[_Node],
    seed: int,
    round_index: int,
) -> list[int]:
    """Proposals a strict majority of voters accepts (all of them when nobody votes); an
    unusable delta (None) gets -1 from every honest voter."""
    if not voters:
        return sorted(offered)
    order = sorted(offered)
    proposers = [members[i].address for i in order]
    colluders = frozenset(m.address for m in members if m.behaviour.vote == "collude")
    ayes = dict.fromkeys(order, 0)
    for voter in voters:
        scorer = Scorer(recipe, state, voter.validation)
        honest = tuple(_vote(scorer, offered[i]) for i in order)
        rng = attack_rng(seed, round_index, voter.index, "vote")
        votes = cast_votes(voter.behaviour, honest, proposers, colluders, rng, whole_round=False)
        for i, vote in zip(order, votes, strict=True):
            ayes[i] += vote > 0
    return sorted(i for i, n in ayes.items() if 2 * n > len(voters))


def _vote(scorer: Scorer, delta: Delta | None) -> int:
    return 1 if delta is not None and accepts(scorer.score(delta.tensors)) else -1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m flockd.fl.simulate", description=__doc__)
    parser.add_argument("--recipe", default="digits-mlp")
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--rule", default="fedavg")
    parser.add_argument("--encoding", default="f32")
    parser.add_argument("--proposers", type=int, default=None)
    parser.add_argument("--vote", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malicious",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="make round(FRACTION x nodes) nodes (never node 0) malicious",
    )
    parser.add_argument(
        "--attack",
        default="collude",
        metavar="SPEC",
        help="their behaviour (docs/learning.md, Attackers; default collude)",
    )
    parser.add_argument("--config", default="{}", help="recipe config overrides, JSON")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        behaviours = assign_behaviours(args.nodes, args.malicious, args.attack, args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    limit_torch_threads(1)
    recipe = load_recipe(args.recipe, json.loads(args.config))

    def show(f: RoundFigures) -> None:
        if not args.json:
            bad = [i for i in f.proposers if i in behaviours]
            bad_accepted = [i for i in f.accepted if i in behaviours]
            attacked = f"  (malicious {len(bad_accepted)}/{len(bad)})" if behaviours else ""
            print(
                f"round {f.round:3d}  accuracy {f.accuracy:.4f}  loss {f.loss:.4f}  "
                f"{f.seconds:.2f}s  accepted {len(f.accepted)}/{len(f.proposers)}{attacked}"
            )

    if behaviours and not args.json:
        print("malicious: " + ", ".join(f"node {i} {b}" for i, b in behaviours.items()))

    result = simulate(
        recipe,
        nodes=args.nodes,
        rounds=args.rounds,
        partition=args.partition,
        rule=args.rule,
        encoding=args.encoding,
        seed=args.seed,
        proposers=args.proposers,
        vote=args.vote,
        behaviours=behaviours,
        on_round=show,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"initial accuracy {result.initial['accuracy']:.4f}; "
            f"final model hash {result.final_model_hash}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
