"""`scripts/bench attack`: held-out accuracy under attack, flockd against plain FedAvg and
Flower, on the same task, split, rounds and attack, in one run.

Systems (each run is one federation of ``--nodes`` nodes for ``--rounds`` rounds):

- ``fedavg``: plain FedAvg without defence, the FLock paper's baseline
  (`flockd.fl.simulate`: every node trains every round, nothing is voted on);
- ``flockd-whole-round``: flockd in FLock's mode, every voter scores the round's aggregate
  once and the round is accepted when the stake-weighted sum of scores is >= 0;
- ``flockd-per-proposal``: flockd's default, every voter votes on every proposal and a
  proposal is aggregated when a stake-weighted majority accepts it;
- ``flockd-robust``: per-proposal voting, then a robust rule over the accepted deltas
  (``--robust-rule``, default trimmed-mean:0.2);
- ``flower-fedavg``, ``flower-multi-krum``: Flower 1.41 (`flockd.bench.flower`), every
  client training every round, its FedAvg and its Multi-Krum (f = 8, m = 12 of 20).

The flockd systems are `flockd.sim`: every node's real round state machine against a real
in-process py-evm chain running the TaskRegistry contract (VRF sortition, proposals,
vote commit/reveal, finalise, model attestation).

Malicious nodes are `flockd.fl.attacks.assign_behaviours(nodes, fraction, attack, seed)`:
the same nodes for every system at a given seed. Writes ``results.json`` (every run, every
round), ``accuracy.png`` and ``results.md`` under ``--out`` (docs/bench/attack), and the
tables into docs/benchmarks.md between the attack-bench markers (``--doc``/``--no-doc``).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "bench" / "attack"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- attack-bench:begin -->", "<!-- attack-bench:end -->"

SYSTEMS: dict[str, str] = {
    "fedavg": "plain FedAvg, no defence (everyone trains, no vote)",
    "flockd-whole-round": "flockd, FLock's whole-round vote",
    "flockd-per-proposal": "flockd, per-proposal vote",
    "flockd-robust": "flockd, per-proposal vote + robust rule",
    "flower-fedavg": "Flower FedAvg",
    "flower-multi-krum": "Flower Multi-Krum",
}
FLOCKD_SYSTEMS = ("flockd-whole-round", "flockd-per-proposal", "flockd-robust")
FLOWER_SYSTEMS = ("flower-fedavg", "flower-multi-krum")
# Attacks of the per-attack table: vote attacks come with label-flipped proposals, since
# dishonest votes alone change nothing when every proposal is honest.
PER_ATTACK = (
    "label-flip",
    "noise:1",
    "sign-flip:4",
    "label-flip+random-vote",
    "label-flip+accept-all",
    "collude",
)
PER_ATTACK_SYSTEMS = ("fedavg", "flockd-per-proposal", "flower-fedavg", "flower-multi-krum")
TARGET = 0.95  # "time to 95%" threshold
# As reported for FLock (NeurIPS'22 workshop / IEEE TAI'24) on digits: FedAvg without
# defence at 10/30/40% malicious, and FLock's own floor at 40%.
PUBLISHED_FEDAVG = {0.1: 0.963, 0.3: 0.801, 0.4: 0.709}
PUBLISHED_FLOCK_40 = 0.955


@dataclass(frozen=True)
class Job:
    system: str
    attack: str
    fraction: float
    seed: int
    nodes: int
    rounds: int
    proposers: int  # expected proposers per round (flockd systems)
    robust_rule: str

    @property
    def cost(self) -> float:
        """Rough relative run time, to start the slow runs first."""
        per_round = {"fedavg": 0.15, "flower-fedavg": 0.35, "flower-multi-krum": 0.4}
        return self.rounds * per_round.get(self.system, 3.0) * self.nodes / 20


def run_job(job: Job) -> dict[str, Any]:
    """One federation; returns a JSON-able record (runs in a pool worker)."""
    from flockd.fl.attacks import assign_behaviours
    from flockd.fl.data import DataSpec
    from flockd.fl.recipe import limit_torch_threads

    limit_torch_threads(1)
    behaviours = assign_behaviours(job.nodes, job.fraction, job.attack, job.seed)
    stamps: list[float] = []
    rounds: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    started = time.perf_counter()

    def mark(row: dict[str, Any]) -> None:
        stamps.append(time.perf_counter() - started)
        rounds.append(row)

    if job.system == "fedavg":
        from flockd.fl.simulate import RoundFigures as PlainRound
        from flockd.fl.simulate import simulate

        def plain(f: PlainRound) -> None:
            mark({"accuracy": f.accuracy, "loss": f.loss, "seconds": f.seconds})

        from flockd.fl.codec import NonFiniteDelta
        from flockd.fl.recipe import load_recipe

        recipe = load_recipe("digits-mlp")
        try:
            result = simulate(
                recipe,
                nodes=job.nodes,
                rounds=job.rounds,
                seed=job.seed,
                behaviours=behaviours,
                on_round=plain,
            )
            initial = result.initial["accuracy"]
        except NonFiniteDelta:
            # The global model blew up (inf weights), so the next deltas are NaN and the
            # codec refuses them: the run cannot go on. Keep the rounds it had.
            extra = {"diverged_round": len(rounds) + 1}
            test = recipe.load_test(DataSpec(0, job.nodes, "iid", job.seed))
            initial = recipe.evaluate(recipe.build_model(job.seed), test)["accuracy"]
            if not rounds:
                raise
    elif job.system in FLOCKD_SYSTEMS:
        from flockd.sim import RoundFigures as SimRound
        from flockd.sim import SimConfig, run_simulation

        def on_chain(f: SimRound) -> None:
            mark(
                {
                    "accuracy": f.accuracy,
                    "loss": f.loss,
                    "seconds": f.seconds,
                    "proposers": f.proposers,
                    "accepted": f.accepted,
                    "malicious_proposers": f.malicious_proposers,
                    "malicious_accepted": f.malicious_accepted,
                    "blocks": f.blocks,
                    "gas_used": f.gas_used,
                }
            )

        cfg = SimConfig(
            nodes=job.nodes,
            rounds=job.rounds,
            seed=job.seed,
            vote_mode="whole-round" if job.system == "flockd-whole-round" else "per-proposal",
            rule=job.robust_rule if job.system == "flockd-robust" else "fedavg",
            expected_proposers=job.proposers,
            behaviours=behaviours,
        )
        sim = run_simulation(cfg, on_round=on_chain)
        initial = sim.initial_accuracy
        extra = {
            "blocks": sim.blocks,
            "transactions": sim.transactions,
            "reverted": sim.reverted,
            "model_hash": sim.final_model_hash,
        }
    elif job.system in FLOWER_SYSTEMS:
        from flockd.bench.flower import FlowerRound, run_flower

        def on_flower(f: FlowerRound) -> None:
            mark({"accuracy": f.accuracy, "loss": f.loss, "seconds": f.seconds})

        run = run_flower(
            strategy=job.system.removeprefix("flower-"),
            nodes=job.nodes,
            rounds=job.rounds,
            seed=job.seed,
            behaviours=behaviours,
            on_round=on_flower,
        )
        initial = run.initial_accuracy
        extra = {"flwr_version": run.flwr_version, "connect_seconds": run.setup_seconds}
    else:
        raise ValueError(f"unknown system {job.system!r}")
    wall = time.perf_counter() - started
    reached = next((i for i, r in enumerate(rounds) if r["accuracy"] >= TARGET), None)
    return {
        **asdict(job),
        "malicious": sorted(behaviours),
        "initial_accuracy": initial,
        "final_accuracy": rounds[-1]["accuracy"],
        "wall_seconds": wall,
        # Wall time from launching the federation (chain / gRPC server / data set-up
        # included) to each round's global model existing.
        "model_at": stamps,
        "first_model_seconds": stamps[0],
        "seconds_per_round": (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        if len(stamps) > 1
        else stamps[0],
        "seconds_to_target": None if reached is None else stamps[reached],
        "rounds_to_target": None if reached is None else reached + 1,
        "rounds": rounds,
        **extra,
    }


def _worker_init(systems: Sequence[str]) -> None:
    """Import everything a run needs up front, so no run's timing includes a cold start of
    torch, py-evm or flwr in a fresh worker."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import flockd.fl.simulate  # noqa: F401 - torch, the FL core

    if any(s in FLOCKD_SYSTEMS for s in systems):
        import flockd.sim  # noqa: F401 - py-evm, the contracts
    if any(s in FLOWER_SYSTEMS for s in systems):
        from flockd.bench.flower import flower_available

        flower_available()


