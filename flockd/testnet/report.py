"""The testnet's end-of-task report, built from every node's `task_status` reply.

`build_report` is pure (RPC results in, a JSON-able dict out); `write_report` turns that
dict into report.json, report.md and accuracy.png. Per-round figures come from node0's
history, since every honest node records the same rounds; the agreement checks compare
every node against node0 and against the chain.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flockd.config import ChainSection
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING
from flockd.stakes import StakeSpread

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ACCURACY_PNG = "accuracy.png"

# Per-round and total counts of a report with malicious nodes.
_ATTACK_COUNTS = tuple(f"{who}_{what}" for who in ("malicious", "honest") for what in ("proposed", "accepted", "rejected"))
# Figures one history entry must carry, and those that may be null (not measured).
_ROUND_INTS = ("round", "proposals", "accepted", "rejected")
_ROUND_MEASURES = ("test_accuracy", "test_loss", "seconds", "gas_used", "started_block", "finished_block")


class ReportError(ValueError):
    """A task_status reply is missing a field or carries one of the wrong type."""


def node_name(index: int) -> str:
    return f"node{index}"


def short_hex(value: str | None, head: int = 6, tail: int = 4) -> str:
    """`0xabcdef…1234`: enough to tell hashes and addresses apart at a glance."""
    if not value:
        return "—"
    return value if len(value) <= head + tail + 1 else f"{value[:head]}…{value[-tail:]}"


def build_report(
    statuses: list[dict[str, Any]],
    *,
    nodes: int,
    rounds: int,
    recipe: str,
    partition: str,
    wall_seconds: float,
    malicious: dict[str, Any] | None = None,
    malicious_fraction: float = 0.0,
    chaos: dict[str, Any] | None = None,
    vote_scoring: str = DEFAULT_VOTE_SCORING,
    root_rows: int = 0,
    confirmations: int = ChainSection().round_confirmations,
) -> dict[str, Any]:
    """`statuses[i]` is node i's `task_status` reply, taken after the task finished;
    `malicious` maps the malicious nodes' names to their behaviour spec; `chaos` is the
    chaos run's summary (flockd.testnet.chaos_driver), when there was one; `vote_scoring`
    how every node scored proposals ([vote] scoring), `root_rows` the task's root set,
    `confirmations` how deep the nodes' rounds acted ([chain] round_confirmations)."""
    if not statuses:
        raise ReportError("no task_status replies")
    histories = [_history(s, i) for i, s in enumerate(statuses)]
    names = [node_name(i) for i in range(len(statuses))]
    addresses = {n: _str(s, "me", n) for n, s in zip(names, statuses, strict=True)}
    malicious = dict(malicious or {})
    by_address = {a.lower(): n for n, a in addresses.items()}

    per_round = [_round_figures(entry, histories, by_address, malicious) for entry in histories[0]]

    final_accuracies = {n: (h[-1]["test_accuracy"] if h else None) for n, h in zip(names, histories, strict=True)}
    model_hashes = {n: _opt_str(s, "model_hash", n) for n, s in zip(names, statuses, strict=True)}
    chain_hashes = {n: _opt_str(s, "chain_model_hash", n) for n, s in zip(names, statuses, strict=True)}
    chain_model_hash = chain_hashes[names[0]]
    disagreeing = sorted(
        (n for n in names if not _same_hash(model_hashes[n], chain_model_hash)
         or not _same_hash(chain_hashes[n], chain_model_hash)),
        key=names.index,
    )
    return {
        "task_id": statuses[0].get("task_id"),
        "state": statuses[0].get("state"),
        "recipe": recipe,
        "nodes": nodes,
        "partition": partition,
        "rounds": rounds,
        "rounds_completed": len(per_round),
        "wall_seconds": round(wall_seconds, 3),
        "malicious": malicious,
        "vote_scoring": vote_scoring,
        "root_rows": root_rows,
        "confirmations": confirmations,
        "command": testnet_command(
            nodes=nodes, rounds=rounds, recipe=recipe, partition=partition,
            malicious_fraction=malicious_fraction, attack=_attack_spec(malicious),
            chaos_seed=chaos["seed"] if chaos else None, vote_scoring=vote_scoring, root_rows=root_rows,
            confirmations=confirmations,
        ),
        "per_round": per_round,
        "totals": _totals(per_round, _ATTACK_COUNTS if malicious else ()),
        "final_accuracy": final_accuracies[names[0]],
        "final_accuracies": final_accuracies,
        "accuracies_agree": _all_close(list(final_accuracies.values())),
        "addresses": addresses,
        "model_hashes": model_hashes,
        "chain_model_hash": chain_model_hash,
        "chain_model_hashes": chain_hashes,
        "all_nodes_agree": chain_model_hash is not None and not disagreeing,
        "disagreeing_nodes": disagreeing,
        "chaos": chaos,
    }


