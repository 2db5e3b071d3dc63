"""`scripts/bench [NAME ...]`: run benchmarks; each lives in flockd/bench/NAME.py with main(argv)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import flockd.bench

# Named explicitly, never part of `all`: long runs (some install flwr), and `replay`, which
# needs a stopped testnet's workdir.
NOT_IN_ALL = frozenset({"attack", "ceiling", "flower", "lm", "replay"})


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(flockd.bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: scripts/bench NAME [args...] | scripts/bench all")
        print("benchmarks:", ", ".join(names), f"(`all` skips {', '.join(sorted(NOT_IN_ALL))})")
        return 0
    wanted = [n for n in names if n not in NOT_IN_ALL] if argv[0] == "all" else [argv[0]]
    rest = argv[1:]
    status = 0
    for name in wanted:
        if name not in names:
            print(f"unknown benchmark {name!r}; known: {', '.join(names)}", file=sys.stderr)
            return 2
        module = importlib.import_module(f"flockd.bench.{name}")
        status |= int(module.main(rest) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