# -- where a flockd round's time goes ------------------------------------------------------

# (module, class or None, attribute) -> what it is. Each is timed exclusively: while one
# runs inside another (a block sealed by create_task), only the inner one's clock runs.
_BREAKDOWN: tuple[tuple[str, str | None, str, str], ...] = (
    ("flockd.sim.chain", "SimChain", "seal", "py-evm: execute and seal each block's transactions"),
    ("flockd.sim.chain", "SimChain", "view", "py-evm: contract reads (stakes for sortition)"),
    ("flockd.sim.chain", "SimChain", "send", "sign transactions (secp256k1)"),
    ("flockd.sim.run", None, "elect", "ECVRF proofs (sortition)"),
    ("flockd.round", "TaskMachine", "handle", "round state machines (every node)"),
    ("flockd.sim.learn", "Learner", "train", "training (proposers)"),
    ("flockd.sim.learn", "Learner", "score", "scoring every proposal (voters)"),
    ("flockd.sim.learn", "Learner", "aggregate", "aggregation"),
    ("flockd.sim.learn", "Learner", "evaluate", "test-split evaluation (measurement only)"),
    ("flockd.sim.chain", "SimChain", "__init__", "set-up: genesis, contract deployment"),
    ("flockd.sim.chain", "SimChain", "create_task", "set-up: create the task, every node joins"),
)