def stake_changes(balances: Mapping[str, Mapping[str, Any]], malicious: Mapping[str, Any]) -> dict[str, Any]:
    """Each node's own stake in the task, start and end, from its `stake_balances` reply
    after the task: a participant's shares were bought one per token before the task
    started and do not change while it runs, so they are its starting stake, and their
    `value` is what every reward and slash since has left of it."""
    per_node: dict[str, dict[str, Any]] = {}
    for name, balance in balances.items():
        start, end = int(balance["shares"]), int(balance["value"])
        per_node[name] = {"start": start, "end": end, "change": (end - start) / start if start else None}
    spread = StakeSpread.of([v["change"] for n, v in per_node.items() if n not in malicious and v["change"] is not None])
    return {"per_node": per_node, "honest": None if spread is None else asdict(spread)}


def testnet_command(
    *, nodes: int, rounds: int, recipe: str, partition: str, malicious_fraction: float = 0.0, attack: str | None = None,
    chaos_seed: int | None = None, vote_scoring: str = DEFAULT_VOTE_SCORING, root_rows: int = 0,
    confirmations: int = ChainSection().round_confirmations,
) -> str:
    command = f"scripts/testnet --nodes {nodes} --rounds {rounds} --recipe {recipe} --partition {partition}"
    if vote_scoring != DEFAULT_VOTE_SCORING:
        command += f" --vote-scoring {vote_scoring}"
    if root_rows:
        command += f" --root-rows {root_rows}"
    if confirmations != ChainSection().round_confirmations:
        command += f" --confirmations {confirmations}"
    if malicious_fraction and attack:
        command += f" --malicious {malicious_fraction:g} --attack {attack}"
    if chaos_seed is not None:
        command += f" --chaos --chaos-seed {chaos_seed}"
    return command


def _attack_spec(malicious: Mapping[str, Any]) -> str | None:
    """The one spec every malicious node runs (the testnet gives them all the same)."""
    specs = {str(spec) for spec in malicious.values()}
    return specs.pop() if len(specs) == 1 else None


def _round_figures(
    entry: Mapping[str, Any],
    histories: Sequence[Sequence[Mapping[str, Any]]],
    by_address: Mapping[str, str],
    malicious: Mapping[str, Any],
) -> dict[str, Any]:
    figures = {k: entry[k] for k in (*_ROUND_INTS, *_ROUND_MEASURES, "model_hash")}
    # Every node that recorded this round must have derived the same model from it.
    same_round = [h for hist in histories for h in hist if h["round"] == entry["round"]]
    figures["nodes_agree"] = len({h["model_hash"].lower() for h in same_round}) == 1
    # Each node logs the gas of its own transactions: the round's gas is their sum.
    gas = [h.get("gas_used") for h in same_round]
    figures["gas_used"] = sum(g for g in gas if g is not None) if any(g is not None for g in gas) else None
    if malicious:
        proposers = [by_address.get(a.lower(), a) for a in entry["proposers"]]
        accepted = [by_address.get(a.lower(), a) for a in entry["accepted_proposers"]]
        bad_proposed = sum(p in malicious for p in proposers)
        bad_accepted = sum(p in malicious for p in accepted)
        counts = {
            "malicious": (bad_proposed, bad_accepted),
            "honest": (len(proposers) - bad_proposed, len(accepted) - bad_accepted),
        }
        for who, (proposed, accepted_count) in counts.items():
            figures[f"{who}_proposed"] = proposed
            figures[f"{who}_accepted"] = accepted_count
            figures[f"{who}_rejected"] = proposed - accepted_count
    return figures


