"""The cost of an attack paired by seed: each attacked run minus the clean run of the same
seed (the same data split, initial model, training seeds and node keys), so the spread
between federations cancels and what is left is what the attack took."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from flockd.bench._attack_stats import spread
from flockd.bench._attack_systems import system_label

LAST_ROUNDS = 5  # one round's test accuracy moves by a sample (0.28 points); five rounds average that out


def _accuracies(run: dict[str, Any]) -> list[float]:
    return [100 * r["accuracy"] for r in run["rounds"]]


def _cell(differences: Sequence[float]) -> str:
    s = spread(differences)
    return f"{s.mean:+.2f} ± {s.half_width:.2f}" if s.n > 1 else f"{s.mean:+.2f}"


def paired_table(meta: dict[str, Any], records: list[dict[str, Any]], partition: str) -> str:
    """Per system and attacked fraction: final accuracy and the mean of the last rounds,
    attacked minus clean, over the seeds run both ways; empty without a clean fraction."""
    runs = {
        (r["system"], r["fraction"], r["seed"]): r
        for r in records
        if "error" not in r and r.get("partition", "iid") == partition and r["attack"] == meta["attack"]
    }
    if 0.0 not in meta["fractions"]:
        return ""
    lines = [
        f"| system | malicious | seeds | final accuracy, minus clean | mean of the last {LAST_ROUNDS} rounds, minus clean |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for system in meta["systems"]:
        for fraction in meta["fractions"]:
            pairs = [
                (_accuracies(runs[(system, fraction, s)]), _accuracies(runs[(system, 0.0, s)]))
                for s in meta["seeds"]
                if fraction and (system, fraction, s) in runs and (system, 0.0, s) in runs
            ]
            if not pairs:
                continue
            final = [a[-1] - c[-1] for a, c in pairs]
            last = [statistics.fmean(a[-LAST_ROUNDS:]) - statistics.fmean(c[-LAST_ROUNDS:]) for a, c in pairs]
            lines.append(f"| {system_label(meta, system)} | {100 * fraction:g}% | {len(pairs)} | {_cell(final)} | {_cell(last)} |")
    return "\n".join(lines) if len(lines) > 2 else ""
