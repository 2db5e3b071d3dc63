"""`scripts/bench lm`: federated LoRA four ways on the same base, data and steps.

In one process (the simulation's style: every node's work runs one after another), on the
testnet's base (``flockd.lm.testnet.TESTNET_BASE_BUILD``, built once and cached) and its
task config, with ``--nodes`` nodes each holding one docstring domain (non-IID):

1. **flockd**: every node trains the global state's carried adapter and proposes it;
   every other node votes on it (``Worker.score``: bits per character on the voter's own
   validation text); a proposal with a strict majority of +1 is accepted; the model moves
   by the exact mean of the accepted updates (``Worker.aggregate``, ``flockd.lm.lora``).
2. **A and B averaged separately** (Flower's FlowerTune and OpenFedLLM): one global
   adapter, every node trains it from the global A and B, the server averages A and B
   tensor by tensor; the model is base + s·mean(B)·mean(A).
3. **centralized**: one trainer on every node's training text pooled, ``nodes`` times the
   steps a round (the same compute), one adapter trained on through the rounds (upper
   bound).
4. **local-only**: each node alone on its own domain, its adapter trained on through the
   rounds; per-domain figures are the mean over the nodes' models (lower bound).

Then the attack rows: ``--attackers`` of the nodes (40% by default) train on garbage text
(random symbols, ``flockd.lm.corpus.garbage_text``) and vote to accept everything, under 1. and 2.
A root vote's rows (``--vote-scorings`` with ``root-direction`` or ``root-or-local-model``)
run on a task with a root set of ``--root-rows`` paragraphs (``CausalLoraRecipe.load_root``;
none unless given, as an lm-lora task's default);
``--root-alignment`` only shows how that vote sees honest and poisoned adapters
(``flockd.bench.lm_root``).

Reported per method: bits per character on each domain's test split, their mean, wall
seconds (all nodes' training, voting and aggregation, one after another; not the test
evaluation) and bytes sent (flockd: each proposal to every other node; Flower's way:
every adapter up and the global adapter down; centralized: the training text, UTF-8).
``--write`` replaces the "Language models" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from flockd.fl.attacks import Behaviour
from flockd.fl.codec import encode_delta
from flockd.fl.data import DataSpec
from flockd.fl.recipe import training_seed
from flockd.fl.tensors import Tensors, load_model_state
from flockd.fl.vote_scoring import (
    DEFAULT_ROOT_ROWS,
    DEFAULT_VOTE_SCORING,
    VoteScoring,
    parse_vote_scoring,
    root_rows_for,
)
from flockd.lm.causal import TokenizedText
from flockd.lm.corpus import garbage_text
from flockd.lm.lora import adapter_values, attached, factor_mean, split_state
from flockd.lm.recipe import CausalLoraRecipe
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

DOMAINS = ("numpy", "torch.nn", "asyncio", "collections", "trio")  # one per node, non-IID
SECTION = "## Language models"
ACCEPT_ALL = Behaviour(vote="accept-all")


@dataclass(frozen=True)
class Outcome:
    method: str
    domain_bpc: tuple[float, ...]
    seconds: float
    bytes_sent: int
    note: str = ""

    @property
    def mean_bpc(self) -> float:
        return math.fsum(self.domain_bpc) / len(self.domain_bpc)


@dataclass
class Bench:
    """The shared ground: one task spec, the nodes' workers, every domain's test text."""

    spec: TaskSpec
    rounds: int
    workers: list[Worker]
    tests: list[TokenizedText]

    @property
    def recipe(self) -> CausalLoraRecipe:
        recipe = self.workers[0].recipe
        assert isinstance(recipe, CausalLoraRecipe)
        return recipe

    def bpc(self, state: Tensors) -> tuple[float, ...]:
        model = self.recipe.build_model(0)
        load_model_state(model, self.recipe.model_weights(state))
        return tuple(self.recipe.evaluate(model, text)["loss"] for text in self.tests)


def train_text(worker: Worker) -> TokenizedText:
    text = worker.train_split
    if not isinstance(text, TokenizedText):
        raise TypeError(f"{worker.recipe.name} is not a causal LM recipe")
    return text


def garbage_file(directory: Path, index: int, chars: int) -> Path:
    path = directory / f"garbage-{index}.txt"
    path.write_text(garbage_text(index, chars))
    return path


def make_bench(
    config: dict[str, Any], nodes: int, rounds: int, attackers: int, garbage_dir: Path,
    scoring: VoteScoring = DEFAULT_VOTE_SCORING, root_rows: int | None = None,
) -> Bench:
    """Honest workers first (voting by ``scoring``), then ``attackers`` garbage-text ones
    voting accept-all. A root vote's task carries ``root_rows`` rows of root set, by default
    none, as an lm-lora task created without naming any (``root_rows_default``)."""
    rows = root_rows_for(scoring, root_rows, CausalLoraRecipe.root_rows_default)
    spec = TaskSpec("lm-lora", config=config, num_nodes=nodes, seed=1, root_rows=rows)
    workers = []
    for i in range(nodes):
        if i < nodes - attackers:
            workers.append(Worker(spec, i, scoring=scoring))
        else:
            path = garbage_file(garbage_dir, i, config["domain_chars"])
            workers.append(Worker(spec, i, str(path), behaviour=ACCEPT_ALL))
    recipe = workers[0].recipe
    assert isinstance(recipe, CausalLoraRecipe)
    data = DataSpec(node_index=0, num_nodes=nodes, seed=spec.seed)
    tests = [recipe.domain_test(data, i) for i in range(len(config["domains"]))]
    return Bench(spec, rounds, workers, tests)


Observer = Callable[[int, Tensors, Sequence[bytes]], None]


def run_flockd(bench: Bench, label: str, observe: Observer | None = None) -> Outcome:
    """Per-proposal votes (every node proposes; the others vote), exact aggregation.
    ``observe``, when given, sees every round's number, state and proposals (its time is
    not counted)."""
    workers, n = bench.workers, len(bench.workers)
    state = workers[0].initial_model()
    sent, accepted = 0, [0] * n
    start = time.perf_counter()
    for r in range(bench.rounds):
        wires = [w.train(state, r) for w in workers]
        sent += sum(len(w) for w in wires) * (n - 1)
        if observe is not None:
            paused = time.perf_counter()
            observe(r, state, wires)
            start += time.perf_counter() - paused
        yes = [0] * n
        for v, voter in enumerate(workers):
            others = [p for p in range(n) if p != v]
            votes = voter.score(state, [wires[p] for p in others], [bytes([p]) * 20 for p in others], False, r)
            for p, ballot in zip(others, votes, strict=True):
                yes[p] += ballot > 0
        chosen = [p for p in range(n) if 2 * yes[p] > n - 1]
        for p in chosen:
            accepted[p] += 1
        state = workers[0].aggregate(state, [wires[p] for p in chosen])
    seconds = time.perf_counter() - start
    honest = [i for i, w in enumerate(workers) if w.behaviour.is_honest]
    note = f"accepted {sum(accepted[i] for i in honest)}/{len(honest) * bench.rounds} honest proposals"
    if len(honest) < n:
        note += f", {sum(accepted) - sum(accepted[i] for i in honest)}/{(n - len(honest)) * bench.rounds} attackers'"
    return Outcome(label, bench.bpc(state), seconds, sent, note)


def train_adapter(bench: Bench, state: Tensors, start_adapter: Tensors, data: TokenizedText, steps: int, seed: int) -> Tensors:
    """``start_adapter`` trained for ``steps`` on ``data`` on the weights ``state``."""
    recipe = bench.recipe
    model = recipe.build_model(0)
    load_model_state(model, state)
    with attached(model, recipe.lora(), start_adapter) as wrapped:
        recipe.train(model, data, steps=steps, seed=seed)
        return adapter_values(wrapped)


def run_factor_mean(bench: Bench, label: str) -> Outcome:
    """Flower's FedAvg over the adapter's tensors: one global adapter, A and B averaged apart."""
    recipe, workers = bench.recipe, bench.workers
    base, adapter = split_state(workers[0].initial_model())  # flockd's starting adapter too
    wire_size = len(encode_delta(adapter))
    start = time.perf_counter()
    for r in range(bench.rounds):
        trained = [
            train_adapter(bench, base, adapter, train_text(w), recipe.config["steps"], training_seed(bench.spec.seed, r, i))
            for i, w in enumerate(workers)
        ]
        adapter = factor_mean(trained)
    seconds = time.perf_counter() - start
    sent = 2 * wire_size * len(workers) * bench.rounds
    return Outcome(label, bench.bpc({**base, **adapter}), seconds, sent)


def solo_rounds(bench: Bench, worker: Worker, data: TokenizedText, steps: int, node: int) -> Tensors:
    """``bench.rounds`` rounds of one node's adapter trained ``steps`` on ``data``, carried
    from round to round as the federation carries its own (one update: the exact mean is it)."""
    weights, adapter = split_state(worker.initial_model())
    for r in range(bench.rounds):
        seed = training_seed(bench.spec.seed, r, node)
        adapter = train_adapter(bench, weights, adapter, data, steps, seed)
    return {**weights, **adapter}


def run_centralized(bench: Bench, label: str) -> Outcome:
    honest = [w for w in bench.workers if w.behaviour.is_honest]
    windows = tuple(win for w in honest for win in train_text(w).windows)
    pooled = TokenizedText(windows, sum(train_text(w).target_bytes for w in honest))
    start = time.perf_counter()
    state = solo_rounds(bench, honest[0], pooled, bench.recipe.config["steps"] * len(honest), 0)
    seconds = time.perf_counter() - start
    return Outcome(label, bench.bpc(state), seconds, pooled.target_bytes, "the training text is what travels")


def run_local_only(bench: Bench, label: str) -> Outcome:
    honest = [w for w in bench.workers if w.behaviour.is_honest]
    start = time.perf_counter()
    states = [solo_rounds(bench, w, train_text(w), bench.recipe.config["steps"], i) for i, w in enumerate(honest)]
    seconds = time.perf_counter() - start
    per_node = [bench.bpc(s) for s in states]
    mean = tuple(math.fsum(col) / len(col) for col in zip(*per_node, strict=True))
    own = math.fsum(per_node[i][i] for i in range(len(honest))) / len(honest)
    return Outcome(label, mean, seconds, 0, f"mean of the {len(honest)} nodes' models; on its own domain {own:.4f}")


def table(outcomes: Sequence[Outcome], domains: Sequence[str], base_bpc: Sequence[float]) -> str:
    head = "| method | " + " | ".join(domains) + " | mean | wall s | bytes sent | note |"
    rule = "|---|" + "---:|" * (len(domains) + 3) + "---|"
    rows = [head, rule, "| base | " + " | ".join(f"{b:.4f}" for b in base_bpc) + f" | {math.fsum(base_bpc) / len(base_bpc):.4f} | | | |"]
    for o in outcomes:
        cells = " | ".join(f"{b:.4f}" for b in o.domain_bpc)
        rows.append(f"| {o.method} | {cells} | {o.mean_bpc:.4f} | {o.seconds:.0f} | {o.bytes_sent:,} | {o.note} |")
    return "\n".join(rows)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) the ``SECTION`` at the end of ``path``: only that section."""
    old = path.read_text()
    kept = old[: old.index(SECTION)].rstrip() if SECTION in old else old.rstrip()
    path.write_text(kept + "\n\n" + text.rstrip() + "\n")


