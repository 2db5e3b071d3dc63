"""python -m flockd.sim: many nodes, one process, the real protocol (docs/simulation.md)."""

from __future__ import annotations

import argparse
import json
import sys

from flockd.fl.attacks import assign_behaviours
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VOTE_SCORINGS, root_rows_for
from flockd.sim.chain import SimError
from flockd.sim.config import RoundFigures, SimConfig, SimResult
from flockd.sim.run import run_simulation
from flockd.stakes import StakeSpread
from flockd.tasks.spec import default_root_rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flockd.sim", description=__doc__)
    p.add_argument("--recipe", default="digits-mlp")
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="data split, initial model, attacks (and keys)")
    p.add_argument("--key-seed", type=int, default=None, help="node keys and VRF draws only (default: --seed)")
    p.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA")
    p.add_argument("--vote-mode", choices=("per-proposal", "whole-round"), default="per-proposal")
    p.add_argument("--rule", default="fedavg", help="aggregation rule (fedavg, median, trimmed_mean:B, krum:F, ...)")
    p.add_argument("--proposers", type=int, default=4, help="expected proposers per round")
    p.add_argument("--max-proposals", type=int, default=16)
    p.add_argument("--propose-blocks", type=int, default=2)
    p.add_argument("--commit-blocks", type=int, default=2)
    p.add_argument("--reveal-blocks", type=int, default=8)
    p.add_argument("--malicious", type=float, default=0.0, help="fraction of malicious nodes (never node 0)")
    p.add_argument("--attack", default="honest", help="their behaviour: label-flip, noise:S, sign-flip:K, "
                   "random-vote, accept-all, collude, joined by + (flockd.fl.attacks)")
    p.add_argument("--vote-scoring", choices=VOTE_SCORINGS, default=DEFAULT_VOTE_SCORING,
                   help="how honest voters score a proposal (flockd.fl.score; per-proposal mode)")
    p.add_argument("--creator-steps", type=int, default=0,
                   help="start from the creator's model (node 0's local updates on its split), not a random one")
    p.add_argument("--root-rows", type=int, default=None,
                   help="rows of the task's public root set, which the root votes train on "
                        "(default under a root vote, root-direction or root-or-local-model: the recipe's, 100 for the "
                        "built-in recipes; else none)")
    p.add_argument("--score-sample", type=int, default=None, help="at most this many validation rows per voter")
    p.add_argument("--config", default="{}", help="recipe config overrides, JSON")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        recipe=args.recipe, nodes=args.nodes, rounds=args.rounds, seed=args.seed, key_seed=args.key_seed,
        partition=args.partition,
        vote_mode=args.vote_mode, rule=args.rule, expected_proposers=args.proposers,
        max_proposals=args.max_proposals, propose_blocks=args.propose_blocks,
        commit_blocks=args.commit_blocks, reveal_blocks=args.reveal_blocks,
        behaviours=assign_behaviours(args.nodes, args.malicious, args.attack, args.seed),
        recipe_config=json.loads(args.config), score_sample=args.score_sample, vote_scoring=args.vote_scoring,
        creator_steps=args.creator_steps,
        root_rows=root_rows_for(args.vote_scoring, args.root_rows, default_root_rows(args.recipe)),
    )


def show(f: RoundFigures) -> None:
    bad = f" (malicious {f.malicious_accepted}/{f.malicious_proposers})" if f.malicious_proposers else ""
    share = "" if f.malicious_stake_share is None else f"  malicious stake {100 * f.malicious_stake_share:.2f}%"
    print(f"round {f.round:3d}  accuracy {f.accuracy:.4f}  loss {f.loss:.4f}  accepted "
          f"{len(f.accepted)}/{len(f.proposers)}{bad}  {f.blocks} blocks  {f.gas_used / 1e6:.1f} Mgas  "
          f"{f.seconds:.2f}s{share}", flush=True)


def honest_stakes(cfg: SimConfig, result: SimResult) -> str:
    """Where the settlement left the honest nodes' stakes: the lowest, the median and the
    highest, and how many ended below what they joined with."""
    spread = StakeSpread.of([(s - cfg.stake) / cfg.stake for i, s in result.final_stakes.items() if i not in cfg.malicious])
    return "no honest node" if spread is None else spread.line()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from(args)
        if not args.json:
            bad = cfg.malicious
            scoring = "" if cfg.vote_scoring == DEFAULT_VOTE_SCORING else f" ({cfg.vote_scoring})"
            print(f"{cfg.nodes} nodes, {cfg.rounds} rounds, {cfg.recipe}, {cfg.vote_mode}{scoring}, {cfg.rule}; "
                  f"malicious: {', '.join(map(str, bad)) or 'none'}" + (f" ({args.attack})" if bad else ""), flush=True)
        result = run_simulation(cfg, on_round=None if args.json else show)
    except (SimError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"final accuracy {result.final_accuracy:.4f}  model {result.final_model_hash} "
              f"(= chain, on all {cfg.nodes} nodes)  {result.blocks} blocks, {result.transactions} txs, "
              f"fullest block {result.max_block_gas / 1e6:.1f} Mgas, {result.wall_seconds:.1f}s")
        print(honest_stakes(cfg, result))
        shares = [f.malicious_stake_share for f in result.rounds if f.malicious_stake_share is not None]
        if result.initial_malicious_stake_share is not None and shares:
            print(f"malicious stake share {100 * result.initial_malicious_stake_share:.2f}% at the start, "
                  f"{100 * shares[-1]:.2f}% after the last round (min {100 * min(shares):.2f}%, "
                  f"max {100 * max(shares):.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
