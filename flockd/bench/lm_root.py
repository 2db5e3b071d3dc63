"""`scripts/bench lm --root-alignment`: how the ``root-direction`` vote sees adapters.

Through a flockd run on the bench's nodes (every node proposing, honest voters voting
``root-or-local-model``), every round's root reference (the task's root set trained on
from the global state as a proposer trains, with the Worker's seed for it, expanded to
its update of the weights) is set against the expanded update of:

- every honest node's adapter (one docstring domain each: for a voter, all but its own
  are foreign);
- node 0's adapter under each delta attack of ``ATTACKS`` (``flockd.fl.attacks``, drawn as
  a node draws them);
- a proposer trained on garbage text (``flockd.lm.corpus.garbage_text``).

Reported: the cosine with the reference, the L2 norm over the reference's, and how many
``flockd.fl.root_vote.direction_votes`` accepted (an update beyond the codec's norm bound
is unusable: voted -1 before any vote).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flockd.bench.lm import Bench, garbage_file, run_flockd
from flockd.fl.attacks import attack_rng, parse_behaviour, poison_delta
from flockd.fl.codec import Delta, decode_delta, encode_delta
from flockd.fl.data import DataSpec
from flockd.fl.recipe import training_seed
from flockd.fl.root_vote import direction_votes
from flockd.fl.tensors import Tensors, flat
from flockd.tasks.work import ROOT_TRAINER, Worker

ATTACKS = ("noise", "noise:0.1", "noise:0.01", "sign-flip", "sign-flip:4")


@dataclass
class Seen:
    cosines: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    accepted: int = 0
    unusable: int = 0

    @property
    def total(self) -> int:
        return len(self.cosines) + self.unusable


def span(values: Sequence[float], fmt: str) -> str:
    return f"{min(values):{fmt}} – {max(values):{fmt}}" if values else "—"


def reference(bench: Bench, state: Tensors, round_number: int) -> Tensors:
    """The round's root update, as a root-direction voter computes it (Worker._root_votes)."""
    recipe, spec = bench.recipe, bench.spec
    root = recipe.load_root(DataSpec(num_nodes=spec.num_nodes, seed=spec.seed), spec.root_rows)
    if root is None:
        raise ValueError("the bench's task has no root set")
    update, _ = recipe.local_update(recipe.build_model(0), state, root, seed=training_seed(spec.seed, round_number, ROOT_TRAINER))
    return bench.workers[0].expand(state, recipe.model_weights(state), Delta(update, 0, "root", b"")).tensors


def proposals(bench: Bench, garbage: Worker, state: Tensors, round_number: int, wires: Sequence[bytes]) -> dict[str, bytes]:
    domains = bench.recipe.config["domains"]
    out = {f"honest, {domains[i % len(domains)]}": wire for i, wire in enumerate(wires) if bench.workers[i].behaviour.is_honest}
    honest = decode_delta(wires[0]).tensors
    for text in ATTACKS:
        rng = attack_rng(bench.spec.seed, round_number, 0, "delta")
        out[text] = encode_delta(poison_delta(parse_behaviour(text), honest, rng))
    out["trained on garbage text"] = garbage.train(state, round_number)
    return out


def alignment(bench: Bench, garbage_dir: Path) -> str:
    """Run flockd's rounds on ``bench`` and the table of what the root vote saw."""
    garbage = Worker(bench.spec, 0, str(garbage_file(garbage_dir, 0, bench.recipe.config["domain_chars"])))
    seen: dict[str, Seen] = defaultdict(Seen)

    def observe(round_number: int, state: Tensors, wires: Sequence[bytes]) -> None:
        ref = reference(bench, state, round_number)
        offered = proposals(bench, garbage, state, round_number, wires)
        usable = bench.workers[0].usable(state, list(offered.values()))
        votes = direction_votes(ref, usable) or (0,) * len(offered)
        ref_vector = flat(ref)
        ref_norm = float(np.linalg.norm(ref_vector))
        for name, delta, vote in zip(offered, usable, votes, strict=True):
            if delta is None:
                seen[name].unusable += 1
                continue
            vector = flat(delta.tensors)
            norm = float(np.linalg.norm(vector))
            seen[name].cosines.append(float(vector @ ref_vector) / (norm * ref_norm))
            seen[name].ratios.append(norm / ref_norm)
            seen[name].accepted += vote > 0
            print(f"round {round_number} {name}: cosine {seen[name].cosines[-1]:.3f}, norm ratio {seen[name].ratios[-1]:.2f}, "
                  f"{'accepted' if vote > 0 else 'rejected'}", file=sys.stderr)

    run_flockd(bench, "root alignment", observe=observe)
    rows = ["| proposal | cosine with the root update | norm / root update's | accepted by root-direction |", "|---|---:|---:|---:|"]
    for name, s in seen.items():
        note = f" ({s.unusable} unusable)" if s.unusable else ""
        rows.append(f"| {name} | {span(s.cosines, '.3f')} | {span(s.ratios, '.2f')} | {s.accepted}/{s.total}{note} |")
    return "\n".join(rows)
