"""What `scripts/bench attack` writes: the tables, the plot, ``results.json``,
``results.md`` and the section of docs/benchmarks.md between the attack-bench markers."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from flockd.bench._attack_breakdown import breakdown_table
from flockd.bench._attack_paired import paired_table
from flockd.bench._attack_stats import CI_METHOD, Spread, spread
from flockd.bench._attack_systems import (
    FLOCKD_SYSTEMS,
    PER_ATTACK_SYSTEMS,
    TARGET,
    scoring_of,
    system_label,
)
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "bench" / "attack"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- attack-bench:begin -->", "<!-- attack-bench:end -->"
# `--stake-share` runs write their own section, so they never replace the attack tables.
STAKE_BEGIN, STAKE_END = "<!-- attack-stake-share:begin -->", "<!-- attack-stake-share:end -->"
# As reported for FLock (NeurIPS'22 workshop / IEEE TAI'24) on digits: FedAvg without
# defence at 10/30/40% malicious, and FLock's own floor at 40%.
PUBLISHED_FEDAVG = {0.1: 0.963, 0.3: 0.801, 0.4: 0.709}
PUBLISHED_FLOCK_40 = 0.955


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "error" not in r]


Groups = dict[tuple[str, str, float], list[dict[str, Any]]]


def _group(records: Iterable[dict[str, Any]], partition: str) -> Groups:
    """One partition's runs by (system, attack, fraction)."""
    groups: Groups = defaultdict(list)
    for r in _ok(records):
        if r.get("partition", "iid") == partition:
            groups[(r["system"], r["attack"], r["fraction"])].append(r)
    return groups


def _accuracy_cell(runs: Sequence[dict[str, Any]], full: bool = False) -> str:
    """Final accuracy over seeds, mean ± 95% CI half-width (and min–max when ``full``); a
    run whose model diverged (non-finite weights, so the loop stopped) counts with the last
    accuracy it measured, and is flagged."""
    s = spread([r["final_accuracy"] for r in runs])
    cell = s.cell()
    if full and s.n > 1:
        cell += f" ({100 * s.low:.1f}–{100 * s.high:.1f})"
    diverged = [r["diverged_round"] for r in runs if r.get("diverged_round")]
    if diverged:
        cell += f" †{len(diverged)}/{len(runs)} diverged (round {min(diverged)}–{max(diverged)})"
    return cell


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def accuracy_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    groups = _group(records, partition)
    fractions = meta["fractions"]
    lines = [
        "| system | " + " | ".join(_pct(f) for f in fractions) + " |",
        "| --- | " + " | ".join("---:" for _ in fractions) + " |",
    ]
    for system in meta["systems"]:
        cells = [_accuracy_cell(groups.get((system, meta["attack"], f), [])) for f in fractions]
        lines.append(f"| {system_label(meta, system)} | " + " | ".join(cells) + " |")
    if partition != "iid":  # the paper's figures are for an IID split
        return "\n".join(lines)
    if any(f in PUBLISHED_FEDAVG for f in fractions):
        published = [
            f"{100 * PUBLISHED_FEDAVG[f]:.1f}" if f in PUBLISHED_FEDAVG else "" for f in fractions
        ]
        lines.append("| *published: FedAvg (FLock paper)* | " + " | ".join(published) + " |")
    if 0.4 in fractions:
        flock = [f"> {100 * PUBLISHED_FLOCK_40:.1f}" if f == 0.4 else "" for f in fractions]
        lines.append("| *published: FLock (FLock paper)* | " + " | ".join(flock) + " |")
    return "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def timing_marks(meta: dict[str, Any]) -> list[float]:
    """The fractions of the speed table: none, the per-attack fraction and the largest."""
    fractions = meta["fractions"]
    return sorted({0.0, meta["attack_fraction"], max(fractions)} & set(fractions))


