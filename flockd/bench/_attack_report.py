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
from flockd.bench._attack_systems import FLOCKD_SYSTEMS, PER_ATTACK_SYSTEMS, SYSTEMS, TARGET

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "bench" / "attack"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- attack-bench:begin -->", "<!-- attack-bench:end -->"
# As reported for FLock (NeurIPS'22 workshop / IEEE TAI'24) on digits: FedAvg without
# defence at 10/30/40% malicious, and FLock's own floor at 40%.
PUBLISHED_FEDAVG = {0.1: 0.963, 0.3: 0.801, 0.4: 0.709}
PUBLISHED_FLOCK_40 = 0.955


def _ok(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if "error" not in r]


def _group(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in _ok(records):
        groups[(r["system"], r["attack"], r["fraction"])].append(r)
    return groups


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def _accuracy_cell(runs: Sequence[dict[str, Any]]) -> str:
    """Final accuracy over seeds; a run whose model diverged (non-finite weights, so the
    loop stopped) counts with the last accuracy it measured, and is flagged."""
    cell = _cell([r["final_accuracy"] for r in runs])
    diverged = [r["diverged_round"] for r in runs if r.get("diverged_round")]
    if diverged:
        cell += f" †{len(diverged)}/{len(runs)} diverged (round {min(diverged)}–{max(diverged)})"
    return cell


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def accuracy_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    fractions = meta["fractions"]
    lines = [
        "| system | " + " | ".join(_pct(f) for f in fractions) + " |",
        "| --- | " + " | ".join("---:" for _ in fractions) + " |",
    ]
    for system in meta["systems"]:
        cells = [_accuracy_cell(groups.get((system, meta["attack"], f), [])) for f in fractions]
        lines.append(f"| {SYSTEMS[system]} | " + " | ".join(cells) + " |")
    published = [
        f"{100 * PUBLISHED_FEDAVG[f]:.1f}" if f in PUBLISHED_FEDAVG else "" for f in fractions
    ]
    lines.append("| *published: FedAvg (FLock paper)* | " + " | ".join(published) + " |")
    flock = [f"> {100 * PUBLISHED_FLOCK_40:.1f}" if f == 0.4 else "" for f in fractions]
    lines.append("| *published: FLock (FLock paper)* | " + " | ".join(flock) + " |")
    return "\n".join(lines)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def timing_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    marks = sorted({0.0, meta["attack_fraction"]} & set(meta["fractions"]))
    lines = [
        "| system | malicious | final accuracy | s/round | first model (s) | time to 95% (s) | rounds to 95% |",
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
                f"| {SYSTEMS[system]} | {_pct(f)} | {_accuracy_cell(runs)} | "
                f"{_mean([r['seconds_per_round'] for r in runs]):.2f} | "
                f"{_mean([r['first_model_seconds'] for r in runs]):.1f} | {to95} | {r95} |"
            )
    return "\n".join(lines)


def defence_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """What the vote did in the flockd systems: malicious and honest proposals accepted."""
    groups = _group(records)
    lines = [
        "| system | malicious | proposals/round | malicious proposals accepted | honest proposals accepted | rounds with nothing accepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        if system not in FLOCKD_SYSTEMS:
            continue
        for f in meta["fractions"]:
            runs = groups.get((system, meta["attack"], f), [])
            if not runs:
                continue
            rows = [row for r in runs for row in r["rounds"]]
            proposals = sum(len(x["proposers"]) for x in rows)
            bad = sum(x["malicious_proposers"] for x in rows)
            bad_in = sum(x["malicious_accepted"] for x in rows)
            good, good_in = proposals - bad, sum(len(x["accepted"]) for x in rows) - bad_in
            empty = sum(1 for x in rows if not x["accepted"])
            lines.append(
                f"| {SYSTEMS[system]} | {_pct(f)} | {proposals / max(len(rows), 1):.1f} | "
                f"{bad_in}/{bad} | {good_in}/{good} | {empty}/{len(rows)} |"
            )
    return "\n".join(lines)


def per_attack_table(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    groups = _group(records)
    f = meta["attack_fraction"]
    systems = [s for s in PER_ATTACK_SYSTEMS if s in meta["systems"]]
    lines = [
        "| attack | " + " | ".join(SYSTEMS[s] for s in systems) + " |",
        "| --- | " + " | ".join("---:" for _ in systems) + " |",
    ]
    for attack in meta["per_attack"]:
        cells = [_accuracy_cell(groups.get((s, attack, f), [])) for s in systems]
        lines.append(f"| `{attack}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(meta: dict[str, Any], records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    groups = _group(records)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    fractions = meta["fractions"]
    for system in meta["systems"]:
        xs, means, lows, highs = [], [], [], []
        for f in fractions:
            values = [r["final_accuracy"] for r in groups.get((system, meta["attack"], f), [])]
            if values:
                m = statistics.fmean(values)
                xs.append(100 * f)
                means.append(100 * m)
                lows.append(100 * (m - min(values)))
                highs.append(100 * (max(values) - m))
        if xs:
            style = "--" if system.startswith("flower") else "-"
            left.errorbar(
                xs, means, yerr=[lows, highs], fmt="o" + style, capsize=3, label=SYSTEMS[system]
            )
    px = sorted(PUBLISHED_FEDAVG)
    left.plot(
        [100 * x for x in px],
        [100 * PUBLISHED_FEDAVG[x] for x in px],
        "kx:",
        ms=9,
        label="published FedAvg (FLock paper)",
    )
    left.plot([40], [100 * PUBLISHED_FLOCK_40], "k^", ms=9, label="published FLock floor at 40%")
    left.set_xlabel("malicious nodes (%)")
    left.set_ylabel("final held-out accuracy (%)")
    left.set_title(
        f"digits-mlp, {meta['nodes']} nodes, {meta['rounds']} rounds, attack {meta['attack']}"
    )
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    f = meta["attack_fraction"]
    for system in meta["systems"]:
        runs = groups.get((system, meta["attack"], f), [])
        if not runs:
            continue
        curve = [
            100 * statistics.fmean(r["rounds"][i]["accuracy"] for r in runs)
            for i in range(min(len(r["rounds"]) for r in runs))
        ]
        style = "--" if system.startswith("flower") else "-"
        right.plot(range(1, len(curve) + 1), curve, style, label=SYSTEMS[system])
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


def report(meta: dict[str, Any], records: list[dict[str, Any]], png: str) -> str:
    failed = [r for r in records if "error" in r]
    parts = [
        f"Command: `{meta['command']}`  ",
        f"Run: {meta['date']}, {meta['wall_minutes']:.1f} min wall on {meta['machine']} "
        f"({meta['workers']} runs at a time), flwr {meta['flwr_version']}.  ",
        f"Task: `digits-mlp`, {meta['nodes']} nodes, IID split, {meta['rounds']} rounds, "
        f"flockd expecting {meta['proposers']} proposers a round, robust rule "
        f"`{meta['robust_rule']}`, seeds {', '.join(map(str, meta['seeds']))}.",
        "",
        f"![accuracy under attack]({png})",
        "",
        f"**Final held-out accuracy (%) under `{meta['attack']}`**, mean (min–max) over seeds:",
        "",
        accuracy_table(meta, records),
        "",
        f"**Speed**, at 0% and {_pct(meta['attack_fraction'])} malicious (`{meta['attack']}`), "
        "mean over seeds. s/round: wall time between consecutive global models; first model "
        "and time to 95%: wall time from launching the federation (chain deployment and "
        "joins, gRPC server and client connections, data loading) to that model:",
        "",
        timing_table(meta, records),
        "",
        "**What the vote did** (flockd systems, all rounds of all seeds):",
        "",
        defence_table(meta, records),
    ]
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
            f"**Per attack at {_pct(meta['attack_fraction'])} malicious**, final accuracy (%), "
            f"seeds {', '.join(map(str, meta['attack_seeds']))}:",
            "",
            per_attack_table(meta, records),
        ]
    if failed:
        parts += [
            "",
            f"{len(failed)} runs failed: "
            + "; ".join(
                f"{r['system']} {r['attack']} f={r['fraction']} seed={r['seed']}: {r['error']}"
                for r in failed
            ),
        ]
    return "\n".join(parts) + "\n"


def write_doc(doc: Path, section: str) -> None:
    text = doc.read_text()
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Defence under attack\n\n" + block + "\n"
    doc.write_text(text)


def write_results(
    meta: dict[str, Any], records: list[dict[str, Any]], out: Path, doc: Path | None
) -> None:
    """``results.json``, ``accuracy.png`` and ``results.md`` under ``out``, the section
    printed, and into ``doc`` between the markers unless it is None."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    png = out / "accuracy.png"
    plot(meta, records, png)
    link = os.path.relpath(png, (doc or DEFAULT_DOC).parent)
    section = report(meta, records, link)
    (out / "results.md").write_text(section)
    print()
    print(section)
    if doc is not None:
        write_doc(doc, section)
        print(f"wrote {doc}")
    print(f"wrote {out / 'results.json'}, {png}, {out / 'results.md'}")
