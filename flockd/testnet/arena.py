"""`scripts/testnet --arena`: an Arena competition among the testnet's nodes, whose winner
then seeds the Alliance task (docs/arena.md "Hand-off").

node0 creates the competition; the last `validators` nodes join as validators, the
others as trainers, each with its own part of the data and its own hyperparameters. The
daemons' drivers play every phase; this module only starts them, waits for `finalised`,
and collects what the report shows: the leaderboard, every validator's scores against the
medians, every node's `arena_verify`, and the payouts each node claims.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.report import node_name, short_hex
from flockd.testnet.task import TX_TIMEOUT

E18 = 10**18
TRAINER_STAKE, VALIDATOR_STAKE = 10 * E18, 100 * E18
# epochs, lr by trainer: different hyperparameters (None: the recipe's)
HYPERPARAMETERS: list[tuple[int | None, float | None]] = [(5, None), (1, 0.01), (3, 0.05), (2, None), (1, None)]
# A language model trains for steps, not epochs: steps, lr by trainer.
LM_HYPERPARAMETERS: list[tuple[int, float]] = [(16, 1e-2), (4, 1e-3), (8, 5e-3)]


@dataclass(frozen=True)
class ArenaPlan:
    recipe: str = "digits-mlp"
    config: dict[str, Any] = field(default_factory=dict)  # the recipe's (lm-lora: its base hash)
    validators: int = 2
    submission: str = "model"  # an LM competition may take LoRA adapters ("adapter")
    reward_pool: int = 1000 * E18
    creator_bond: int = 100 * E18
    join_blocks: int = 40
    submit_blocks: int = 12
    reveal_blocks: int = 10
    score_commit_blocks: int = 30
    score_reveal_blocks: int = 12
    pool_delegation: int = 50 * E18  # node0 backs the first validator's Arena pool (0: nobody)


def roles(cluster: Cluster, plan: ArenaPlan) -> tuple[Daemon, list[Daemon], list[Daemon]]:
    """(creator, trainers, validators): node0, the middle nodes, the last `validators`."""
    daemons = cluster.daemons
    return daemons[0], daemons[1:len(daemons) - plan.validators], daemons[len(daemons) - plan.validators:]


def trainer_settings(k: int, trainers: int, lm: bool = False) -> dict[str, Any]:
    settings: dict[str, Any] = {"node_index": k, "num_nodes": trainers, "seed": k + 1}
    if lm:
        steps, lm_lr = LM_HYPERPARAMETERS[k % len(LM_HYPERPARAMETERS)]
        return {**settings, "steps": steps, "lr": lm_lr}
    epochs, lr = HYPERPARAMETERS[k % len(HYPERPARAMETERS)]
    if epochs is not None:
        settings["epochs"] = epochs
    if lr is not None:
        settings["lr"] = lr
    return settings


def run_competition(cluster: Cluster, plan: ArenaPlan, timeout: float) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Create, join, submit; wait until finalised. (competition id, spec, each trainer's settings by node)."""
    creator, trainers, validators = roles(cluster, plan)
    created = creator.call("arena_create", {
        "recipe": plan.recipe, **({"config": plan.config} if plan.config else {}),
        **({"submission": plan.submission} if plan.submission != "model" else {}), "reward_pool": str(plan.reward_pool), "creator_bond": str(plan.creator_bond),
        "trainer_stake": str(TRAINER_STAKE), "validator_stake": str(VALIDATOR_STAKE),
        "expected_validators": len(validators), "join_blocks": plan.join_blocks, "submit_blocks": plan.submit_blocks,
        "reveal_blocks": plan.reveal_blocks, "score_commit_blocks": plan.score_commit_blocks,
        "score_reveal_blocks": plan.score_reveal_blocks,
    }, timeout=TX_TIMEOUT)
    cid, spec = created["competition_id"], created["spec"]
    cluster.wait_for(lambda: all(_sees(d, cid) for d in cluster.daemons), TX_TIMEOUT, f"every node to see competition {cid}")
    lm = plan.recipe == "lm-lora"
    settings = {node_name(d.index): trainer_settings(k, len(trainers), lm) for k, d in enumerate(trainers)}
    if plan.pool_delegation:  # before the joins: a seat locks the backing it counts
        creator.call("stake_arena_delegate", {"operator": validators[0].address, "amount": str(plan.pool_delegation)},
                     timeout=TX_TIMEOUT)
    joins = [(d, "validator", VALIDATOR_STAKE) for d in validators] + [(d, "trainer", TRAINER_STAKE) for d in trainers]
    with ThreadPoolExecutor(len(joins)) as pool:  # every join in the join phase, at once
        list(pool.map(lambda j: j[0].call("arena_join", {"competition_id": cid, "spec": spec, "role": j[1], "stake": str(j[2])},
                                          timeout=TX_TIMEOUT), joins))
        list(pool.map(lambda d: d.call("arena_submit", {"competition_id": cid, **settings[node_name(d.index)]},
                                       timeout=TX_TIMEOUT), trainers))
    cluster.wait_for(lambda: creator.call("arena_status", {"competition_id": cid})["phase"] == "finalised",
                     timeout, f"competition {cid} to be finalised")
    return cid, spec, settings