def _totals(per_round: Sequence[Mapping[str, Any]], extra: Sequence[str] = ()) -> dict[str, Any]:
    def total(key: str) -> Any:
        values = [r[key] for r in per_round if r[key] is not None]
        return sum(values) if values else None

    return {k: total(k) for k in ("proposals", "accepted", "rejected", "gas_used", "seconds", *extra)}


def _same_hash(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


def _all_close(values: Sequence[float | None]) -> bool:
    # Same model bytes and the same held-out split give the same accuracy; the tolerance
    # only absorbs float formatting on the way through JSON.
    first = values[0]
    if first is None:
        return all(v is None for v in values)
    return all(v is not None and math.isclose(v, first, abs_tol=1e-9) for v in values)


# -- validation of the RPC replies ------------------------------------------------------
def _history(status: Any, index: int) -> list[dict[str, Any]]:
    where = node_name(index)
    if not isinstance(status, Mapping):
        raise ReportError(f"{where}: task_status is not an object")
    history = status.get("history")
    if not isinstance(history, list):
        raise ReportError(f"{where}: history is not a list")
    for entry in history:
        _check_entry(entry, where)
    return history


def _check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, Mapping):
        raise ReportError(f"{where}: history entry is not an object")
    for key in _ROUND_INTS:
        if not _is_int(entry.get(key)) or entry[key] < 0:
            raise ReportError(f"{where}: history {key} must be a non-negative integer")
    for key in _ROUND_MEASURES:
        if key not in entry or not (entry[key] is None or _is_number(entry[key])):
            raise ReportError(f"{where}: history {key} must be a number or null")
    if not isinstance(entry.get("model_hash"), str):
        raise ReportError(f"{where}: history model_hash must be a string")
    for key in ("proposers", "accepted_proposers"):
        value = entry.get(key)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise ReportError(f"{where}: history {key} must be a list of addresses")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str(status: Mapping[str, Any], key: str, where: str) -> str:
    value = status.get(key)
    if not isinstance(value, str):
        raise ReportError(f"{where}: {key} must be a string")
    return value


def _opt_str(status: Mapping[str, Any], key: str, where: str) -> str | None:
    value = status.get(key)
    if value is not None and not isinstance(value, str):
        raise ReportError(f"{where}: {key} must be a string or null")
    return value