class _Clocks:
    """Exclusive wall time per label: entering a timed call pauses the caller's clock,
    except inside a set-up label, which keeps everything it calls (its blocks, its sends)."""

    def __init__(self, absorbing: frozenset[str]) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self._absorbing = absorbing
        self._stack: list[list[Any]] = []  # [label, started]

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if any(outer[0] in self._absorbing for outer in self._stack):
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if self._stack:
                outer = self._stack[-1]
                self.parts[outer[0]] += now - outer[1]
            self._stack.append([label, now])
            try:
                return fn(*args, **kwargs)
            finally:
                done = time.perf_counter()
                inner = self._stack.pop()
                self.parts[inner[0]] += done - inner[1]
                if self._stack:
                    self._stack[-1][1] = done

        return timed


def breakdown(
    nodes: int, rounds: int, proposers: int, fraction: float, attack: str
) -> dict[str, Any]:
    """One flockd per-proposal run with the main parts of its work timed (a wrapper per
    call, no profiler): where the wall time of a round goes."""
    from flockd.fl.attacks import assign_behaviours
    from flockd.fl.recipe import limit_torch_threads
    from flockd.sim import SimConfig, run_simulation

    limit_torch_threads(1)
    run_simulation(SimConfig(nodes=3, rounds=1, expected_proposers=1))  # imports, caches
    clocks = _Clocks(frozenset(label for *_, label in _BREAKDOWN if label.startswith("set-up")))
    restore: list[tuple[Any, str, Any]] = []
    for module_name, class_name, attr, label in _BREAKDOWN:
        owner: Any = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name, None)
        original = getattr(owner, attr, None) if owner is not None else None
        if original is None:
            continue  # the simulation changed shape: leave that part in "everything else"
        restore.append((owner, attr, original))
        setattr(owner, attr, clocks.wrap(label, original))
    cfg = SimConfig(
        nodes=nodes,
        rounds=rounds,
        expected_proposers=proposers,
        behaviours=assign_behaviours(nodes, fraction, attack, 0),
    )
    try:
        started = time.perf_counter()
        result = run_simulation(cfg, on_round=None)
        total = time.perf_counter() - started
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    parts = {label: clocks.parts.get(label, 0.0) for *_, label in _BREAKDOWN}
    parts["everything else"] = max(0.0, total - sum(parts.values()))
    return {
        "nodes": nodes,
        "rounds": rounds,
        "proposers": proposers,
        "fraction": fraction,
        "attack": attack,
        "wall_seconds": total,
        "transactions": result.transactions,
        "blocks": result.blocks,
        "parts": parts,
    }


