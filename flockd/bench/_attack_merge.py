"""`scripts/bench attack --merge DIR ...`: one set of tables from grids run in several
batches (other seeds, partitions or systems, at other times or commits), as if one command
had run them all. Each run's record is kept as it was; the batches must agree on the task
(nodes, rounds, attack, proposers, robust rule), and no cell may be run twice."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flockd.bench._attack_systems import FIXED_SCORING, FLOCKD_SYSTEMS, SYSTEMS, scoring_of

AGREED = ("nodes", "rounds", "attack", "proposers", "robust_rule", "attack_fraction", "creator_steps")
# Settings only flockd's systems read: a batch of baselines alone (plain FedAvg, Flower)
# ran the same task whatever they say, so only batches with a flockd system must agree.
FLOCKD_ONLY = ("proposers", "robust_rule", "creator_steps")
DEFAULTS = {"creator_steps": 0}  # batches from before an option ran with its default


class MergeError(ValueError):
    pass


def partition_order(partition: str) -> tuple[int, float]:
    """iid first, then Dirichlet splits from the mildest skew (largest alpha) down."""
    if partition == "iid":
        return (0, 0.0)
    return (1, -float(partition.split(":", 1)[1]))


def cell(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["system"], record["attack"], record["fraction"], record["seed"], record.get("partition", "iid"))


def sort_records(records: list[dict[str, Any]], partitions: Sequence[str]) -> None:
    order = {s: i for i, s in enumerate(SYSTEMS)}
    parts = {p: i for i, p in enumerate(partitions)}
    records.sort(key=lambda r: (parts[r.get("partition", "iid")], order[r["system"]], *cell(r)[1:4]))


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _scoring(batches: Sequence[dict[str, Any]]) -> str:
    """The vote scoring of the flockd systems that follow --vote-scoring; one for all."""
    found = {
        scoring_of(r)
        for b in batches
        for r in b["runs"]
        if r["system"] in FLOCKD_SYSTEMS and r["system"] not in FIXED_SCORING
    }
    if len(found) > 1:
        raise MergeError(f"the batches' flockd runs scored votes differently: {sorted(found)}")
    return found.pop() if found else scoring_of(batches[0]["meta"])


def merge_results(dirs: Sequence[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    batches = [json.loads((d / "results.json").read_text()) for d in dirs]
    metas = [b["meta"] for b in batches]
    flockd_metas = [m for m in metas if any(s in FLOCKD_SYSTEMS for s in m["systems"])] or metas
    judged_by = {key: flockd_metas if key in FLOCKD_ONLY else metas for key in AGREED}
    for key, judged in judged_by.items():
        values = _unique([json.dumps(m.get(key, DEFAULTS.get(key))) for m in judged])
        if len(values) > 1:
            raise MergeError(f"the batches differ in {key}: {', '.join(values)}")
    records: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], Path] = {}
    for d, batch in zip(dirs, batches, strict=True):
        for r in batch["runs"]:
            if cell(r) in seen:
                raise MergeError(f"{cell(r)} was run in both {seen[cell(r)]} and {d}")
            seen[cell(r)] = d
            records.append(r)
    partitions = sorted(_unique([p for m in metas for p in m.get("partitions", ["iid"])]), key=partition_order)
    systems = [s for s in SYSTEMS if any(s in m["systems"] for m in metas)]
    meta: dict[str, Any] = {
        "command": " and ".join(f"`{m['command']}`" for m in metas).strip("`"),
        "date": ", ".join(m["date"] for m in metas),
        "commit": ", ".join(_unique([m.get("commit", "unknown") for m in metas])),
        "wall_minutes": sum(m["wall_minutes"] for m in metas),
        "machine": "; ".join(_unique([m["machine"] for m in metas])),
        "workers": max(m["workers"] for m in metas),
        "flwr_version": next((m["flwr_version"] for m in metas if m["flwr_version"] != "not run"), "not run"),
        **{key: judged[0].get(key, DEFAULTS.get(key)) for key, judged in judged_by.items()},
        "fractions": sorted({f for m in metas for f in m["fractions"]}),
        "seeds": sorted({s for m in metas for s in m["seeds"]}),
        "partitions": partitions,
        "systems": systems,
        "vote_scoring": _scoring(batches),
        "root_rows": max(m.get("root_rows", 0) for m in metas),
        "per_attack": _unique([a for m in metas for a in m.get("per_attack", [])]),
        "attack_seeds": sorted({s for m in metas for s in m.get("attack_seeds", [])}),
        "breakdown": next((m["breakdown"] for m in metas if m.get("breakdown")), None),
        "merged_from": [str(d) for d in dirs],
    }
    sort_records(records, partitions)
    return meta, records
