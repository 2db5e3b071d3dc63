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
vote commit/reveal, finalise, model attestation). They expect 16 proposers a round
(``--proposers``, the registry's MAX_PROPOSALS; sortition is linear in stake, so each of
20 equal nodes is drawn at 0.8): the baselines train every node every round, and on a
skewed split each node a round leaves out costs accuracy whatever the vote
(docs/learning.md, "Sixteen expected proposers", "Linear sortition").

Malicious nodes are `flockd.fl.attacks.assign_behaviours(nodes, fraction, attack, seed)`:
the same nodes for every system at a given seed. Every system splits the data by
``--partition`` (iid, dirichlet:ALPHA; each partition gets its own tables) the same way.
Cells are means over seeds (``--seeds 0-7``) with 95% confidence intervals (Student t,
`_attack_stats`); the flockd systems also record the malicious nodes' stake share, from
the registry, at the start and after every round (``--stake-share``: issue 10's preset).
Writes ``results.json`` (every run, every round), one ``accuracy*.png`` per partition and
``results.md`` under ``--out`` (docs/bench/attack), and the tables, with the command,
date and commit, into docs/benchmarks.md between the attack-bench markers
(``--doc``/``--no-doc``; ``--stake-share`` between its own markers).

This module plans the grid and runs it on a process pool; `_attack_systems` runs one
federation of any system, `_attack_breakdown` times one flockd run by part and
`_attack_report` writes the tables, plot, JSON and doc section.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flockd.bench._attack_breakdown import breakdown, breakdown_table
from flockd.bench._attack_merge import MergeError, merge_results, sort_records
from flockd.bench._attack_report import (
    BEGIN,
    DEFAULT_DOC,
    DEFAULT_OUT,
    END,
    STAKE_BEGIN,
    STAKE_END,
    write_doc,
    write_results,
)
from flockd.bench._attack_systems import (
    FIXED_SCORING,
    FLOCKD_SYSTEMS,
    FLOWER_SYSTEMS,
    PER_ATTACK_SYSTEMS,
    SYSTEMS,
    Job,
    run_job,
    worker_init,
)
from flockd.fl.vote_scoring import DEFAULT_ROOT_ROWS, DEFAULT_VOTE_SCORING, ROOT_SCORINGS

__all__ = [
    "BEGIN",
    "END",
    "STAKE_BEGIN",
    "STAKE_END",
    "Job",
    "MergeError",
    "execute",
    "git_commit",
    "main",
    "merge_results",
    "parse_args",
    "plan",
    "write_doc",
]


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
# `--stake-share`: issue 10's measurement, the cartel's stake share over 50 rounds at 30%
# `collude` with the default vote.
STAKE_SHARE_PRESET: dict[str, Any] = {
    "nodes": 20,
    "rounds": 50,
    "fractions": [0.3],
    "attack": "collude",
    "systems": ["flockd-per-proposal"],
    "seeds": list(range(8)),
    "per_attack": [],
    "breakdown": False,
}


# -- plan --------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Job]:
    """Every (system, partition, fraction, seed) under ``--attack``, then the per-attack
    runs on the first partition; each cell once, the slow runs first."""

    def job(system: str, attack: str, fraction: float, seed: int, partition: str) -> Job:
        return Job(
            system,
            attack,
            fraction,
            seed,
            args.nodes,
            args.rounds,
            args.proposers,
            args.robust_rule,
            partition,
            FIXED_SCORING.get(system, args.vote_scoring),
            args.creator_steps if system in FLOCKD_SYSTEMS else 0,
            args.root_rows if FIXED_SCORING.get(system, args.vote_scoring) in ROOT_SCORINGS else 0,
        )

    jobs = [
        job(system, args.attack, fraction, seed, partition)
        for partition in args.partition
        for system in args.systems
        for fraction in args.fractions
        for seed in args.seeds
    ]
    seen = {(j.system, j.attack, j.fraction, j.seed, j.partition) for j in jobs}
    first = args.partition[0]
    for attack in args.per_attack:
        for system in PER_ATTACK_SYSTEMS:
            if system not in args.systems:
                continue
            for seed in args.attack_seeds:
                key = (system, attack, args.attack_fraction, seed, first)
                if key not in seen:
                    seen.add(key)
                    jobs.append(job(system, attack, args.attack_fraction, seed, first))
    return sorted(jobs, key=lambda j: -j.cost)


def execute(jobs: Sequence[Job], workers: int) -> list[dict[str, Any]]:
    """Run every job on a pool of ``workers`` processes, printing progress."""
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    total_cost = sum(j.cost for j in jobs) or 1.0
    done_cost = 0.0
    systems = sorted({j.system for j in jobs})
    if workers <= 1:
        worker_init(systems)
        for j in jobs:
            records.append(run_job(j))
            done_cost += j.cost
            _progress(records[-1], len(records), len(jobs), started, done_cost / total_cost)
        return records
    context = multiprocessing.get_context("spawn")  # no fork of torch/gRPC state
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=worker_init, initargs=(systems,)
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
                        f"  FAILED {j.system} {j.attack} {j.partition} f={j.fraction} "
                        f"seed={j.seed}: {exc!r}",
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
        f"[{n:3d}/{total}] {rec['system']:<20} {rec['attack']:<22} {rec['partition']:<14} "
        f"f={rec['fraction']:<4} "
        f"seed={rec['seed']}  final {rec['final_accuracy']:.4f}  "
        f"{rec['seconds_per_round']:.2f} s/round  ({elapsed / 60:.1f} min, ~{eta / 60:.0f} min left)",
        flush=True,
    )