def breakdown_table(b: dict[str, Any]) -> str:
    lines = [
        "| part | seconds | share | per round (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    total = b["wall_seconds"]
    for label, seconds in sorted(b["parts"].items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {label} | {seconds:.2f} | {100 * seconds / total:.0f}% | {seconds / b['rounds']:.3f} |"
        )
    lines.append(f"| **whole run** | {total:.2f} | 100% | {total / b['rounds']:.3f} |")
    return "\n".join(lines)


# -- plan --------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Job]:
    def job(system: str, attack: str, fraction: float, seed: int) -> Job:
        return Job(
            system,
            attack,
            fraction,
            seed,
            args.nodes,
            args.rounds,
            args.proposers,
            args.robust_rule,
        )

    jobs = [
        job(system, args.attack, fraction, seed)
        for system in args.systems
        for fraction in args.fractions
        for seed in args.seeds
    ]
    seen = {(j.system, j.attack, j.fraction, j.seed) for j in jobs}
    for attack in args.per_attack:
        for system in PER_ATTACK_SYSTEMS:
            if system not in args.systems:
                continue
            for seed in args.attack_seeds:
                key = (system, attack, args.attack_fraction, seed)
                if key not in seen:
                    seen.add(key)
                    jobs.append(job(system, attack, args.attack_fraction, seed))
    return sorted(jobs, key=lambda j: -j.cost)


def execute(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    """Run every job on a pool of ``workers`` processes, printing progress."""
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    total_cost = sum(j.cost for j in jobs) or 1.0
    done_cost = 0.0
    systems = sorted({j.system for j in jobs})
    if workers <= 1:
        _worker_init(systems)
        for j in jobs:
            records.append(run_job(j))
            done_cost += j.cost
            _progress(records[-1], len(records), len(jobs), started, done_cost / total_cost)
        return records
    context = multiprocessing.get_context("spawn")  # no fork of torch/gRPC state
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_worker_init, initargs=(systems,)
    ) as pool:
        pending: dict[Future[dict[str, Any]], Job] = {pool.submit(run_job, j): j for j in jobs}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                j = pending.pop(future)
                try:
                    records.append(future.result())
                except BaseException as exc:  # noqa: BLE001 - record it, keep the others going
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    print(
                        f"  FAILED {j.system} {j.attack} f={j.fraction} seed={j.seed}: {exc!r}",
                        flush=True,
                    )
                    records.append({**asdict(j), "error": repr(exc)})
                    continue
                done_cost += j.cost
                _progress(records[-1], len(records), len(jobs), started, done_cost / total_cost)
    return records


def _progress(rec: dict[str, Any], n: int, total: int, started: float, share: float) -> None:
    elapsed = time.monotonic() - started
    eta = elapsed / share - elapsed if share > 0 else math.nan
    print(
        f"[{n:3d}/{total}] {rec['system']:<20} {rec['attack']:<22} f={rec['fraction']:<4} "
        f"seed={rec['seed']}  final {rec['final_accuracy']:.4f}  "
        f"{rec['seconds_per_round']:.2f} s/round  ({elapsed / 60:.1f} min, ~{eta / 60:.0f} min left)",
        flush=True,
    )


# -- report ------------------------------------------------------------------------------


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "error" not in r]


