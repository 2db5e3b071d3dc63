"""`flockd lm ...`: the local store of base models (check, import, list)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_lm_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lm = sub.add_parser("lm", help="language-model bases: check a directory, import it into the local store")
    commands = lm.add_subparsers(dest="lm_command", required=True)
    check = commands.add_parser("check-base", help="print a base directory's hash, or why a node would refuse it")
    check.add_argument("path", type=Path)
    check.set_defaults(func=_cmd_check_base)
    imported = commands.add_parser("import-base", help="check a base directory and copy it into the store under its hash")
    imported.add_argument("path", type=Path)
    imported.set_defaults(func=_cmd_import_base)
    build = commands.add_parser("build-base", help="train a tokenizer and a small Llama on the stdlib docs; store it (cached)")
    defaults = _build_defaults()
    for name, value in defaults.items():
        build.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, metavar=type(value).__name__.upper())
    build.set_defaults(func=_cmd_build_base)
    listing = commands.add_parser("list-bases", help="the bases in the store ($FLOCKD_LM_BASES)")
    listing.set_defaults(func=_cmd_list_bases)


def _build_defaults() -> dict[str, int | float]:
    from dataclasses import asdict

    from flockd.lm.build import BaseBuild

    return asdict(BaseBuild())


def _cmd_build_base(args: argparse.Namespace) -> int:
    import time

    from flockd.cli import CLIError
    from flockd.lm.base import BaseModelError
    from flockd.lm.build import BaseBuild, build_base

    started = time.monotonic()
    try:
        built = build_base(BaseBuild(**{name: getattr(args, name) for name in _build_defaults()}))
    except (BaseModelError, OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"base_hash  0x{built.base_hash.hex()}\npath       {built.path}\nparameters {built.parameters:,}")
    if built.cached:
        print("cached     (built before with these parameters and versions)")
    else:
        print(f"held-out   {built.held_out_bpc:.3f} bits per character\nseconds    {time.monotonic() - started:.0f}")
    return 0


def _cmd_check_base(args: argparse.Namespace) -> int:
    from flockd.cli import CLIError
    from flockd.lm.base import BaseModelError, check_base_dir

    try:
        print("0x" + check_base_dir(args.path).hex())
    except (BaseModelError, OSError) as exc:
        raise CLIError(str(exc)) from None
    return 0


def _cmd_import_base(args: argparse.Namespace) -> int:
    from flockd.cli import CLIError
    from flockd.lm.base import BaseModelError, import_base

    try:
        digest, path = import_base(args.path)
    except (BaseModelError, OSError) as exc:
        raise CLIError(str(exc)) from None
    print(f"base_hash 0x{digest.hex()}\npath      {path}")
    return 0


def _cmd_list_bases(args: argparse.Namespace) -> int:
    from flockd.lm.base import bases_dir

    root = bases_dir()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir() and not entry.name.startswith("."):
            print(f"0x{entry.name}  {entry}")
    return 0