# -- main --------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    """``0,1,2``, ``0-7`` or a mix (``0-3,8``), in order, each once."""
    out: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if dash and first:
            low, high = int(first), int(last)
            if high < low:
                raise argparse.ArgumentTypeError(f"empty range {part!r}")
            values = range(low, high + 1)
        else:
            values = range(int(part), int(part) + 1)
        out.extend(v for v in values if v not in out)
    if not out:
        raise argparse.ArgumentTypeError("no seeds")
    return out


def _partitions(text: str) -> list[str]:
    from flockd.fl.data import DataError, Partition

    names = _names(text)
    for name in names:
        try:
            Partition.parse(name)
        except DataError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError("no partition")
    return list(dict.fromkeys(names))


def _vote_scoring(text: str) -> str:
    from flockd.fl.vote_scoring import parse_vote_scoring

    try:
        return parse_vote_scoring(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench attack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--fractions", type=_floats, default=[0, 0.1, 0.2, 0.3, 0.4, 0.45])
    parser.add_argument(
        "--seeds", type=_ints, default=list(range(8)), help="e.g. 0-7 or 0,1,2 (default 0-7)"
    )
    parser.add_argument(
        "--partition",
        type=_partitions,
        default=["iid"],
        help="data splits, each with its own tables: iid,dirichlet:1.0,dirichlet:0.5,...",
    )
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--attack", default="collude", help="flockd.fl.attacks spec (default collude)"
    )
    parser.add_argument("--systems", type=_names, default=None, help="default: all")
    parser.add_argument(
        "--proposers", type=int, default=16, help="flockd: expected proposers per round (16, a round's cap)"
    )
    parser.add_argument("--robust-rule", default="trimmed-mean:0.2")
    parser.add_argument(
        "--vote-scoring",
        type=_vote_scoring,
        default=DEFAULT_VOTE_SCORING,
        help="flockd systems: how honest voters score a proposal (flockd.fl.score)",
    )
    parser.add_argument(
        "--creator-steps",
        type=int,
        default=0,
        help="flockd systems: round 0 starts from the creator's model (node 0's local updates on its "
        "split), not a random one (0)",
    )
    parser.add_argument(
        "--root-rows",
        type=int,
        default=DEFAULT_ROOT_ROWS,
        help=f"flockd systems on a root vote: rows of the task's public root set ({DEFAULT_ROOT_ROWS})",
    )
    parser.add_argument(
        "--per-attack",
        type=_names,
        default=None,
        help="attacks of the per-attack table ('none' to skip)",
    )
    parser.add_argument("--attack-fraction", type=float, default=0.4)
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="run nothing: one set of tables from these runs' results.json (batches of one grid)",
    )
    parser.add_argument(
        "--attack-seeds", type=_ints, default=None, help="per-attack table (default: 0-2)"
    )
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
    parser.add_argument(
        "--stake-share",
        action="store_true",
        help="the cartel's stake share: 20 nodes, 50 rounds, 30%% collude, flockd-per-proposal, "
        "seeds 0-7 (options given override these), "
        f"into docs/benchmarks.md between the {STAKE_BEGIN} markers",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    parser.add_argument(
        "--doc",
        type=Path,
        default=None,
        help=f"write the tables into this file between the {BEGIN} markers (default: "
        "docs/benchmarks.md when --out is the default and not --quick)",
    )
    parser.add_argument("--no-doc", action="store_true", help="write no doc")
    parser.add_argument(
        "--section",
        default=None,
        help="write between the <!-- SECTION:begin/end --> markers of --doc instead "
        "(e.g. attack-partitions, for the partition tables)",
    )
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    args = parser.parse_args(argv)
    args.markers = (BEGIN, END)
    default_out = DEFAULT_OUT
    if args.quick:
        preset: dict[str, Any] = {
            "nodes": 10, "rounds": 5, "fractions": [0.0, 0.4], "seeds": [0],
            "per_attack": [], "breakdown": False,
        }  # fmt: skip
        # A quick look never replaces the committed figures.
        default_out = Path(tempfile.gettempdir()) / "flockd-attack-quick"
    elif args.stake_share:
        preset = dict(STAKE_SHARE_PRESET)
        default_out = DEFAULT_OUT / "stake-share"
        args.markers = (STAKE_BEGIN, STAKE_END)
    else:
        preset = {}
    for name, value in preset.items():
        if "--" + name.replace("_", "-") not in given:
            setattr(args, name, value)
    if args.systems is None:
        args.systems = list(SYSTEMS)
    if args.per_attack is None:
        args.per_attack = list(PER_ATTACK)
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown} (known: {', '.join(SYSTEMS)})")
    if args.attack_seeds is None:
        args.attack_seeds = [s for s in args.seeds if s < 3] or args.seeds[:3]
    if args.out is None:
        args.out = default_out
    if args.section:
        args.markers = (f"<!-- {args.section}:begin -->", f"<!-- {args.section}:end -->")
    if args.no_doc:
        args.doc = None
    elif args.doc is None and not args.quick and args.out == default_out:
        args.doc = DEFAULT_DOC
    return args


