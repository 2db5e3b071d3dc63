"""Compile contracts/*.vy into the checked-in artifacts contracts/build/*.json.

    python -m flockd.chain.client.build_contracts           # rebuild every artifact
    python -m flockd.chain.client.build_contracts --check   # exit 1 if any artifact is stale

Needs the vyper compiler (a test dependency); the daemon itself only reads artifacts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flockd.chain.client.artifacts import (
    COMPILER,
    CONTRACT_NAMES,
    REPO_ROOT,
    artifact_path,
    source_path,
    source_sha256,
    stale_reason,
)


def compile_contract(name: str) -> dict[str, Any]:
    """The artifact document of contract `name`, freshly compiled."""
    import vyper  # imported here: the daemon never needs the compiler

    if f"vyper {vyper.__version__}" != COMPILER:
        raise SystemExit(f"need {COMPILER}, found vyper {vyper.__version__}")
    path = source_path(name)
    out = vyper.compile_code(
        path.read_text(),
        output_formats=["abi", "bytecode", "bytecode_runtime"],
        contract_path=str(path.relative_to(REPO_ROOT)),
    )
    return {
        "contract_name": name,
        "source_path": str(path.relative_to(REPO_ROOT)),
        "source_sha256": source_sha256(name),
        "compiler": COMPILER,
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": out["bytecode_runtime"],
    }


def write_artifact(name: str) -> None:
    path = artifact_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(compile_contract(name), indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flockd.chain.client.build_contracts")
    parser.add_argument("--check", action="store_true", help="only report stale artifacts")
    args = parser.parse_args(argv)
    if args.check:
        reasons = [r for r in map(stale_reason, CONTRACT_NAMES) if r is not None]
        for reason in reasons:
            print(reason, file=sys.stderr)
        return 1 if reasons else 0
    for name in CONTRACT_NAMES:
        write_artifact(name)
        print(f"wrote {artifact_path(name).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
