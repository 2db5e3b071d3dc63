"""flockctl: call one control-socket method and print its result.

    flockctl [--datadir DIR] [--json] METHOD [key=value ... | value ...]

Values are read as JSON when they parse (42, true, null, [1,2], "quoted"), else taken as
strings, so `flockctl net_connect /ip4/127.0.0.1/tcp/4001/p2p/16Uiu2...` needs no quoting.
Exit status: 0 success, 1 the daemon answered with an error, 2 usage error or no daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from flockd.datadir import IPC_SOCKET
from flockd.rpc.client import IPCClient
from flockd.rpc.errors import RPCError

EXIT_OK, EXIT_ERROR_REPLY, EXIT_USAGE = 0, 1, 2
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# 25e18 would become a float and lose digits: amounts stay text, the daemon reads them exactly
_EXPONENT_AMOUNT = re.compile(r"[0-9]+e[0-9]+")
_BASE_UNITS = 10**18  # wei per ether, base units per stake token
_AMOUNT_FIELDS = frozenset({"gas_wei", "stake", "amount", "value", "free", "locked", "delegated", "pending",
                            "pending_rewards", "claimable", "claimed", "collected", "released", "withdrawn"})
_WHOLE_UNIT_METHODS = ("account_", "stake_", "rewards_")  # results whose amounts are tokens or ETH


class UsageError(Exception):
    pass


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage already
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        params = parse_params(args.params)
    except UsageError as exc:
        print(f"flockctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = args.datadir / IPC_SOCKET
    try:
        with IPCClient(path, timeout=args.timeout) as client:
            result = client.call(args.method, params)
    except RPCError as exc:
        print(f"flockctl: error {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except OSError as exc:  # no daemon, refused, timed out, broken reply
        print(f"flockctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if args.method.startswith(_WHOLE_UNIT_METHODS) and isinstance(result, dict):
            result = with_whole_units(result)
        console = Console(soft_wrap=True, highlight=False)
        if args.method.startswith(("arena_", "stake_arena_")) and isinstance(result, dict):  # lists as tables
            render_sections(result, console)
        else:
            render(result, console)
    return EXIT_OK


def parse_params(words: list[str]) -> list[Any] | dict[str, Any] | None:
    """`key=value` words make params by name, bare values params by position; not both."""
    if not words:
        return None
    named: dict[str, Any] = {}
    positional: list[Any] = []
    for word in words:
        key, sep, value = word.partition("=")
        if sep and _KEY.fullmatch(key):
            if key in named:
                raise UsageError(f"param {key!r} given twice")
            named[key] = _value(value)
        else:
            positional.append(_value(word))
    if named and positional:
        raise UsageError("give params either all as key=value or all by position")
    return named or positional


def _value(text: str) -> Any:
    if _EXPONENT_AMOUNT.fullmatch(text):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def with_whole_units(result: dict[str, Any]) -> dict[str, Any]:
    """Amounts in base units also as whole ETH/tokens, for people: 1500000000000000000 (1.5)."""
    out = dict(result)
    for key in _AMOUNT_FIELDS & out.keys():
        value = out[key]
        if type(value) is int:
            whole, frac = divmod(value, _BASE_UNITS)
            decimals = f"{frac:018d}".rstrip("0")
            out[key] = f"{value} ({whole:,}{'.' + decimals if decimals else ''})"
    return out


def render(result: Any, console: Console) -> None:
    """Lists of objects as a table, an object as `key: value` lines, anything else as is."""
    if isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        columns = list(dict.fromkeys(k for row in result for k in row))
        table = Table()
        for column in columns:
            table.add_column(column, overflow="fold")  # fold, never cut: people copy ids from here
        for row in result:
            table.add_row(*(Text(_cell(row.get(c))) for c in columns))  # Text: no markup from data
        console.print(table)
    elif isinstance(result, dict):
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            console.print(f"{key:<{width}}  {_cell(value)}", markup=False)
    elif isinstance(result, list):
        for item in result:
            console.print(_cell(item), markup=False)
    else:
        console.print(_cell(result), markup=False)


def render_sections(result: dict[str, Any], console: Console) -> None:
    """Plain fields as `key: value` lines, then each list of objects (a leaderboard, the
    validators) as a table under its name."""
    tables = {k: v for k, v in result.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
    render({k: v for k, v in result.items() if k not in tables}, console)
    for name, rows in tables.items():
        console.print(f"\n{name}", markup=False)
        render(rows, console)


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value)


def _parser() -> argparse.ArgumentParser:
    default = Path(os.environ.get("FLOCKD_DATADIR", "~/.flockd")).expanduser()
    parser = argparse.ArgumentParser(
        prog="flockctl",
        description="Call a method on a running flockd (try: flockctl rpc_methods).",
    )
    parser.add_argument("--datadir", type=Path, default=default, help=f"daemon data directory (default {default})")
    parser.add_argument("--json", action="store_true", help="print the raw result as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply (default 60)")
    parser.add_argument("method", metavar="METHOD",
                        help="e.g. node_info, net_peers, arena_status, stake_arena_delegate, rewards_claim")
    parser.add_argument("params", metavar="PARAM", nargs="*", help="key=value or value (JSON if it parses)")
    return parser