def git_commit() -> str:
    """The tree a run measured: short commit, "+dirty" if anything tracked was changed."""
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(
            ["git", *cmd], cwd=DEFAULT_DOC.parent, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.merge:
        try:
            write_results(*merge_results(args.merge), args.out, args.doc, args.markers)
        except (MergeError, OSError, KeyError, ValueError) as exc:
            raise SystemExit(f"scripts/bench attack --merge: {exc}") from exc
        return 0
    flwr_version = "not run"
    if any(s in FLOWER_SYSTEMS for s in args.systems):
        from flockd.bench.flower import flower_available, flower_version

        if not flower_available():
            raise SystemExit(
                "flwr is not installed: run this through scripts/bench (it installs the bench extra)"
            )
        flwr_version = flower_version()
    commit = git_commit()  # before this run writes its own results into the tree
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
        "commit": commit,
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
        "partitions": args.partition,
        "systems": args.systems,
        "proposers": args.proposers,
        "robust_rule": args.robust_rule,
        "vote_scoring": args.vote_scoring,
        "creator_steps": args.creator_steps,
        "root_rows": args.root_rows if args.vote_scoring in ROOT_SCORINGS else 0,
        "per_attack": args.per_attack,
        "attack_fraction": args.attack_fraction,
        "attack_seeds": args.attack_seeds,
        "breakdown": profiled,
    }
    sort_records(records, args.partition)
    write_results(meta, records, args.out, args.doc, args.markers)
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
