"""Command lines: `flockd init|run|testnet` and `flockctl`. Thin: parse, call, report."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flockd import __version__

if TYPE_CHECKING:
    from flockd.chain.node.genesis import Genesis

DEFAULT_DATADIR = Path(os.environ.get("FLOCKD_DATADIR", "~/.flockd")).expanduser()


class CLIError(Exception):
    """A one-line message for the user; the command exits 1."""


def flockd_main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"flockd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def flockctl_main(argv: list[str] | None = None) -> int:
    from flockd.ctl import main

    return main(sys.argv[1:] if argv is None else argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flockd", description="Peer-to-peer federated learning daemon.")
    parser.add_argument("--version", action="version", version=f"flockd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create keys and a config in a new data directory")
    _datadir_args(init)
    init.add_argument("--light-kdf", action="store_true", help="fast, weaker key encryption (testnets)")
    init.add_argument("--listen", action="append", help="libp2p listen multiaddr (repeatable)")
    init.add_argument("--bootstrap", action="append", help="bootstrap peer multiaddr (repeatable)")
    init.add_argument("--network", help="network name")
    init.add_argument("--genesis", type=Path, help="join the network of this genesis.json (default: a chain of its own)")
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    _datadir_args(run)
    run.add_argument("--listen", action="append", help="override p2p.listen (repeatable)")
    run.add_argument("--bootstrap", action="append", help="override p2p.bootstrap (repeatable)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    run.add_argument("--chain-http", type=int, metavar="PORT", help="serve chain JSON-RPC on 127.0.0.1:PORT")
    run.add_argument("--chain-rpc", metavar="URL", help="use an external EVM node instead of the embedded chain")
    run.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT")
    run.add_argument("--attack", metavar="SPEC", help="override attack.behaviour: make this node malicious (research)")
    run.set_defaults(func=_cmd_run)

    deploy = sub.add_parser("deploy", help="deploy the contracts on an external EVM node; point config.toml at them")
    _datadir_args(deploy)
    deploy.add_argument("--chain-rpc", required=True, metavar="URL", help="the node's JSON-RPC (http/https)")
    deploy.add_argument("--holder", action="append", default=[], metavar="ADDRESS=AMOUNT",
                        help="mint AMOUNT stake tokens (whole tokens) to ADDRESS (repeatable; default: 10^6 to this node)")
    deploy.set_defaults(func=_cmd_deploy)

    genesis = sub.add_parser(
        "genesis", help="write a network's genesis.json from its parties' addresses (see docs/network.md)"
    )
    genesis.add_argument("--from", dest="parties", type=Path, metavar="FILE",
                         help="parties file (TOML: chain_id, block_period, authorities, [gas], [stake]); flags add to it")
    genesis.add_argument("--authority", action="append", default=[], metavar="ADDRESS",
                         help="a sealer, in turn order (repeatable; at least one)")
    genesis.add_argument("--gas", action="append", default=[], metavar="ADDRESS=WEI",
                         help="gas money for ADDRESS in wei, e.g. 1e24 (repeatable)")
    genesis.add_argument("--stake", action="append", default=[], metavar="ADDRESS=AMOUNT",
                         help="stake tokens minted to ADDRESS in base units (10^-18 token), e.g. 1e24 (repeatable)")
    genesis.add_argument("--chain-id", type=int, help="the chain id wallets sign for (default 7357)")
    genesis.add_argument("--block-period", type=int, help="seconds per block (default 1)")
    genesis.add_argument("--timestamp", type=int, help="genesis time, unix seconds (default: now)")
    genesis.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write it (never overwritten)")
    genesis.set_defaults(func=_cmd_genesis)

    from flockd.lm.cli import add_lm_parser

    add_lm_parser(sub)

    from flockd.serve.cli import add_serve_parser

    add_serve_parser(sub)

    testnet = sub.add_parser("testnet", help="run a local multi-node network (see scripts/testnet)", add_help=False)
    testnet.add_argument("rest", nargs=argparse.REMAINDER)
    testnet.set_defaults(func=_cmd_testnet)
    return parser


def _datadir_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datadir", type=Path, default=DEFAULT_DATADIR, help=f"data directory (default {DEFAULT_DATADIR})")
    p.add_argument("--password-file", type=Path, help="file holding the key password (else $FLOCKD_PASSWORD or a prompt)")


def _read_password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_file is not None:
        try:
            return args.password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise CLIError(f"cannot read password file: {exc.strerror}: {args.password_file}") from None
    if "FLOCKD_PASSWORD" in os.environ:
        return os.environ["FLOCKD_PASSWORD"]
    if not sys.stdin.isatty():
        raise CLIError("no password: use --password-file or set FLOCKD_PASSWORD")
    password = getpass.getpass("key password: ")
    if confirm and getpass.getpass("repeat password: ") != password:
        raise CLIError("passwords do not match")
    return password


def _cmd_init(args: argparse.Namespace) -> int:
    from flockd.chain.node.genesis import Genesis, GenesisError
    from flockd.config import ConfigError
    from flockd.datadir import init_datadir, initial_config
    from flockd.identity.keystore import NODE_KEYSTORE, IdentityError

    try:
        config_text = initial_config(listen=args.listen, bootstrap=args.bootstrap, network=args.network)
        genesis = Genesis.load(args.genesis) if args.genesis else None
    except (ConfigError, GenesisError, OSError) as exc:
        raise CLIError(str(exc)) from None
    if genesis is not None and (args.datadir / NODE_KEYSTORE).exists():
        return _join_network(args, genesis)
    password = _read_password(args, confirm=True)
    if not password:
        raise CLIError("refusing an empty password")
    try:
        identity = init_datadir(args.datadir, password, config_text, light_kdf=args.light_kdf, genesis=genesis)
    except IdentityError as exc:
        raise CLIError(str(exc)) from None
    print(f"datadir   {args.datadir}")
    print(f"address   {identity.address}")
    print(f"peer id   {identity.peer_id}")
    print(f"vrf key   {identity.vrf_public_key.hex()}")
    return 0


def _cmd_genesis(args: argparse.Namespace) -> int:
    import time

    from flockd.chain.node.genesis import GenesisError
    from flockd.chain.node.network import LOCAL_CHAIN_ID, parties_genesis, read_parties
    from flockd.chain.node.poa import genesis_hash

    def pairs(flag: str, specs: list[str]) -> list[tuple[object, object]]:
        out: list[tuple[object, object]] = []
        for spec in specs:
            address, sep, amount = spec.partition("=")
            if not sep:
                raise CLIError(f"--{flag} {spec!r}: expected ADDRESS=AMOUNT")
            out.append((address, amount))
        return out

    try:
        base = read_parties(args.parties) if args.parties else {}
        genesis = parties_genesis(
            authorities=[*base.get("authorities", []), *args.authority],
            gas=[*base.get("gas", {}).items(), *pairs("gas", args.gas)],
            stake=[*base.get("stake", {}).items(), *pairs("stake", args.stake)],
            chain_id=_first(args.chain_id, base.get("chain_id"), LOCAL_CHAIN_ID),
            block_period=_first(args.block_period, base.get("block_period"), 1),
            timestamp=_first(args.timestamp, base.get("timestamp"), int(time.time())),
        )
        genesis.write(args.out)
    except GenesisError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"genesis      {args.out}")
    print(f"hash         0x{genesis_hash(genesis).hex()}")
    print(f"chain id     {genesis.chain_id}")
    print(f"authorities  {len(genesis.authorities)}")
    print("compare the hash with every party out of band; each then runs: flockd init --genesis FILE")
    return 0


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _join_network(args: argparse.Namespace, genesis: Genesis) -> int:
    """`flockd init --genesis` on a datadir that has its keys already (they went into the
    network's genesis): only the chain side changes; keys and config stay."""
    from flockd.chain.node.network import install_genesis
    from flockd.chain.node.poa import genesis_hash

    if args.listen or args.bootstrap or args.network:
        raise CLIError("config.toml exists: edit it, or pass --listen/--bootstrap to flockd run")
    try:
        install_genesis(args.datadir, genesis, replace=True)
    except FileExistsError as exc:
        raise CLIError(f"{exc}; start from a fresh datadir to join another network") from None
    print(f"datadir   {args.datadir}")
    print(f"genesis   0x{genesis_hash(genesis).hex()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from flockd.config import ConfigError, load_config
    from flockd.datadir import DatadirLock, DatadirLockedError
    from flockd.logs import configure_logging

    datadir: Path = args.datadir
    try:
        config = load_config(datadir).with_overrides(
            node={"log_level": args.log_level, "log_json": args.log_json},
            p2p={"listen": args.listen, "bootstrap": args.bootstrap},
            chain={"http_port": args.chain_http, "rpc_url": args.chain_rpc},
            attack={"behaviour": args.attack},
            metrics={"port": args.metrics_port},
        )
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    lock = DatadirLock(datadir)
    try:
        lock.acquire()
    except DatadirLockedError as exc:
        raise CLIError(str(exc)) from None
    try:
        password = _read_password(args, confirm=False)
        configure_logging(config.node.log_level, json=config.node.log_json)
        from flockd.node import STOP_GRACE, Node

        # The keys are unlocked inside the node, behind its control socket: a wrong
        # password ends it with start_error.
        node = Node(config, datadir, password)
        trio.run(partial(node.run, stop_grace=STOP_GRACE))
        if node.start_error is not None:
            raise CLIError(node.start_error)
    finally:
        lock.release()
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    import trio
    from eth_account import Account
    from eth_utils import is_address, to_canonical_address, to_checksum_address

    from flockd.chain.client.arena import deploy_arena
    from flockd.chain.client.backends import ChainError, HttpBackend
    from flockd.chain.client.contract import ContractClient
    from flockd.chain.client.market import deploy_market
    from flockd.chain.client.registry import deploy
    from flockd.config import ConfigError, load_config
    from flockd.datadir import record_deployment
    from flockd.identity.keystore import IdentityError, load_identity

    try:
        load_config(args.datadir).with_overrides(chain=dict.fromkeys(("rpc_url", "registry", "token", "arena", "market"), ""))
        identity = load_identity(args.datadir, _read_password(args, confirm=False))
    except (ConfigError, IdentityError) as exc:
        raise CLIError(str(exc)) from None
    holders: dict[bytes, int] = {}
    for spec in args.holder or [f"{identity.address}=1000000"]:
        address, _, amount = spec.partition("=")
        if not is_address(address) or not amount.isdigit():
            raise CLIError(f"--holder {spec!r}: expected ADDRESS=WHOLE_TOKENS")
        holders[bytes(to_canonical_address(address))] = int(amount) * 10**18

    async def run() -> dict[str, bytes]:
        async with HttpBackend(args.chain_rpc) as backend:
            client = ContractClient(backend, Account.from_key(identity.node_secret))
            done = await deploy(client, holders)
            arena = await deploy_arena(client, done.token, done.verifier)
            market = await deploy_market(client, done.registry, arena)
            return {"token": done.token, "verifier": done.verifier, "registry": done.registry,
                    "arena": arena, "market": market}

    try:
        deployed = {name: to_checksum_address(address) for name, address in trio.run(run).items()}
    except (ChainError, ValueError) as exc:
        raise CLIError(f"deploy failed: {exc}") from None
    record_deployment(args.datadir, args.chain_rpc, deployed["registry"], deployed["token"],
                      arena=deployed["arena"], market=deployed["market"])
    for name, address in deployed.items():
        print(f"{name:<9} {address}")
    print(f"config    {args.datadir / 'config.toml'} now uses them ([chain] rpc_url, registry, token, arena, market)")
    return 0


def _cmd_testnet(args: argparse.Namespace) -> int:
    from flockd.testnet import main

    return main(args.rest)


if __name__ == "__main__":
    sys.exit(flockd_main())