# -- files ------------------------------------------------------------------------------
def write_report(report: dict[str, Any], outdir: Path) -> list[Path]:
    """Write report.json, report.md and accuracy.png into `outdir`; return their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = outdir / REPORT_JSON, outdir / REPORT_MD, outdir / ACCURACY_PNG
    json_path.write_text(json.dumps(report, sort_keys=True, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    plot_accuracy(report, png_path)
    return [json_path, md_path, png_path]


def render_markdown(report: Mapping[str, Any]) -> str:
    ok = "yes" if report["all_nodes_agree"] else "**NO**"
    totals = report["totals"]
    lines = [
        f"# flockd testnet: {report['recipe']} on {report['nodes']} nodes",
        "",
        f"- final accuracy (held-out test split, node0): **{_fmt(report['final_accuracy'], '.4f')}**"
        + ("" if report["accuracies_agree"] else " (nodes report different accuracies)"),
        f"- rounds: {report['rounds_completed']} of {report['rounds']} (task state: {report['state']})",
        f"- every node holds the model recorded on chain: {ok}",
        f"- chain model hash: `{report['chain_model_hash']}`",
        f"- proposals: {totals['proposals']}, accepted {totals['accepted']}, rejected {totals['rejected']}",
        f"- gas: {_fmt(totals['gas_used'], ',')}; wall time {report['wall_seconds']:.1f} s",
        f"- partition: {report['partition']}; malicious nodes: {_malicious_text(report['malicious'])}",
    ]
    attacked = bool(report["malicious"])
    if attacked:
        lines += [
            f"- malicious proposals: {totals['malicious_proposed']}, accepted {totals['malicious_accepted']}, "
            f"rejected {totals['malicious_rejected']}",
            f"- honest proposals: {totals['honest_proposed']}, accepted {totals['honest_accepted']}, "
            f"rejected {totals['honest_rejected']}{_share(totals['honest_accepted'], totals['honest_proposed'])}",
        ]
    else:  # every proposer was honest
        lines.append(
            f"- honest proposals: {totals['proposals']}, accepted {totals['accepted']}"
            f"{_share(totals['accepted'], totals['proposals'])}"
        )
    stakes = report.get("stakes")
    if stakes and stakes["honest"]:
        lines.append(f"- {StakeSpread(**stakes['honest']).line()}")
    root = f", against a public root set of {report['root_rows']} rows" if report.get("root_rows") else ""
    lines.append(f"- votes scored with: `{report.get('vote_scoring', 'local-model')}`{root} (each node's [vote] scoring)")
    lines += [
        "",
        "## Rounds",
        "",
        "| round | accuracy | loss | proposals | accepted | rejected "
        + ("| malicious accepted / proposed " if attacked else "")
        + "| seconds | gas | blocks | model | nodes agree |",
        "|---:|---:|---:|---:|---:|---:" + ("|---:" if attacked else "") + "|---:|---:|---|---|---|",
    ]
    for r in report["per_round"]:
        lines.append(
            f"| {r['round']} | {_fmt(r['test_accuracy'], '.4f')} | {_fmt(r['test_loss'], '.4f')} "
            f"| {r['proposals']} | {r['accepted']} | {r['rejected']} "
            + (f"| {r['malicious_accepted']} / {r['malicious_proposed']} " if attacked else "")
            + f"| {_fmt(r['seconds'], '.1f')} "
            f"| {_fmt(r['gas_used'], ',')} | {r['started_block']}–{r['finished_block']} "
            f"| `{short_hex(r['model_hash'])}` | {'yes' if r['nodes_agree'] else 'NO'} |"
        )
    lines += [
        "",
        "## Nodes",
        "",
        "| node | address | final model hash | equals chain | final accuracy | stake change | malicious |",
        "|---|---|---|---|---:|---:|---|",
    ]
    per_node = stakes["per_node"] if stakes else {}
    for name, address in report["addresses"].items():
        agrees = name not in report["disagreeing_nodes"]
        change = per_node.get(name, {}).get("change")
        lines.append(
            f"| {name} | `{address}` | `{report['model_hashes'][name]}` | {'yes' if agrees else 'NO'} "
            f"| {_fmt(report['final_accuracies'][name], '.4f')} | {_pct(change)} | {report['malicious'].get(name, '')} |"
        )
    if report.get("chaos"):
        lines += _chaos_lines(report["chaos"], report["per_round"])
    lines += [
        "",
        "## How this was produced",
        "",
        f"`{report['command']}` started {report['nodes']} flockd daemons on 127.0.0.1, all authorities",
        "of one embedded chain; node0 created the task, every node joined it, and the rounds ran until",
        "the task finished. Per-round figures are node0's `task_status` history; model hashes are",
        "each node's `task_status` at the end, compared with the hash the task contract recorded.",
        f"Accuracy is measured on the held-out test split, never trained on. Plot: `{ACCURACY_PNG}`;",
        f"every figure: `{REPORT_JSON}`.",
        "",
    ]
    return "\n".join(lines)


def _chaos_lines(chaos: Mapping[str, Any], per_round: Sequence[Mapping[str, Any]]) -> list[str]:
    affected = chaos["affected_rounds"]
    longest = max((r["seconds"] for r in per_round if r["seconds"] is not None), default=None)
    cuts = ", ".join(f"{s:.0f} s" for s in chaos["partition_seconds"]) or "none"
    lines = [
        "",
        "## Chaos",
        "",
        f"- seed {chaos['seed']}: {chaos['kills']} kill -9s ({chaos['restarts']} restarts), "
        f"{chaos['partitions']} partition(s), {chaos['kills_dropped']} planned kills dropped (cap or round over)",
        f"- cut off the mesh for: {cuts}; the longest round took {_fmt(longest, '.0f')} s",
        f"- rounds affected (a node down or cut off): {len(affected)} ({', '.join(map(str, affected)) or 'none'})",
        f"- reorgs observed: {chaos['reorgs']} ({_by_node(chaos['reorgs_by_node'])}); heads reorganised away: "
        f"{chaos['orphaned_heads']}; deepest: at least {chaos['deepest_reorg_at_least']} blocks",
        "- reorgs are counted from the chain heads polled every second (no node reports them yet): a head",
        "  not on the final chain was reorganised away; a node moving from one back onto it, one reorg.",
        "",
        "| s | round | event | node | detail |",
        "|---:|---:|---|---|---|",
    ]
    for e in chaos["events"]:
        lines.append(f"| {e['seconds']:.0f} | {e['round']} | {e['kind']} | node{e['node']} | {e['detail']} |")
    return lines


def _by_node(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n}: {c}" for n, c in counts.items()) or "none"


def _share(part: int | None, whole: int | None) -> str:
    return f" ({100 * part / whole:.0f}%)" if part is not None and whole else ""


def _pct(change: float | None) -> str:
    return "–" if change is None else f"{change * 100:+.2f}%"


def _fmt(value: float | int | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _malicious_text(malicious: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} ({b})" for n, b in sorted(malicious.items())) or "none"


def plot_accuracy(report: Mapping[str, Any], path: Path) -> None:
    """Accuracy per round as a line over accepted/rejected proposals as stacked bars."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = report["per_round"]
    xs = [r["round"] for r in rows]
    accepted = [r["accepted"] for r in rows]
    rejected = [r["rejected"] for r in rows]
    measured = [(r["round"], r["test_accuracy"]) for r in rows if r["test_accuracy"] is not None]

    fig = Figure(figsize=(8, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    acc_ax = fig.add_subplot()
    bar_ax = acc_ax.twinx()
    bar_ax.bar(xs, accepted, width=0.6, color="#4caf50", alpha=0.45, label="accepted proposals")
    bar_ax.bar(xs, rejected, width=0.6, bottom=accepted, color="#e53935", alpha=0.45, label="rejected proposals")
    bar_ax.set_ylabel("proposals")
    bar_ax.set_ylim(0, max([a + r for a, r in zip(accepted, rejected, strict=True)] + [1]) * 1.6)
    bar_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if measured:
        acc_ax.plot(*zip(*measured, strict=True), marker="o", color="#1f4e99", label="test accuracy")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_ylabel("test accuracy (held out)")
    acc_ax.set_xlabel("round")
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.grid(True, alpha=0.3)
    acc_ax.set_zorder(bar_ax.get_zorder() + 1)  # the line in front of the bars
    acc_ax.patch.set_visible(False)
    handles = acc_ax.get_legend_handles_labels()[0] + bar_ax.get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    acc_ax.set_title(
        f"flockd testnet: {report['nodes']} nodes · {report['recipe']} · partition {report['partition']}"
    )
    # No Software/time metadata: the same report gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