def _scorings(text: str) -> list[VoteScoring]:
    try:
        return [parse_vote_scoring(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench lm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=len(DOMAINS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--attackers", type=int, default=2, help="garbage-text proposers in the attack rows (0: none)")
    parser.add_argument("--vote-scorings", type=_scorings, default=["local-model", "guarded-contribution"],
                        help="the honest voters' scorings, a flockd row each (default: local-model,guarded-contribution)")
    parser.add_argument("--write", action="store_true", help="replace the Language models section of docs/benchmarks.md")
    parser.add_argument("--root-rows", type=int, default=None,
                        help="the root set's rows of a root vote's task (default: none, as an lm-lora task created "
                             f"without naming any; --root-alignment: {DEFAULT_ROOT_ROWS})")
    parser.add_argument("--root-alignment", action="store_true",
                        help="only show how the root-direction vote sees honest and poisoned adapters, round by round")
    parser.add_argument("--train-overhead", type=int, default=0, metavar="N",
                        help="only compare N pairs of the same training: a bare script and the daemon's training process")
    args = parser.parse_args(argv)
    if not (2 <= args.nodes <= len(DOMAINS) and (args.train_overhead or 0 <= args.attackers < args.nodes) and args.rounds >= 1):
        parser.error(f"need 2 <= nodes <= {len(DOMAINS)}, 0 <= attackers < nodes, rounds >= 1")

    from flockd.lm.build import BaseBuild, build_base
    from flockd.lm.testnet import TESTNET_BASE_BUILD, TESTNET_CONFIG

    built = build_base(BaseBuild(**TESTNET_BASE_BUILD))
    if args.train_overhead:
        from flockd.bench.lm_train import train_overhead

        config = {"base_hash": "0x" + built.base_hash.hex(), **TESTNET_CONFIG}
        print(f"`scripts/bench lm --nodes {args.nodes} --train-overhead {args.train_overhead}` on "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}:\n")
        print(train_overhead(config, args.nodes, args.train_overhead))
        return 0
    domains = list(DOMAINS[: args.nodes])
    config = {"base_hash": "0x" + built.base_hash.hex(), **TESTNET_CONFIG, "domains": domains}
    rows = f" --root-rows {args.root_rows}" if args.root_rows is not None else ""
    if args.root_alignment:
        from flockd.bench.lm_root import alignment

        with TemporaryDirectory() as tmp:
            root_rows = DEFAULT_ROOT_ROWS if args.root_rows is None else args.root_rows
            bench = make_bench(config, args.nodes, args.rounds, 0, Path(tmp), "root-or-local-model", root_rows)
            table_text = alignment(bench, Path(tmp))
        print(f"`scripts/bench lm --nodes {args.nodes} --rounds {args.rounds}{rows} --root-alignment` on "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}:\n")
        print(table_text)
        return 0
    started = datetime.now(UTC)
    outcomes: list[Outcome] = []
    with TemporaryDirectory() as tmp:
        clean = make_bench(config, args.nodes, args.rounds, 0, Path(tmp))
        base_bpc = clean.bpc(clean.workers[0].initial_model())
        scorings = [(s, clean if s == DEFAULT_VOTE_SCORING else make_bench(config, args.nodes, args.rounds, 0, Path(tmp), s, args.root_rows))
                    for s in args.vote_scorings]
        runs: list[tuple[Bench, Callable[[Bench, str], Outcome], str]] = [
            *((b, run_flockd, f"flockd: per-proposal vote ({s}), exact mean of the updates, carried adapter")
              for s, b in scorings),
            (clean, run_factor_mean, "A and B averaged separately (FlowerTune / OpenFedLLM)"),
            (clean, run_centralized, "centralized (upper bound)"),
            (clean, run_local_only, "local-only (lower bound)"),
        ]
        if args.attackers:
            share = f"{args.attackers}/{args.nodes} garbage-text proposers"
            for s in args.vote_scorings:
                attacked = make_bench(config, args.nodes, args.rounds, args.attackers, Path(tmp), s, args.root_rows)
                runs.append((attacked, run_flockd, f"flockd ({s}), {share} voting accept-all"))
            runs.append((attacked, run_factor_mean, f"A and B averaged separately, {share}"))
        for bench, run, label in runs:
            outcome = run(bench, label)
            print(f"{label}: mean {outcome.mean_bpc:.4f} bpc, {outcome.seconds:.0f} s", file=sys.stderr)
            outcomes.append(outcome)
    c = clean.recipe.config
    text = "\n".join([
        SECTION, "",
        f"`scripts/bench lm --nodes {args.nodes} --rounds {args.rounds} --attackers {args.attackers} "
        f"--vote-scorings {','.join(args.vote_scorings)}{rows}` "
        f"on {started:%Y-%m-%d %H:%M} UTC, commit {commit()}: the testnet's base ({built.parameters:,} parameters), "
        f"{args.nodes} nodes with one docstring domain each ({c['domain_chars']:,} characters), {args.rounds} rounds of "
        f"{c['steps']} Adam steps of {c['batch_size']} × {c['seq_len']} tokens, LoRA r={c['lora_rank']} α={c['lora_alpha']} "
        f"on {', '.join(c['lora_targets'])}, lr {c['lr']}. Held-out bits per character on each domain's test split "
        "(lower is better); wall seconds of all nodes' work one after another in one process on 2 shared cores.",
        "",
        table(outcomes, domains, base_bpc),
    ])
    print(text)
    if args.write:
        write_section(Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md", text)
    return 0
