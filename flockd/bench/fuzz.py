"""`scripts/bench fuzz`: the long fuzzing campaign over every decoder that reads bytes from
a peer or a client (the same targets as tests/test_fuzz_*.py, many more cases).

Each target runs in rounds of hypothesis examples (fresh random seeds each round, no
example database) until its share of the time budget or its case count is used up. A
case that breaks the property (an undocumented exception, an allocation past the input's
bound) is shrunk by hypothesis and printed; a case slower than --hang seconds counts as a
failure too. Exit status 1 when any target failed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from flockd.bench import _fuzz_chain, _fuzz_fl, _fuzz_p2p, _fuzz_rpc
from flockd.bench._fuzz_base import Target, run_target
from flockd.logs import configure_logging

ROUND = 200  # examples per hypothesis run


def all_targets() -> list[Target]:
    return [*_fuzz_p2p.targets(), *_fuzz_fl.targets(), *_fuzz_chain.targets(), *_fuzz_rpc.targets()]


@dataclass
class Tally:
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    seconds: float = 0.0


def _counted(target: Target, tally: Tally, hang: float) -> Target:
    def check(case: Any) -> None:
        start = time.perf_counter()
        try:
            target.check(case)
        finally:
            took = time.perf_counter() - start
            tally.cases += 1
            tally.slowest = max(tally.slowest, took)
            if took > hang:
                tally.failures.append(f"hang: a case took {took:.1f}s: {repr(case)[:300]}")

    return replace(target, check=check)


def campaign(target: Target, *, seconds: float, max_cases: int, hang: float) -> Tally:
    tally = Tally()
    counted = _counted(target, tally, hang)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and tally.cases < max_cases and not tally.failures:
        try:
            run_target(counted, min(ROUND, max_cases - tally.cases), database=False)
        except Exception as exc:  # the property broke: hypothesis re-raises the shrunk case
            tally.failures.append(f"{type(exc).__name__}: {str(exc)[:500]}")
    tally.seconds = time.perf_counter() - start
    return tally


def _print(line: str) -> None:
    print(line, flush=True)  # a long run's progress shows even when stdout is a file


def main(argv: list[str], out: Callable[[str], None] = _print) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench fuzz", description=__doc__)
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run (default 600)")
    parser.add_argument("--max-cases", type=int, default=1_000_000, help="cases per target at most")
    parser.add_argument("--hang", type=float, default=10.0, help="a case slower than this fails (default 10 s)")
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    args = parser.parse_args(argv)
    configure_logging("error")  # the control-socket and chain targets log every case

    targets = all_targets()
    known = {t.name for t in targets}
    unknown = sorted(set(args.targets) - known)
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(sorted(known))}")
    chosen = [t for t in targets if not args.targets or t.name in args.targets]
    share = args.budget / len(chosen)
    out(f"fuzz campaign: {len(chosen)} targets, {share:.0f}s each, at most {args.max_cases} cases each")
    out(f"{'target':<20} {'cases':>9} {'failures':>8} {'seconds':>8} {'slowest ms':>10}")
    total, failed = 0, 0
    for target in chosen:
        tally = campaign(target, seconds=share, max_cases=args.max_cases, hang=args.hang)
        total, failed = total + tally.cases, failed + len(tally.failures)
        out(f"{target.name:<20} {tally.cases:>9} {len(tally.failures):>8} {tally.seconds:>8.1f} {tally.slowest * 1e3:>10.1f}")
        for failure in tally.failures:
            out(f"  FAILED {failure}")
    out(f"{'total':<20} {total:>9} {failed:>8}")
    return 1 if failed else 0