def _group(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in _ok(records):
        groups[(r["system"], r["attack"], r["fraction"])].append(r)
    return groups


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def _accuracy_cell(runs: Sequence[dict[str, Any]]) -> str:
    """Final accuracy over seeds; a run whose model diverged (non-finite weights, so the
    loop stopped) counts with the last accuracy it measured, and is flagged."""
    cell = _cell([r["final_accuracy"] for r in runs])
    diverged = [r["diverged_round"] for r in runs if r.get("diverged_round")]
    if diverged:
        cell += f" †{len(diverged)}/{len(runs)} diverged (round {min(diverged)}–{max(diverged)})"
    return cell


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def accuracy_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    fractions = meta["fractions"]
    lines = [
        "| system | " + " | ".join(_pct(f) for f in fractions) + " |",
        "| --- | " + " | ".join("---:" for _ in fractions) + " |",
    ]
    for system in meta["systems"]:
        cells = [_accuracy_cell(groups.get((system, meta["attack"], f), [])) for f in fractions]
        lines.append(f"| {SYSTEMS[system]} | " + " | ".join(cells) + " |")
    published = [
        f"{100 * PUBLISHED_FEDAVG[f]:.1f}" if f in PUBLISHED_FEDAVG else "" for f in fractions
    ]
    lines.append("| *published: FedAvg (FLock paper)* | " + " | ".join(published) + " |")
    flock = [f"> {100 * PUBLISHED_FLOCK_40:.1f}" if f == 0.4 else "" for f in fractions]
    lines.append("| *published: FLock (FLock paper)* | " + " | ".join(flock) + " |")
    return "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def timing_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    marks = sorted({0.0, meta["attack_fraction"]} & set(meta["fractions"]))
    lines = [
        "| system | malicious | final accuracy | s/round | first model (s) | time to 95% (s) | rounds to 95% |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        for f in marks:
            runs = groups.get((system, meta["attack"], f), [])
            if not runs:
                continue
            hit = [r for r in runs if r["seconds_to_target"] is not None]
            to95 = f"{_mean([r['seconds_to_target'] for r in hit]):.1f}" if hit else "never"
            r95 = f"{_mean([r['rounds_to_target'] for r in hit]):.1f}" if hit else "–"
            if hit and len(hit) < len(runs):
                to95 += f" ({len(hit)}/{len(runs)} runs)"
                r95 += f" ({len(hit)}/{len(runs)})"
            lines.append(
                f"| {SYSTEMS[system]} | {_pct(f)} | {_accuracy_cell(runs)} | "
                f"{_mean([r['seconds_per_round'] for r in runs]):.2f} | "
                f"{_mean([r['first_model_seconds'] for r in runs]):.1f} | {to95} | {r95} |"
            )
    return "\n".join(lines)


def defence_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """What the vote did in the flockd systems: malicious and honest proposals accepted."""
    groups = _group(records)
    lines = [
        "| system | malicious | proposals/round | malicious proposals accepted | honest proposals accepted | rounds with nothing accepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        if system not in FLOCKD_SYSTEMS:
            continue
        for f in meta["fractions"]:
            runs = groups.get((system, meta["attack"], f), [])
            if not runs:
                continue
            rows = [row for r in runs for row in r["rounds"]]
            proposals = sum(len(x["proposers"]) for x in rows)
            bad = sum(x["malicious_proposers"] for x in rows)
            bad_in = sum(x["malicious_accepted"] for x in rows)
            good, good_in = proposals - bad, sum(len(x["accepted"]) for x in rows) - bad_in
            empty = sum(1 for x in rows if not x["accepted"])
            lines.append(
                f"| {SYSTEMS[system]} | {_pct(f)} | {proposals / max(len(rows), 1):.1f} | "
                f"{bad_in}/{bad} | {good_in}/{good} | {empty}/{len(rows)} |"
            )
    return "\n".join(lines)


def per_attack_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    f = meta["attack_fraction"]
    systems = [s for s in PER_ATTACK_SYSTEMS if s in meta["systems"]]
    lines = [
        "| attack | " + " | ".join(SYSTEMS[s] for s in systems) + " |",
        "| --- | " + " | ".join("---:" for _ in systems) + " |",
    ]
    for attack in meta["per_attack"]:
        cells = [_accuracy_cell(groups.get((s, attack, f), [])) for s in systems]
        lines.append(f"| `{attack}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(meta: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = _group(records)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    fractions = meta["fractions"]
    for system in meta["systems"]:
        xs, means, lows, highs = [], [], [], []
        for f in fractions:
            values = [r["final_accuracy"] for r in groups.get((system, meta["attack"], f), [])]
            if values:
                m = statistics.fmean(values)
                xs.append(100 * f)
                means.append(100 * m)
                lows.append(100 * (m - min(values)))
                highs.append(100 * (max(values) - m))
        if xs:
            style = "--" if system.startswith("flower") else "-"
            left.errorbar(
                xs, means, yerr=[lows, highs], fmt="o" + style, capsize=3, label=SYSTEMS[system]
            )
    px = sorted(PUBLISHED_FEDAVG)
    left.plot(
        [100 * x for x in px],
        [100 * PUBLISHED_FEDAVG[x] for x in px],
        "kx:",
        ms=9,
        label="published FedAvg (FLock paper)",
    )
    left.plot([40], [100 * PUBLISHED_FLOCK_40], "k^", ms=9, label="published FLock floor at 40%")
    left.set_xlabel("malicious nodes (%)")
    left.set_ylabel("final held-out accuracy (%)")
    left.set_title(
        f"digits-mlp, {meta['nodes']} nodes, {meta['rounds']} rounds, attack {meta['attack']}"
    )
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    f = meta["attack_fraction"]
    for system in meta["systems"]:
        runs = groups.get((system, meta["attack"], f), [])
        if not runs:
            continue
        curve = [
            100 * statistics.fmean(r["rounds"][i]["accuracy"] for r in runs)
            for i in range(min(len(r["rounds"]) for r in runs))
        ]
        style = "--" if system.startswith("flower") else "-"
        right.plot(range(1, len(curve) + 1), curve, style, label=SYSTEMS[system])
    right.axhline(100 * TARGET, color="grey", lw=0.8)
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("round")
    right.set_ylabel("held-out accuracy (%), mean over seeds")
    right.set_title(f"per round at {_pct(f)} malicious")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(meta: dict[str, Any], records: list[dict[str, Any]], png: str) -> str:
    failed = [r for r in records if "error" in r]
    parts = [
        f"Command: `{meta['command']}`  ",
        f"Run: {meta['date']}, {meta['wall_minutes']:.1f} min wall on {meta['machine']} "
        f"({meta['workers']} runs at a time), flwr {meta['flwr_version']}.  ",
        f"Task: `digits-mlp`, {meta['nodes']} nodes, IID split, {meta['rounds']} rounds, "
        f"flockd expecting {meta['proposers']} proposers a round, robust rule "
        f"`{meta['robust_rule']}`, seeds {', '.join(map(str, meta['seeds']))}.",
        "",
        f"![accuracy under attack]({png})",
        "",
        f"**Final held-out accuracy (%) under `{meta['attack']}`**, mean (min–max) over seeds:",
        "",
        accuracy_table(meta, records),
        "",
        f"**Speed**, at 0% and {_pct(meta['attack_fraction'])} malicious (`{meta['attack']}`), "
        "mean over seeds. s/round: wall time between consecutive global models; first model "
        "and time to 95%: wall time from launching the federation (chain deployment and "
        "joins, gRPC server and client connections, data loading) to that model:",
        "",
        timing_table(meta, records),
        "",
        "**What the vote did** (flockd systems, all rounds of all seeds):",
        "",
        defence_table(meta, records),
    ]
    b = meta.get("breakdown")
    if b:
        parts += [
            "",
            f"**Where a flockd round's time goes**: one per-proposal run alone before the grid "
            f"({b['nodes']} nodes, {b['rounds']} rounds, {b['proposers']} expected proposers, "
            f"{_pct(b['fraction'])} `{b['attack']}`; {b['transactions']} transactions in "
            f"{b['blocks']} blocks); each part's own wall time (a part running inside "
            "another counts only for itself):",
            "",
            breakdown_table(b),
        ]
    if meta["per_attack"]:
        parts += [
            "",
            f"**Per attack at {_pct(meta['attack_fraction'])} malicious**, final accuracy (%), "
            f"seeds {', '.join(map(str, meta['attack_seeds']))}:",
            "",
            per_attack_table(meta, records),
        ]
    if failed:
        parts += [
            "",
            f"{len(failed)} runs failed: "
            + "; ".join(
                f"{r['system']} {r['attack']} f={r['fraction']} seed={r['seed']}: {r['error']}"
                for r in failed
            ),
        ]
    return "\n".join(parts) + "\n"


def write_doc(doc: Path, section: str) -> None:
    text = doc.read_text()
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Defence under attack\n\n" + block + "\n"
    doc.write_text(text)


# -- main --------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench attack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--fractions", type=_floats, default=[0, 0.1, 0.2, 0.3, 0.4, 0.45])
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--attack", default="collude", help="flockd.fl.attacks spec (default collude)"
    )
    parser.add_argument("--systems", type=_names, default=list(SYSTEMS))
    parser.add_argument(
        "--proposers", type=int, default=8, help="flockd: expected proposers per round"
    )
    parser.add_argument("--robust-rule", default="trimmed-mean:0.2")
    parser.add_argument(
        "--per-attack",
        type=_names,
        default=list(PER_ATTACK),
        help="attacks of the per-attack table ('none' to skip)",
    )
    parser.add_argument("--attack-fraction", type=float, default=0.4)
    parser.add_argument("--attack-seeds", type=_ints, default=None, help="default: --seeds")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile one flockd run first and split its time by part (default on)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 nodes, 5 rounds, fractions 0,0.4, seed 0, no per-attack table, to a temp dir",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"write the tables into this file between the {BEGIN} markers (default: "
        "docs/benchmarks.md when --out is the default and not --quick)",
    )
    parser.add_argument("--no-doc", action="store_true", help="write no doc")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.rounds, args.fractions, args.seeds = 10, 5, [0.0, 0.4], [0]
        args.per_attack, args.breakdown = [], False
        if args.out == DEFAULT_OUT:  # a quick look never replaces the committed figures
            args.out = Path(tempfile.gettempdir()) / "flockd-attack-quick"
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown} (known: {', '.join(SYSTEMS)})")
    if args.attack_seeds is None:
        args.attack_seeds = args.seeds
    if args.no_doc:
        args.doc = None
    elif args.doc is None and not args.quick and args.out == DEFAULT_OUT:
        args.doc = DEFAULT_DOC
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    flwr_version = "not run"
    if any(s in FLOWER_SYSTEMS for s in args.systems):
        from flockd.bench.flower import flower_available, flower_version

        if not flower_available():
            raise SystemExit("flwr is not installed: run this through scripts/bench (it installs the bench extra)")
        flwr_version = flower_version()
    jobs = plan(args)
    profiled: dict[str, Any] | None = None
    if args.breakdown and any(s in FLOCKD_SYSTEMS for s in args.systems):
        print("profiling one flockd per-proposal run (alone, before the grid)", flush=True)
        profiled = breakdown(
            args.nodes, min(args.rounds, 10), args.proposers, args.attack_fraction, args.attack
        )
        print(breakdown_table(profiled), flush=True)
    print(
        f"attack bench: {len(jobs)} runs on {args.jobs} processes; systems {', '.join(args.systems)}",
        flush=True,
    )
    started = time.monotonic()
    records = execute(jobs, args.jobs)
    meta: dict[str, Any] = {
        "command": "scripts/bench attack" + "".join(" " + shlex.quote(a) for a in argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_minutes": (time.monotonic() - started) / 60,
        "machine": f"{os.cpu_count()}-core {platform.machine()}, load average "
        + " / ".join(f"{x:.1f}" for x in os.getloadavg())
        + " at the end",
        "workers": args.jobs,
        "flwr_version": flwr_version,
        "nodes": args.nodes,
        "rounds": args.rounds,
        "attack": args.attack,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "systems": args.systems,
        "proposers": args.proposers,
        "robust_rule": args.robust_rule,
        "per_attack": args.per_attack,
        "attack_fraction": args.attack_fraction,
        "attack_seeds": args.attack_seeds,
        "breakdown": profiled,
    }
    order = {s: i for i, s in enumerate(SYSTEMS)}
    records.sort(key=lambda r: (order[r["system"]], r["attack"], r["fraction"], r["seed"]))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    png = out / "accuracy.png"
    plot(meta, records, png)
    doc: Path | None = args.doc
    link = os.path.relpath(png, (doc or DEFAULT_DOC).parent)
    section = report(meta, records, link)
    (out / "results.md").write_text(section)
    print()
    print(section)
    if doc is not None:
        write_doc(doc, section)
        print(f"wrote {doc}")
    print(f"wrote {out / 'results.json'}, {png}, {out / 'results.md'}")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