def timing_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    groups = _group(records, partition)
    marks = timing_marks(meta)
    lines = [
        "| system | malicious | final accuracy (min–max) | s/round | first model (s) | time to 95% (s) | rounds to 95% |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        for f in marks:
            runs = groups.get((system, meta["attack"], f), [])
            if not runs:
                continue
            hit = [r for r in runs if r["seconds_to_target"] is not None]
            to95 = f"{_mean([r['seconds_to_target'] for r in hit]):.1f}" if hit else "never"
            r95 = f"{_mean([r['rounds_to_target'] for r in hit]):.1f}" if hit else "–"
            if hit and len(hit) < len(runs):
                to95 += f" ({len(hit)}/{len(runs)} runs)"
                r95 += f" ({len(hit)}/{len(runs)})"
            lines.append(
                f"| {system_label(meta, system)} | {_pct(f)} | {_accuracy_cell(runs, full=True)} | "
                f"{_mean([r['seconds_per_round'] for r in runs]):.2f} | "
                f"{_mean([r['first_model_seconds'] for r in runs]):.1f} | {to95} | {r95} |"
            )
    return "\n".join(lines)


def _rate_cell(accepted: Sequence[int], proposed: Sequence[int]) -> str:
    """Accepted/proposed summed over seeds, then the per-seed acceptance rate (%) with its
    spread; seeds without such proposals have no rate."""
    total_in, total = sum(accepted), sum(proposed)
    if total == 0:
        return "–"
    rates = [a / p for a, p in zip(accepted, proposed, strict=True) if p]
    return f"{total_in}/{total} ({spread(rates).cell(digits=0)}%)"


def defence_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    """What the vote did in the flockd systems: malicious and honest proposals accepted."""
    groups = _group(records, partition)
    lines = [
        "| system | malicious | proposals/round | malicious proposals accepted | honest proposals accepted "
        "| rounds with nothing accepted | honest nodes ending below their stake (lowest) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        if system not in FLOCKD_SYSTEMS:
            continue
        for f in meta["fractions"]:
            runs = groups.get((system, meta["attack"], f), [])
            if not runs:
                continue
            rows = [row for r in runs for row in r["rounds"]]
            counts = [_proposal_counts(r["rounds"]) for r in runs]
            bad, bad_in, good, good_in = (list(c) for c in zip(*counts, strict=True))
            empty = sum(1 for x in rows if not x["accepted"])
            proposals = sum(bad) + sum(good)
            lines.append(
                f"| {system_label(meta, system)} | {_pct(f)} | {proposals / max(len(rows), 1):.1f} | "
                f"{_rate_cell(bad_in, bad)} | {_rate_cell(good_in, good)} | "
                f"{empty}/{len(rows)} | {_honest_stakes_cell(runs)} |"
            )
    return "\n".join(lines)


def _honest_stakes_cell(runs: Sequence[dict[str, Any]]) -> str:
    """How many honest nodes ended the task with less stake than they joined with (a
    rejected proposal is slashed, so honest work voted down drains honest stake), summed
    over seeds, and the lowest one's change; runs from before `final_stakes` have none."""
    from flockd.sim.config import SimConfig  # the bench never changes the stake a node joins with

    if not runs or any("final_stakes" not in r for r in runs):
        return "–"
    start = SimConfig().stake
    honest = [int(s) for r in runs for i, s in r["final_stakes"].items() if int(i) not in r["malicious"]]
    below = sum(s < start for s in honest)
    return f"{below}/{len(honest)} ({100 * (min(honest) - start) / start:+.0f}%)"


def _proposal_counts(rounds: Sequence[dict[str, Any]]) -> tuple[int, int, int, int]:
    """One run's malicious proposals, malicious accepted, honest proposals, honest accepted."""
    proposals = sum(len(x["proposers"]) for x in rounds)
    bad = sum(x["malicious_proposers"] for x in rounds)
    bad_in = sum(x["malicious_accepted"] for x in rounds)
    return bad, bad_in, proposals - bad, sum(len(x["accepted"]) for x in rounds) - bad_in


def stake_checkpoints(rounds: int) -> list[int]:
    """The rounds after which the stake share is tabled (1-based): the first, the quarters
    and the last."""
    return sorted({1, *(max(1, round(rounds * q / 4)) for q in (1, 2, 3)), rounds})


def stake_share_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    """The malicious nodes' share of the task's stake (%), read from the registry once
    every node joined and after each round's settlement, in the flockd systems."""
    groups = _group(records, partition)
    marks = stake_checkpoints(meta["rounds"])
    lines = [
        "| system | malicious | at the start | "
        + " | ".join(f"after round {m}" for m in marks)
        + " | change, start to last |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in marks) + " | ---: |",
    ]
    for system in meta["systems"]:
        if system not in FLOCKD_SYSTEMS:
            continue
        for f in meta["fractions"]:
            runs = [
                r
                for r in groups.get((system, meta["attack"], f), [])
                if r.get("initial_malicious_stake_share") is not None
            ]
            if not runs:
                continue
            cells = [spread([r["initial_malicious_stake_share"] for r in runs]).cell(digits=2)]
            for m in marks:
                cells.append(_share_after(runs, m).cell(digits=2))
            change = [
                r["rounds"][-1]["malicious_stake_share"] - r["initial_malicious_stake_share"]
                for r in runs
            ]
            cells.append(spread(change).cell(digits=2))
            lines.append(f"| {system_label(meta, system)} | {_pct(f)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _share_after(runs: Sequence[dict[str, Any]], round_number: int) -> Spread:
    return spread(
        [
            r["rounds"][round_number - 1]["malicious_stake_share"]
            for r in runs
            if len(r["rounds"]) >= round_number
        ]
    )


def per_attack_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    groups = _group(records, partition)
    f = meta["attack_fraction"]
    systems = [s for s in PER_ATTACK_SYSTEMS if s in meta["systems"]]
    lines = [
        "| attack | " + " | ".join(system_label(meta, s) for s in systems) + " |",
        "| --- | " + " | ".join("---:" for _ in systems) + " |",
    ]
    for attack in meta["per_attack"]:
        cells = [_accuracy_cell(groups.get((s, attack, f), [])) for s in systems]
        lines.append(f"| `{attack}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(meta: dict[str, Any], records: list[dict[str, Any]], partition: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = _group(records, partition)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    fractions = meta["fractions"]
    for system in meta["systems"]:
        xs, means, errors = [], [], []
        for f in fractions:
            s = spread([r["final_accuracy"] for r in groups.get((system, meta["attack"], f), [])])
            if s.n:
                xs.append(100 * f)
                means.append(100 * s.mean)
                errors.append(0.0 if math.isnan(s.half_width) else 100 * s.half_width)
        if xs:
            style = "--" if system.startswith("flower") else "-"
            left.errorbar(xs, means, yerr=errors, fmt="o" + style, capsize=3, label=system_label(meta, system))
    if partition == "iid":
        px = sorted(PUBLISHED_FEDAVG)
        left.plot(
            [100 * x for x in px],
            [100 * PUBLISHED_FEDAVG[x] for x in px],
            "kx:",
            ms=9,
            label="published FedAvg (FLock paper)",
        )
        left.plot(
            [40], [100 * PUBLISHED_FLOCK_40], "k^", ms=9, label="published FLock floor at 40%"
        )
    left.set_xlabel("malicious nodes (%)")
    left.set_ylabel("final held-out accuracy (%), mean and 95% CI")
    left.set_title(
        f"digits-mlp, {partition}, {meta['nodes']} nodes, {meta['rounds']} rounds, "
        f"attack {meta['attack']}"
    )
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    f = meta["attack_fraction"] if meta["attack_fraction"] in fractions else max(fractions)
    for system in meta["systems"]:
        runs = groups.get((system, meta["attack"], f), [])
        if not runs:
            continue
        curve = [
            100 * statistics.fmean(r["rounds"][i]["accuracy"] for r in runs)
            for i in range(min(len(r["rounds"]) for r in runs))
        ]
        style = "--" if system.startswith("flower") else "-"
        right.plot(range(1, len(curve) + 1), curve, style, label=system_label(meta, system))
    right.axhline(100 * TARGET, color="grey", lw=0.8)
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_xlabel("round")
    right.set_ylabel("held-out accuracy (%), mean over seeds")
    right.set_title(f"per round at {_pct(f)} malicious")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stake_share(
    meta: dict[str, Any], records: list[dict[str, Any]], partition: str, path: Path
) -> bool:
    """The malicious nodes' stake share round by round (mean over seeds, 95% CI band), one
    line per flockd system and fraction; False (nothing drawn) without such runs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = _group(records, partition)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for system in meta["systems"]:
        for f in meta["fractions"]:
            runs = [
                r
                for r in groups.get((system, meta["attack"], f), [])
                if r.get("initial_malicious_stake_share") is not None
            ]
            if not runs:
                continue
            points = [spread([r["initial_malicious_stake_share"] for r in runs])]
            points += [_share_after(runs, m) for m in range(1, meta["rounds"] + 1)]
            points = [p for p in points if p.n]
            means = [100 * p.mean for p in points]
            half = [0.0 if math.isnan(p.half_width) else 100 * p.half_width for p in points]
            xs = range(len(points))
            ax.plot(xs, means, label=f"{system_label(meta, system)}, {_pct(f)} malicious")
            low = [m - h for m, h in zip(means, half, strict=True)]
            high = [m + h for m, h in zip(means, half, strict=True)]
            ax.fill_between(xs, low, high, alpha=0.2)
            drawn = True
    if drawn:
        ax.set_xlabel("rounds settled")
        ax.set_ylabel("malicious stake share (%), mean and 95% CI")
        ax.set_title(f"{meta['attack']}, {partition}, {meta['nodes']} nodes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def png_name(partition: str, kind: str = "accuracy") -> str:
    """accuracy.png for the IID split, accuracy-dirichlet-0.5.png and so on for others."""
    return f"{kind}.png" if partition == "iid" else f"{kind}-{partition.replace(':', '-')}.png"


def _partition_section(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    partition: str,
    png: str,
    stake_png: str | None,
) -> list[str]:
    parts = [
        f"![accuracy under attack, {partition}]({png})",
        "",
        f"**Final held-out accuracy (%) under `{meta['attack']}`**, {partition} split: "
        f"{CI_METHOD}:",
        "",
        accuracy_table(meta, records, partition),
    ]
    paired = paired_table(meta, records, partition)
    if paired:
        parts += [
            "",
            f"**What the attack cost, paired by seed** ({partition} split): each attacked run "
            "minus the clean run of the same seed (same data split, initial model, training "
            f"seeds and keys), in points; {CI_METHOD}:",
            "",
            paired,
        ]
    parts += [
        "",
        f"**Speed**, at {', '.join(map(_pct, timing_marks(meta)))} malicious "
        f"(`{meta['attack']}`), {partition} split. Final accuracy as above, with min–max; s/round: wall time between "
        "consecutive global models; first model and time to 95%: wall time from launching the "
        "federation (chain deployment and joins, gRPC server and client connections, data "
        "loading) to that model, mean over seeds:",
        "",
        timing_table(meta, records, partition),
    ]
    if any(s in FLOCKD_SYSTEMS for s in meta["systems"]):
        parts += [
            "",
            f"**What the vote did** (flockd systems, {partition} split): proposals accepted "
            "out of proposed, summed over every round of every seed, and in brackets the "
            "per-seed acceptance rate (%) as the mean ± 95% CI half-width (Student t):",
            "",
            defence_table(meta, records, partition),
        ]
    shares = stake_share_table(meta, records, partition)
    if shares:
        parts += [
            "",
            f"**The malicious nodes' stake share (%)** (flockd systems, {partition} split), "
            "read from the registry's pools (`get_participant`) once every node joined and "
            "after each round's settlement (when its model is recorded); "
            f"{CI_METHOD}:",
            "",
            shares,
        ]
        if stake_png:
            parts += ["", f"![malicious stake share, {partition}]({stake_png})"]
    return parts


def report(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    pngs: dict[str, str],
    stake_pngs: dict[str, str] | None = None,
) -> str:
    """The markdown section: the run's provenance, then each partition's tables."""
    failed = [r for r in records if "error" in r]
    partitions = meta.get("partitions", ["iid"])
    parts = [
        f"Command: `{meta['command']}`  ",
        f"Commit: `{meta.get('commit', 'unknown')}`; run {meta['date']}, "
        f"{meta['wall_minutes']:.1f} min wall on {meta['machine']} "
        f"({meta['workers']} runs at a time), flwr {meta['flwr_version']}.  ",
        f"Task: `digits-mlp`, {meta['nodes']} nodes, {meta['rounds']} rounds, split "
        f"{', '.join(partitions)}, flockd expecting {meta['proposers']} proposers a round, "
        f"robust rule `{meta['robust_rule']}`, seeds {', '.join(map(str, meta['seeds']))} "
        f"({len(meta['seeds'])} per cell).",
    ]
    scoring = scoring_of(meta)
    if meta.get("creator_steps"):
        parts[-1] = parts[-1][:-1] + (
            f"; flockd's round 0 starts from the creator's model (node 0's {meta['creator_steps']} local "
            "updates on its own split), the other systems' from the random one."
        )
    if scoring != DEFAULT_VOTE_SCORING:  # the default's tables read as they always did
        parts[-1] = parts[-1][:-1] + f"; honest voters score with `{scoring}`."
    if meta.get("root_rows"):
        parts[-1] = parts[-1][:-1] + (
            f", against an update trained on a public root set of {meta['root_rows']} rows (a stratified "
            "sample of the pool the nodes' data comes from; their parts are unchanged)."
        )
    for partition in partitions:
        if len(partitions) > 1:
            parts += ["", f"#### Partition `{partition}`"]
        stake_png = (stake_pngs or {}).get(partition)
        parts += ["", *_partition_section(meta, records, partition, pngs[partition], stake_png)]
    b = meta.get("breakdown")
    if b:
        parts += [
            "",
            f"**Where a flockd round's time goes**: one per-proposal run alone before the grid "
            f"({b['nodes']} nodes, {b['rounds']} rounds, {b['proposers']} expected proposers, "
            f"{_pct(b['fraction'])} `{b['attack']}`; {b['transactions']} transactions in "
            f"{b['blocks']} blocks); each part's own wall time (a part running inside "
            "another counts only for itself):",
            "",
            breakdown_table(b),
        ]
    if meta["per_attack"]:
        parts += [
            "",
            f"**Per attack at {_pct(meta['attack_fraction'])} malicious**, {partitions[0]} "
            f"split, final accuracy (%), seeds {', '.join(map(str, meta['attack_seeds']))}, "
            f"{CI_METHOD}:",
            "",
            per_attack_table(meta, records, partitions[0]),
        ]
    if failed:
        parts += [
            "",
            f"{len(failed)} runs failed: "
            + "; ".join(
                f"{r['system']} {r['attack']} {r.get('partition', 'iid')} f={r['fraction']} "
                f"seed={r['seed']}: {r['error']}"
                for r in failed
            ),
        ]
    return "\n".join(parts) + "\n"


def write_doc(doc: Path, section: str, markers: tuple[str, str] = (BEGIN, END)) -> None:
    """Replace the text between ``markers`` in ``doc``, or append a section holding them."""
    begin, end = markers
    text = doc.read_text()
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        title = {BEGIN: "Defence under attack", STAKE_BEGIN: "Cartel stake share"}.get(
            begin, begin.removeprefix("<!-- ").removesuffix(":begin -->")
        )
        text = text.rstrip("\n") + f"\n\n## {title}\n\n" + block + "\n"
    doc.write_text(text)


def write_results(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    out: Path,
    doc: Path | None,
    markers: tuple[str, str] = (BEGIN, END),
) -> None:
    """``results.json``, one accuracy plot per partition and ``results.md`` under ``out``,
    the section printed, and into ``doc`` between ``markers`` unless it is None."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    pngs: dict[str, str] = {}
    stake_pngs: dict[str, str] = {}

    def link(png: Path) -> str:  # from the doc, or from results.md next to it
        return os.path.relpath(png, doc.parent) if doc else png.name

    for partition in meta.get("partitions", ["iid"]):
        png = out / png_name(partition)
        plot(meta, records, partition, png)
        pngs[partition] = link(png)
        stake_png = out / png_name(partition, "stake-share")
        if plot_stake_share(meta, records, partition, stake_png):
            stake_pngs[partition] = link(stake_png)
    section = report(meta, records, pngs, stake_pngs)
    (out / "results.md").write_text(section)
    print()
    print(section)
    if doc is not None:
        write_doc(doc, section, markers)
        print(f"wrote {doc}")
    drawn = ", ".join([*pngs.values(), *stake_pngs.values()])
    print(f"wrote {out / 'results.json'}, {drawn}, {out / 'results.md'}")
