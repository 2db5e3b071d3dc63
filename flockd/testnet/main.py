"""Start N daemons, wait for one connected mesh, run a learning task to its end and report
on it, then stop them (or leave them up)."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flockd.config import ChainSection
from flockd.fl.attacks import assign_behaviours, describe, parse_behaviour
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VOTE_SCORINGS, root_rows_for
from flockd.lm.testnet import append_lm_markdown, lm_section
from flockd.rpc.errors import RPCError
from flockd.testnet.chaos import ChaosScheduler, plan_chaos
from flockd.testnet.chaos_driver import ChaosDriver, canonical_hashes
from flockd.testnet.cluster import Cluster, ClusterError, agree_at_least, heads
from flockd.testnet.pipeline import configure_serving, run_pipeline
from flockd.testnet.progress import progress_table
from flockd.testnet.report import build_report, node_name, stake_changes, write_report
from flockd.testnet.task import (
    TaskPlan,
    create_and_join,
    scaled_windows,
    wait_finished,
    wait_models_on_chain,
)
from flockd.testnet.workdir import (
    TRACEBACK_FILE,
    WorkdirError,
    busy_port,
    check_reusable,
    describe_running,
    free_port,
    running_daemons,
    stop_running,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: the message names the flag.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


DEFAULT_CONFIRMATIONS = ChainSection().round_confirmations
# From 16 nodes (where the windows scale too) the rounds act 2 blocks deep. 32 daemons on
# 2 cores seal 5-30 s apart and reorganise often; acting on the newest block there rebuilt
# the round machines three times as often as at depth 2, and in round 0 voters scored
# before the deltas reached them (docs/benchmarks.md, "32 daemons", run 12).
CROWDED_CONFIRMATIONS = 2
CROWDED_NODES = 16
TASK_TIMEOUT = 1800.0  # seconds to wait for the task, up to 16 nodes


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = _Parser(
        prog="scripts/testnet",
        description="Run a local flockd network on 127.0.0.1 and train a model on it to the end. "
                    "A rerun continues the network in --workdir when it matches the flags, "
                    "and starts afresh (saying why) when it does not.",
    )
    p.add_argument("--nodes", type=int, default=6, help="number of daemons (default 6)")
    p.add_argument("--workdir", type=Path, default=Path("testnet-work"), help="where datadirs go (default ./testnet-work)")
    p.add_argument("--fresh", action="store_true", help="delete the workdir first")
    p.add_argument("--keep-running", action="store_true", help="leave the daemons up and print how to reach them")
    p.add_argument("--stop", action="store_true", help="stop the daemons a --keep-running run left in --workdir, and exit")
    p.add_argument("--port-base", type=int, default=None, metavar="PORT",
                   help="node i listens on 127.0.0.1:PORT+i (default: any free port)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for each daemon to answer, and then for the mesh (default 300: a busy machine)")
    p.add_argument("--rounds", type=int, default=8, help="learning rounds to run (0: only form the mesh)")
    p.add_argument("--recipe", default="digits-mlp", help="recipe (digits-mlp, digits-cnn, cancer-logreg, lm-lora)")
    p.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA")
    p.add_argument("--rule", default="fedavg", help="aggregation: fedavg, median, trimmed-mean:B, krum:F, multi-krum:F:M")
    p.add_argument("--proposers", type=int, default=3, help="expected proposers per round")
    p.add_argument("--vote-mode", choices=["per-proposal", "whole-round"], default="per-proposal")
    p.add_argument("--vote-scoring", choices=VOTE_SCORINGS, default=DEFAULT_VOTE_SCORING,
                   help="how every node scores proposals ([vote] scoring; docs/learning.md, Voter scoring)")
    p.add_argument("--root-rows", type=int, default=None,
                   help="a public root set of this many rows in the task, which the root votes train on "
                        "(default under a root vote, root-direction or root-or-local-model: the recipe's, 100 for the "
                        "built-in recipes; else none)")
    p.add_argument("--confirmations", type=int, default=None, metavar="N",
                   help="blocks every node's rounds wait on top of a task log before acting on it ([chain] "
                        f"round_confirmations; default {DEFAULT_CONFIRMATIONS}, and {CROWDED_CONFIRMATIONS} from "
                        f"{CROWDED_NODES} nodes)")
    p.add_argument("--task-timeout", type=float, default=None,
                   help=f"seconds to wait for the task (default {TASK_TIMEOUT:.0f}, and {TASK_TIMEOUT:.0f} x (nodes/16)^2 "
                        "above 16 nodes: on shared cores every daemon re-executes every node's transactions, "
                        "so a round's CPU grows with the square of the nodes)")
    p.add_argument("--report-dir", type=Path, default=None, help="where the report goes (default WORKDIR/report)")
    p.add_argument("--chain-blocks", type=int, default=0,
                   help="at the end, wait until every node agrees on one chain head at this height or above")
    p.add_argument("--malicious", type=float, default=0.0, metavar="FRACTION",
                   help="make round(FRACTION x nodes) nodes malicious, never node0 (0 to 0.5; default 0)")
    p.add_argument("--attack", default="collude", metavar="SPEC",
                   help="what the malicious nodes do, e.g. collude, sign-flip:4, label-flip+random-vote "
                        "(docs/learning.md, Attackers; default collude)")
    p.add_argument("--chaos", action="store_true",
                   help="kill -9 and restart random daemons (never node0, at most a third at once) during "
                        "the rounds, and cut one off the mesh for longer than a round (docs/testnet.md)")
    p.add_argument("--chaos-seed", type=int, default=1, metavar="SEED", help="what --chaos does, and when (default 1)")
    p.add_argument("--arena", action="store_true",
                   help="first an Arena competition among the nodes (node0 creates, the last two validate, the "
                        "rest train), then the task from its winner (docs/arena.md)")
    p.add_argument("--pipeline", action="store_true",
                   help="Arena → Alliance → Marketplace on the language model: a competition, a task from its "
                        "winner, a listing, the model served on the last node, a chat with sources "
                        "(default --nodes 4 --rounds 2; docs/testnet.md)")
    args = p.parse_args(argv)
    if args.pipeline:  # its own defaults; flags given still win
        from flockd.testnet.pipeline import PIPELINE_NODES, PIPELINE_ROUNDS

        p.set_defaults(nodes=PIPELINE_NODES, rounds=PIPELINE_ROUNDS, recipe="lm-lora")
        args = p.parse_args(argv)
    if args.task_timeout is None:
        args.task_timeout = TASK_TIMEOUT * max(1.0, args.nodes / 16) ** 2
    if args.confirmations is None:
        args.confirmations = CROWDED_CONFIRMATIONS if args.nodes >= CROWDED_NODES else DEFAULT_CONFIRMATIONS
    for problem in _flag_problems(args):
        p.error(problem)
    try:
        # Chosen with the task seed: one seed fixes the whole run.
        chosen = assign_behaviours(args.nodes, args.malicious, args.attack, TaskPlan().seed)
        args.behaviours = {i: str(b) for i, b in chosen.items()}
    except ValueError as exc:
        p.error(f"--attack: {exc}")
    if args.rounds > 0 and not args.stop:
        from flockd.lm.testnet import lm_task
        from flockd.tasks.spec import SpecError, TaskSpec, default_root_rows

        args.config, args.windows = lm_task(args.recipe)  # lm-lora: builds its base once, cached
        args.root_rows = root_rows_for(args.vote_scoring, args.root_rows, default_root_rows(args.recipe))
        try:
            TaskSpec(recipe=args.recipe, config=args.config, rule=args.rule, partition=args.partition, num_nodes=args.nodes,
                     root_rows=args.root_rows)
        except SpecError as exc:
            p.error(f"--recipe/--rule/--partition: {str(exc).removeprefix('bad task spec: ')}")
    return args


def _flag_problems(args: argparse.Namespace) -> list[str]:
    checks = [
        (1 <= args.nodes <= 64, "--nodes must be between 1 and 64"),
        (args.rounds >= 0, "--rounds must be 0 or more"),
        (0.0 <= args.malicious <= 0.5, "--malicious must be between 0 and 0.5 (a minority of attackers)"),
        (args.timeout > 0 and args.task_timeout > 0, "--timeout and --task-timeout must be positive"),
        (args.proposers >= 1, "--proposers must be 1 or more"),
        (args.chain_blocks >= 0, "--chain-blocks must be 0 or more"),
        (not args.pipeline or (args.nodes >= 4 and args.rounds >= 1 and args.recipe == "lm-lora" and not args.chaos
                               and not args.arena and not args.malicious),
         "--pipeline needs --nodes 4 or more (a creator, two trainers, a validator that serves), --rounds 1 or more, "
         "the lm-lora recipe, and no --chaos, --arena or --malicious"),
        (not args.chaos or (args.nodes >= 3 and args.rounds >= 2),
         "--chaos needs --nodes 3 or more and --rounds 2 or more (a third of the nodes is at least one)"),
        (not (args.chaos and args.keep_running), "--chaos and --keep-running do not go together"),
        (not args.arena or (args.nodes >= 5 and args.rounds >= 1 and args.recipe == "digits-mlp" and not args.chaos),
         "--arena needs --nodes 5 or more (a creator, two trainers, two validators), --rounds 1 or more, "
         "the digits-mlp recipe and no --chaos"),
        (args.port_base is None or 1024 <= args.port_base <= 65536 - args.nodes,
         f"--port-base must leave room for {args.nodes} ports between 1024 and 65535"),
    ]
    return [message for ok, message in checks if not ok]


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the daemons as Ctrl-C does


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 200))
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = args.workdir.resolve()
    try:
        if args.stop:
            return stop_left_running(console, workdir)
        prepare_workdir(console, workdir, args)
    except WorkdirError as exc:
        console.print(f"[red]testnet:[/] {exc}", soft_wrap=True)
        return 1
    cluster = Cluster(workdir, args.nodes, port_base=args.port_base)
    started = time.monotonic()
    try:
        console.print(f"[bold]initialising {args.nodes} nodes[/] under {cluster.workdir}")
        cluster.init()
        cluster.configure_votes(args.vote_scoring)
        cluster.configure_confirmations(args.confirmations)
        cluster.configure_attacks(args.behaviours)
        if args.behaviours:
            console.print("[bold red]malicious:[/] " + ", ".join(
                f"node{i} ({spec}: {describe(parse_behaviour(spec))})" for i, spec in args.behaviours.items()))
        if args.chaos:
            serve_chain_http(cluster)
        serving_port = configure_serving(cluster, args.pipeline)
        cluster.start(timeout=args.timeout, detach=args.keep_running)
        console.print("daemons up; waiting for a full mesh")
        cluster.wait_full_mesh(args.timeout)
        console.print(peer_table(cluster))
        console.print(f"full mesh of {args.nodes} nodes in {time.monotonic() - started:.1f}s")
        if serving_port is not None:
            ok = run_pipeline(console, cluster, args, serving_port, time.monotonic() - started)
        elif args.rounds > 0:
            ok = run_task(console, cluster, args)
            if not ok:
                cluster.stop()
                return 1
        if args.chain_blocks:
            wait_chain_agreement(console, cluster, args.chain_blocks)
        if args.keep_running:
            print_reach(console, cluster, args)
            if serving_port is not None:
                console.print(f"node{len(cluster.daemons) - 1} serves the listed model: "
                              f"http://127.0.0.1:{serving_port}/v1 (any API key), its page at http://127.0.0.1:{serving_port}/")
            return 0
    except KeyboardInterrupt:
        console.print("interrupted: stopping the daemons")
        cluster.stop()
        return 130
    except (ClusterError, RPCError, ConnectionError, TimeoutError) as exc:
        console.print(f"[red]testnet failed:[/] {_one_line(exc)}", soft_wrap=True)
        cluster.stop()
        return 1
    except Exception as exc:
        # A bug: still one line (and no daemon left behind), the traceback kept in a file.
        cluster.stop()
        trace = workdir / TRACEBACK_FILE
        trace.write_text(traceback.format_exc())
        console.print(f"[red]testnet failed (a bug, please report it):[/] {_one_line(exc)}; traceback in {trace}",
                      soft_wrap=True)
        return 1
    except BaseException:
        cluster.stop()
        raise
    codes = cluster.stop()
    bad = [f"node{i}={c}" for i, c in enumerate(codes) if c != 0]
    if bad:
        console.print(f"[red]unclean exits:[/] {', '.join(bad)}")
        return 1
    console.print("all daemons stopped cleanly")
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ClusterError) else text


def prepare_workdir(console: Console, workdir: Path, args: argparse.Namespace) -> None:
    """Refuse a workdir with daemons still up or that is not a testnet's; start afresh
    when asked to, or when its network is not the one the flags ask for."""
    running = running_daemons(workdir)
    if running:
        raise WorkdirError(
            f"daemons of an earlier run are still up in {workdir}: {describe_running(running)}; "
            f"stop them with `scripts/testnet --stop{_workdir_flag(args)}` or pick another --workdir"
        )
    reason = check_reusable(workdir, args.nodes)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    elif reason:
        console.print(f"{workdir}: {reason}: starting afresh (deleting it)", soft_wrap=True)
        shutil.rmtree(workdir)
    if args.port_base is not None:
        port = busy_port(range(args.port_base, args.port_base + args.nodes))
        if port is not None:
            raise WorkdirError(
                f"port {port} (node{port - args.port_base}) is in use: pick another --port-base, "
                "or leave it out for free ports"
            )


def stop_left_running(console: Console, workdir: Path) -> int:
    running = running_daemons(workdir)
    if not running:
        console.print(f"no daemon is running in {workdir}")
        return 0
    left = stop_running(running)
    if left:
        console.print(f"[red]testnet:[/] could not stop {describe_running(left)}", soft_wrap=True)
        return 1
    console.print(f"stopped {describe_running(running)}")
    return 0


def _workdir_flag(args: argparse.Namespace) -> str:
    return "" if args.workdir == Path("testnet-work") else f" --workdir {args.workdir}"


def serve_chain_http(cluster: Cluster) -> None:
    """With --chaos every node serves its chain over HTTP (a port of its own, the same at
    each restart): blocks by number tell whether the nodes end on one chain, and which
    heads seen during the run were reorganised away."""
    for d in cluster.daemons:
        cluster.node_args[d.index] = ("--chain-http", str(free_port()))


def run_task(console: Console, cluster: Cluster, args: argparse.Namespace) -> bool:
    """Create, join and run one task to its end with a live view; write the report.
    With --arena, a competition first, and the task from its winner."""
    arena = run_arena(console, cluster, args) if args.arena else None
    plan = TaskPlan(
        recipe=args.recipe, rounds=args.rounds, partition=args.partition, rule=args.rule,
        expected_proposers=args.proposers, vote_mode=args.vote_mode,
        config=getattr(args, "config", {}), **(getattr(args, "windows", {}) or scaled_windows(args.nodes)),
        competition=None if arena is None else arena["competition_id"], root_rows=args.root_rows or 0,
    )
    started = time.monotonic()
    if arena is not None:
        from flockd.testnet.arena import delegate_to_winner

        task_id = create_and_join(cluster, plan, before_start=lambda tid: delegate_to_winner(cluster, arena, tid))
    else:
        task_id = create_and_join(cluster, plan)
    console.print(f"task {task_id}: {plan.recipe}, {plan.rounds} rounds, {plan.partition}, {plan.rule}; all nodes joined")
    chaos = ChaosDriver(
        cluster, ChaosScheduler(plan_chaos(len(cluster.daemons), plan.rounds, args.chaos_seed)),
        on_event=lambda e: console.print(f"[yellow]chaos[/] {e.seconds:.0f}s round {e.round}: {e.kind} node{e.node} {e.detail}"),
    ) if args.chaos else None

    def on_poll(sts: list[dict[str, Any] | None], rss: list[dict[str, Any] | None]) -> None:
        live.update(progress_table(sts, rss, args.behaviours))
        if chaos is not None:
            chaos.tick(sts)

    with Live(console=console, refresh_per_second=2, transient=False) as live:
        statuses = wait_finished(cluster, task_id, plan, args.task_timeout, on_poll)
    console.print()  # the live view leaves the cursor on its last line
    chaos_summary = None
    if chaos is not None:
        console.print("task finished; waiting for every node to be back, connected and on one chain")
        chaos.settle(timeout=300.0)
        heights = [number for seen in chaos.heads_seen.values() for number, _ in seen]
        chaos_summary = chaos.summary(canonical_hashes(chaos.http_port(cluster.daemons[0]), heights))
    # The chain says finished before a node restarted late has replayed every round.
    statuses = wait_models_on_chain(cluster, task_id, 300.0 if chaos else 60.0) or statuses
    wall = time.monotonic() - started
    report = build_report(
        statuses, nodes=len(cluster.daemons), rounds=plan.rounds, recipe=plan.recipe,
        partition=plan.partition, wall_seconds=wall,
        malicious={node_name(i): spec for i, spec in args.behaviours.items()}, malicious_fraction=args.malicious,
        chaos=chaos_summary, vote_scoring=args.vote_scoring, root_rows=args.root_rows or 0,
        confirmations=args.confirmations,
    )
    # A replay re-aggregates every round (an LM's adapters are expanded to full weights):
    # seconds on a quiet machine, more than a plain query's 10 s on a loaded one.
    verified = [d.call("model_verify", {"task_id": task_id}, timeout=300.0) for d in cluster.daemons]
    report["model_verify"] = {f"node{d.index}": v["ok"] and v["complete"] for d, v in zip(cluster.daemons, verified, strict=True)}
    balances = {
        f"node{d.index}": d.call("stake_balances", {"task_id": task_id, "participant": report["addresses"][f"node{d.index}"]})
        for d in cluster.daemons
    }
    report["stakes"] = stake_changes(balances, report["malicious"])
    if arena is not None:
        from flockd.testnet.arena import handoff_report, withdraw_delegation

        withdraw_delegation(cluster, arena)
        verified_by = {f"node{d.index}": v for d, v in zip(cluster.daemons, verified, strict=True)}
        arena["handoff"] = handoff_report(verified_by, task_id, verified[0]["initial_model_hash"])
        report["arena"] = arena
        report["command"] += " --arena"
    outdir = args.report_dir or cluster.workdir / "report"
    lm = lm_section(cluster.daemons[0], task_id, plan.recipe, plan.config, len(cluster.daemons), plan.seed, outdir, plan.rounds)
    if lm is not None:  # an LM task: bits per character by domain, adapter bytes, samples, HF export
        report["lm"] = lm
    paths = write_report(report, outdir)
    if arena is not None:
        from flockd.testnet.arena import arena_markdown

        with (outdir / "report.md").open("a") as out:
            out.write("\n" + arena_markdown(arena))
    if lm is not None:
        append_lm_markdown(outdir / "report.md", lm)
        console.print(f"bits per character (mean of the domains): base {lm['base']['bpc_mean']:.4f} → final "
                      f"{lm['final']['bpc_mean']:.4f}; local-only {lm['local_only']['bpc_mean']:.4f}")
    console.print(f"final accuracy {report['final_accuracy']:.4f}; nodes agree with the chain: {report['all_nodes_agree']}; "
                  f"model_verify: {report['model_verify']}")
    if args.behaviours:
        totals = report["totals"]
        console.print(f"malicious proposals: {totals['malicious_proposed']}, accepted {totals['malicious_accepted']}, "
                      f"rejected {totals['malicious_rejected']}; honest proposals: {totals['honest_proposed']}, "
                      f"accepted {totals['honest_accepted']}")
    if chaos_summary is not None:
        console.print(f"chaos: {chaos_summary['kills']} kills, {chaos_summary['partitions']} partition(s), "
                      f"{chaos_summary['reorgs']} reorgs observed, {len(chaos_summary['affected_rounds'])} rounds affected; "
                      f"every node on one chain")
    console.print("report: " + ", ".join(str(p) for p in paths))
    return bool(report["all_nodes_agree"]) and all(report["model_verify"].values())


def run_arena(console: Console, cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """The competition to its end; its report section (leaderboard, validators, verify, claims)."""
    from flockd.testnet.arena import ArenaPlan, arena_markdown, competition_report, run_competition

    plan = ArenaPlan(recipe=args.recipe)
    console.print(f"arena: a {plan.recipe} competition, node0 creating, {plan.validators} validators")
    cid, spec, settings = run_competition(cluster, plan, args.task_timeout)
    arena = competition_report(cluster, plan, cid, spec, settings)
    console.print(arena_markdown(arena), markup=False, highlight=False)
    if not all(v["ok"] for v in arena["arena_verify"].values()):
        raise ClusterError(f"arena_verify failed: {arena['arena_verify']}")
    return arena


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


def print_reach(console: Console, cluster: Cluster, args: argparse.Namespace) -> None:
    console.print("\nthe daemons keep running; reach each with:")
    for d in cluster.daemons:
        console.print(f"  flockctl --datadir {d.datadir} node_info")
    console.print("stop them all with:")
    console.print(f"  scripts/testnet --stop{_workdir_flag(args)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
