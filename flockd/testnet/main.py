"""Start N daemons, wait for one connected mesh, show it, stop them (or leave them up)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flockd.testnet.cluster import Cluster, ClusterError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/testnet", description="Run a local flockd network on 127.0.0.1.")
    p.add_argument("--nodes", type=int, default=4, help="number of daemons (default 4)")
    p.add_argument("--workdir", type=Path, default=Path("testnet-work"), help="where datadirs go (default ./testnet-work)")
    p.add_argument("--fresh", action="store_true", help="delete the workdir first")
    p.add_argument("--keep-running", action="store_true", help="leave the daemons up and print how to reach them")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the mesh")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 64:
        p.error("--nodes must be between 1 and 64")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 200))
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    cluster = Cluster(args.workdir.resolve(), args.nodes)
    started = time.monotonic()
    try:
        console.print(f"[bold]initialising {args.nodes} nodes[/] under {cluster.workdir}")
        cluster.init()
        cluster.start(detach=args.keep_running)
        console.print("daemons up; waiting for a full mesh")
        cluster.wait_full_mesh(args.timeout)
        console.print(peer_table(cluster))
        console.print(f"full mesh of {args.nodes} nodes in {time.monotonic() - started:.1f}s")
        if args.keep_running:
            print_reach(console, cluster)
            return 0
    except KeyboardInterrupt:
        console.print("interrupted: stopping the daemons")
        cluster.stop()
        return 130
    except ClusterError as exc:
        console.print(f"[red]testnet failed:[/] {exc}")
        cluster.stop()
        return 1
    codes = cluster.stop()
    bad = [f"node{i}={c}" for i, c in enumerate(codes) if c != 0]
    if bad:
        console.print(f"[red]unclean exits:[/] {', '.join(bad)}")
        return 1
    console.print("all daemons stopped cleanly")
    return 0


def peer_table(cluster: Cluster) -> Table:
    table = Table(title="flockd testnet")
    for col in ("node", "address", "peer id", "listen", "peers"):
        table.add_column(col)
    for d in cluster.daemons:
        info = d.call("node_info")
        peers = d.call("net_peers")
        table.add_row(
            f"node{d.index}", d.address, d.peer_id, ", ".join(info["listen_addrs"]), str(len(peers))
        )
    return table


def print_reach(console: Console, cluster: Cluster) -> None:
    console.print("\nthe daemons keep running; reach each with:")
    for d in cluster.daemons:
        console.print(f"  flockctl --datadir {d.datadir} node_info")
    console.print("stop them with:")
    stops = " ; ".join(f"flockctl --datadir {d.datadir} node_stop" for d in cluster.daemons)
    console.print(f"  {stops}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
