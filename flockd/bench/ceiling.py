"""`scripts/bench ceiling`: what any vote could reach under attack, the reference for the
attack bench's target (docs/benchmarks.md, "Defence under attack").

No chain, no vote: `flockd.fl.simulate` with an oracle in place of the vote. Each node
proposes with the probability the sim's sortition gives it with equal stakes,
``1 - exp(-proposers / nodes)`` (8 expected proposers of 20 nodes: 0.33, ~6.6 proposals a
round), and for each malicious fraction and seed three federations run from the same data
split, initial model and training seeds:

- ``clean``: no attacker;
- ``perfect``: the malicious nodes hold their proposer slots and the oracle rejects
  exactly their proposals (a vote that never errs);
- ``refilled``: as ``perfect``, but only honest nodes are drawn, as many proposals a round
  as ``clean`` expects (a vote that never errs plus slots the cartel cannot hold).

``perfect`` minus ``clean`` is the loss no vote can avoid while the cartel keeps its slots;
``refilled`` minus ``clean`` is what remains when it loses them too: the cartel's data,
which nobody else holds. Paired by seed, mean and 95% CI half-width (Student t).

    .venv/bin/python -m flockd.bench ceiling --fractions 0.4,0.45 --seeds 0-7
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections.abc import Sequence

from flockd.bench._attack_stats import spread
from flockd.fl.attacks import assign_behaviours
from flockd.fl.recipe import limit_torch_threads
from flockd.fl.simulate import Oracle, simulate

LAST = 5  # rounds averaged for the second figure (one round's test split is 359 rows)
_SETUPS: dict[str, Oracle | None] = {
    "clean": None,
    "perfect": "perfect",
    "refilled": "perfect-refilled",
}


def _ints(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(x) for x in text.split(",")]


@functools.cache
def _run(
    oracle: Oracle | None,
    fraction: float,
    seed: int,
    nodes: int,
    rounds: int,
    proposers: int,
    attack: str,
) -> tuple[float, float]:
    """(final accuracy, mean of the last LAST rounds) in percent of one federation; the
    clean one (no oracle) is run once per seed whatever the fraction."""
    if oracle is None and fraction:
        return _run(None, 0.0, seed, nodes, rounds, proposers, attack)
    run = simulate(
        "digits-mlp", nodes=nodes, rounds=rounds, seed=seed,
        elect_probability=1.0 - math.exp(-proposers / nodes), oracle=oracle,
        behaviours=assign_behaviours(nodes, fraction, attack, seed) if oracle else None,
    )  # fmt: skip
    accuracy = [100 * r.accuracy for r in run.rounds]
    return accuracy[-1], statistics.fmean(accuracy[-LAST:])


def ceiling(
    fraction: float, seed: int, *, nodes: int, rounds: int, proposers: int, attack: str
) -> dict[str, tuple[float, float]]:
    """Final and last-rounds accuracy of the three setups for one seed."""
    return {
        name: _run(oracle, fraction, seed, nodes, rounds, proposers, attack)
        for name, oracle in _SETUPS.items()
    }


def _cell(values: Sequence[float]) -> str:
    s = spread(values)
    return f"{s.mean:+.2f} ± {s.half_width:.2f}" if s.n > 1 else f"{s.mean:+.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench ceiling", description=__doc__)
    parser.add_argument("--fractions", default="0.4,0.45")
    parser.add_argument("--seeds", type=_ints, default=list(range(8)))
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--proposers", type=int, default=8, help="expected proposers a round")
    parser.add_argument("--attack", default="collude")
    args = parser.parse_args(argv)
    limit_torch_threads(1)
    print("| malicious | setup | final accuracy | mean of the last 5 rounds | "
          "final, minus clean | last 5, minus clean |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for fraction in (float(f) for f in args.fractions.split(",")):
        runs = [
            ceiling(fraction, s, nodes=args.nodes, rounds=args.rounds,
                    proposers=args.proposers, attack=args.attack)
            for s in args.seeds
        ]  # fmt: skip
        for name in _SETUPS:
            final = [r[name][0] for r in runs]
            last = [r[name][1] for r in runs]
            gap = [r[name][0] - r["clean"][0] for r in runs]
            gap_last = [r[name][1] - r["clean"][1] for r in runs]
            print(
                f"| {fraction:.0%} | {name} | {spread(final).cell(1.0)} | {spread(last).cell(1.0, 2)} "
                f"| {_cell(gap) if name != 'clean' else '–'} "
                f"| {_cell(gap_last) if name != 'clean' else '–'} |",
                flush=True,
            )
    return 0