def _sees(d: Daemon, cid: int) -> bool:
    try:
        d.call("arena_status", {"competition_id": cid})
    except Exception:
        return False
    return True


def competition_report(cluster: Cluster, plan: ArenaPlan, cid: int, spec: dict[str, Any],
                       settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The leaderboard, each validator's scores against the medians, every node's
    arena_verify, and what every node claims."""
    creator = cluster.daemons[0]
    by_address = {d.address.lower(): node_name(d.index) for d in cluster.daemons}
    results = creator.call("arena_results", {"competition_id": cid})
    leaderboard = [{
        "rank": row["rank"], "index": row["index"], "node": by_address.get(row["trainer"].lower()), "trainer": row["trainer"],
        "model_hash": row["model_hash"], "median": row["median"], "reward": row["reward"],
        "training": settings.get(by_address.get(row["trainer"].lower(), ""), {}),
    } for row in results["leaderboard"]]
    medians = {row["index"]: row["median"] for row in results["leaderboard"]}
    trained_by = {row["index"]: by_address.get(row["trainer"].lower()) for row in results["leaderboard"]}
    validators = [{
        "node": by_address.get(v["address"].lower()), "address": v["address"], "revealed": v["revealed"],
        "scores": [{"submission": i, "node": trained_by.get(i), "score": s, "median": medians.get(i), "deviation": None if i not in medians else s - medians[i]}
                   for i, s in enumerate(v["scores"] or [])],
        "closeness": v["closeness"], "reward": v["reward"], "slashed": v["slashed"],
    } for v in results["validators"]]
    verified = {node_name(d.index): d.call("arena_verify", {"competition_id": cid, "spec": spec}, timeout=300.0)
                for d in cluster.daemons}
    pool = pool_payout(cluster, plan) if plan.pool_delegation else None
    # The delegator's rewards_claim already claimed all the Arena owed it, its bond too.
    claims = {node_name(d.index): pool["claimed"] if pool is not None and d is creator else _claim(d)
              for d in cluster.daemons}
    return {
        "pool": pool,
        "competition_id": cid, "spec": spec, "plan": {k: str(v) if isinstance(v, int) and v > 2**53 else v for k, v in vars(plan).items()},
        "leaderboard": leaderboard, "validators": validators,
        "arena_verify": {n: {"ok": v["ok"], "problems": v["problems"]} for n, v in verified.items()},
        "claims": claims,
    }


def pool_payout(cluster: Cluster, plan: ArenaPlan) -> dict[str, Any]:
    """node0, the delegator, collects its share of the first validator's pool rewards (and
    claims all the Arena owes it), then undelegates: the stake unbonds for the contract's
    delay, longer than a testnet runs."""
    creator, _, validators = roles(cluster, plan)
    operator = validators[0].address
    position = creator.call("stake_arena_balances", {"operator": operator})
    claimed = creator.call("rewards_claim", {"operator": operator}, timeout=TX_TIMEOUT)
    undelegated = creator.call("stake_arena_undelegate", {"operator": operator}, timeout=TX_TIMEOUT)
    return {"delegator": node_name(creator.index), "operator": node_name(validators[0].index),
            "delegated": plan.pool_delegation, "value": int(position["value"]),
            "collected": int(claimed["collected"]), "claimed": int(claimed["claimed"]),
            "undelegated": int(undelegated["amount"]), "release_block": int(undelegated["unbonding"]["release_block"])}


def _claim(d: Daemon) -> int:
    try:
        return int(d.call("arena_claim", timeout=TX_TIMEOUT)["claimed"])
    except Exception:  # "nothing to claim" (a node that took no part)
        return 0


DELEGATION = 50 * E18


def delegate_to_winner(cluster: Cluster, arena: dict[str, Any], task_id: int) -> None:
    """node0 backs the winning trainer in the task: delegates to its stake pool (kept in
    `arena["delegation"]`; withdraw_delegation redeems it after the task)."""
    winner = arena["leaderboard"][0]
    done = cluster.daemons[0].call("stake_delegate", {"task_id": task_id, "participant": winner["trainer"],
                                                       "amount": str(DELEGATION)}, timeout=TX_TIMEOUT)
    arena["delegation"] = {"delegator": node_name(0), "participant": winner["node"], "task_id": task_id,
                           "amount": DELEGATION, "shares": done["shares"]}


def withdraw_delegation(cluster: Cluster, arena: dict[str, Any]) -> None:
    delegation = arena["delegation"]
    winner = arena["leaderboard"][0]
    done = cluster.daemons[0].call("stake_withdraw", {"task_id": delegation["task_id"], "participant": winner["trainer"]},
                                   timeout=TX_TIMEOUT)
    delegation["withdrawn"] = done["withdrawn"]


def handoff_report(verified: dict[str, dict[str, Any]], task_id: int, model_init_hash: str | None) -> dict[str, Any]:
    """What model_verify said about the competition part of the task's lineage, by node."""
    first = next(iter(verified.values()))
    competition = first.get("competition", {})
    return {
        "task_id": task_id,
        "competition_id": competition.get("competition_id"),
        "winner": competition.get("winner"),
        "model_init_hash": model_init_hash,
        "model_verify": {n: {"ok": v["ok"], "complete": v["complete"], "competition_ok": v.get("competition", {}).get("ok"),
                             "rounds_checked": v["rounds_checked"], "problems": v["problems"]} for n, v in verified.items()},
    }


