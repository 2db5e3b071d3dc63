"""Start N daemons, wait for one connected mesh, run a learning task to its end and report
on it, then stop them (or leave them up)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flockd.fl.attacks import assign_behaviours, describe, parse_behaviour
from flockd.testnet.cluster import Cluster, ClusterError, agree_at_least, heads
from flockd.testnet.progress import progress_table
from flockd.testnet.report import build_report, node_name, write_report
from flockd.testnet.task import TaskPlan, create_and_join, wait_finished


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/testnet",
        description="Run a local flockd network on 127.0.0.1 and train a model on it to the end.",
    )
    p.add_argument("--nodes", type=int, default=6, help="number of daemons (default 6)")
    p.add_argument("--workdir", type=Path, default=Path("testnet-work"), help="where datadirs go (default ./testnet-work)")
    p.add_argument("--fresh", action="store_true", help="delete the workdir first")
    p.add_argument("--keep-running", action="store_true", help="leave the daemons up and print how to reach them")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the mesh")
    p.add_argument("--rounds", type=int, default=8, help="learning rounds to run (0: only form the mesh)")
    p.add_argument("--recipe", default="digits-mlp", help="recipe (digits-mlp, digits-cnn, cancer-logreg)")
    p.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA")
    p.add_argument("--rule", default="fedavg", help="aggregation: fedavg, median, trimmed-mean:B, krum:F, multi-krum:F:M")
    p.add_argument("--proposers", type=int, default=3, help="expected proposers per round")
    p.add_argument("--vote-mode", choices=["per-proposal", "whole-round"], default="per-proposal")
    p.add_argument("--task-timeout", type=float, default=1800.0, help="seconds to wait for the task")
    p.add_argument("--report-dir", type=Path, default=None, help="where the report goes (default WORKDIR/report)")
    p.add_argument("--chain-blocks", type=int, default=0,
                   help="at the end, wait until every node agrees on one chain head at this height or above")
    p.add_argument("--malicious", type=float, default=0.0, metavar="FRACTION",
                   help="make round(FRACTION x nodes) nodes malicious, never node0 (0 to 0.5; default 0)")
    p.add_argument("--attack", default="collude", metavar="SPEC",
                   help="what the malicious nodes do, e.g. collude, sign-flip:4, label-flip+random-vote "
                        "(docs/learning.md, Attackers; default collude)")
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= 64:
        p.error("--nodes must be between 1 and 64")
    if not 0.0 <= args.malicious <= 0.5:
        p.error("--malicious must be between 0 and 0.5 (a minority of attackers)")
    try:
        # Chosen with the task seed: one seed fixes the whole run.
        chosen = assign_behaviours(args.nodes, args.malicious, args.attack, TaskPlan().seed)
        args.behaviours = {i: str(b) for i, b in chosen.items()}
    except ValueError as exc:
        p.error(f"--attack: {exc}")
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
        cluster.configure_attacks(args.behaviours)
        if args.behaviours:
            console.print("[bold red]malicious:[/] " + ", ".join(
                f"node{i} ({spec}: {describe(parse_behaviour(spec))})" for i, spec in args.behaviours.items()))
        cluster.start(detach=args.keep_running)
        console.print("daemons up; waiting for a full mesh")
        cluster.wait_full_mesh(args.timeout)
        console.print(peer_table(cluster))
        console.print(f"full mesh of {args.nodes} nodes in {time.monotonic() - started:.1f}s")
        if args.rounds > 0:
            ok = run_task(console, cluster, args)
            if not ok:
                cluster.stop()
                return 1
        if args.chain_blocks:
            wait_chain_agreement(console, cluster, args.chain_blocks)
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
    except BaseException:
        # anything else (a control-socket timeout, a bug): never leave daemons behind
        cluster.stop()
        raise
    codes = cluster.stop()
    bad = [f"node{i}={c}" for i, c in enumerate(codes) if c != 0]
    if bad:
        console.print(f"[red]unclean exits:[/] {', '.join(bad)}")
        return 1
    console.print("all daemons stopped cleanly")
    return 0


def run_task(console: Console, cluster: Cluster, args: argparse.Namespace) -> bool:
    """Create, join and run one task to its end with a live view; write the report."""
    plan = TaskPlan(
        recipe=args.recipe, rounds=args.rounds, partition=args.partition, rule=args.rule,
        expected_proposers=args.proposers, vote_mode=args.vote_mode,
    )
    started = time.monotonic()
    task_id = create_and_join(cluster, plan)
    console.print(f"task {task_id}: {plan.recipe}, {plan.rounds} rounds, {plan.partition}, {plan.rule}; all nodes joined")
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        statuses = wait_finished(
            cluster, task_id, plan, args.task_timeout,
            lambda sts, rss: live.update(progress_table(sts, rss, args.behaviours)),
        )
    console.print()  # the live view leaves the cursor on its last line
    wall = time.monotonic() - started
    report = build_report(
        statuses, nodes=len(cluster.daemons), rounds=plan.rounds, recipe=plan.recipe,
        partition=plan.partition, wall_seconds=wall,
        malicious={node_name(i): spec for i, spec in args.behaviours.items()}, malicious_fraction=args.malicious,
    )
    verified = [d.call("model_verify", {"task_id": task_id}) for d in cluster.daemons]
    report["model_verify"] = {f"node{d.index}": v["ok"] and v["complete"] for d, v in zip(cluster.daemons, verified, strict=True)}
    outdir = args.report_dir or cluster.workdir / "report"
    paths = write_report(report, outdir)
    console.print(f"final accuracy {report['final_accuracy']:.4f}; nodes agree with the chain: {report['all_nodes_agree']}; "
                  f"model_verify: {report['model_verify']}")
    if args.behaviours:
        totals = report["totals"]
        console.print(f"malicious proposals: {totals['malicious_proposed']}, accepted {totals['malicious_accepted']}, "
                      f"rejected {totals['malicious_rejected']}; honest proposals: {totals['honest_proposed']}, "
                      f"accepted {totals['honest_accepted']}")
    console.print("report: " + ", ".join(str(p) for p in paths))
    return bool(report["all_nodes_agree"]) and all(report["model_verify"].values())


def wait_chain_agreement(console: Console, cluster: Cluster, height: int) -> None:
    started = time.monotonic()
    cluster.wait_for(lambda: agree_at_least(cluster.daemons, height), height * 2.0 + 60, f"one head at {height}+")
    number, block_hash = heads(cluster.daemons)[0]
    console.print(f"all {len(cluster.daemons)} nodes agree on block {number} ({block_hash}) "
                  f"after waiting {time.monotonic() - started:.0f}s")


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