def arena_markdown(arena: dict[str, Any]) -> str:
    tokens = 1 / E18
    lines = [f"## Arena competition {arena['competition_id']} ({arena['spec']['recipe']})", "",
             "### Leaderboard", "", "| rank | node | trainer | training | model | median (accuracy ×10⁶) | reward (tokens) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in arena["leaderboard"]:
        training = ", ".join(f"{k}={v}" for k, v in row["training"].items())
        lines.append(f"| {row['rank']} | {row['node']} | {short_hex(row['trainer'])} | {training} | {short_hex(row['model_hash'])} "
                     f"| {row['median']} | {row['reward'] * tokens:.2f} |")
    lines += ["", "### Validators: scores against the medians", "",
              "| validator | revealed | score − median by submission | closeness | reward (tokens) | slashed |",
              "| --- | --- | --- | --- | --- | --- |"]
    for v in arena["validators"]:
        deviations = ", ".join(f"{s['node']}: {s['score']} ({s['deviation']:+d})" if s["deviation"] is not None
                               else f"#{s['submission']}: {s['score']} (unranked)" for s in v["scores"])
        lines.append(f"| {v['node']} | {v['revealed']} | {deviations} | {v['closeness']} | {v['reward'] * tokens:.2f} "
                     f"| {v['slashed'] * tokens:.2f} |")
    lines += ["", "### Payouts claimed (stakes returned plus rewards; the creator: its bond and the unpaid pool)", "",
              "| node | claimed (tokens) |", "| --- | --- |"]
    lines += [f"| {n} | {c * tokens:.2f} |" for n, c in arena["claims"].items()]
    pool = arena.get("pool")
    if pool:
        lines += ["", "### Delegation pool", "",
                  f"{pool['delegator']} delegated {pool['delegated'] * tokens:.2f} tokens to {pool['operator']}'s Arena pool "
                  f"before the joins (its seat counted the backing), collected {pool['collected'] * tokens:.2f} tokens of the "
                  f"pool's rewards (`rewards_claim`), and undelegated {pool['undelegated'] * tokens:.2f}, withdrawable from "
                  f"block {pool['release_block']} (`stake_arena_withdraw`)."]
    lines += ["", "### arena_verify", "", ", ".join(f"{n}: {'ok' if v['ok'] else 'FAILED ' + '; '.join(v['problems'])}"
                                                     for n, v in arena["arena_verify"].items())]
    handoff = arena.get("handoff")
    if handoff:
        winner = handoff.get("winner") or {}
        lines += ["", "### Hand-off", "",
                  f"Task {handoff['task_id']} started from competition {handoff['competition_id']}'s winner: submission "
                  f"{winner.get('index')} of {short_hex(winner.get('trainer'))}, model {short_hex(winner.get('model_hash'))} "
                  f"(median {winner.get('median')}); the task's initial model hash on chain is {short_hex(handoff['model_init_hash'])}.",
                  "", "| node | model_verify ok | complete | competition ok | rounds checked |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {n} | {v['ok']} | {v['complete']} | {v['competition_ok']} | {v['rounds_checked']} |"
                  for n, v in handoff["model_verify"].items()]
    delegation = arena.get("delegation")
    if delegation:
        withdrawn = delegation.get("withdrawn")
        lines += ["", "### Delegation", "",
                  f"{delegation['delegator']} delegated {delegation['amount'] * tokens:.2f} tokens to {delegation['participant']}'s "
                  f"stake pool in task {delegation['task_id']} before it started ({delegation['shares'] * tokens:.2f} shares) and "
                  + ("withdrew " + f"{withdrawn * tokens:.2f} tokens after it ended." if withdrawn is not None else "has not withdrawn.")]
    return "\n".join(lines) + "\n"
