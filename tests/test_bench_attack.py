"""Smoke tests of `scripts/bench attack` (flockd/bench/attack.py) and its Flower side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flockd.bench import attack


def test_orchestrator_writes_tables_plot_and_json(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nother sections stay.\n")
    argv = [
        "--nodes", "6", "--rounds", "2", "--fractions", "0,0.34", "--seeds", "0",
        "--systems", "fedavg,flockd-per-proposal", "--proposers", "3",
        "--per-attack", "sign-flip:4", "--attack-fraction", "0.34",
        "--jobs", "1", "--out", str(tmp_path / "out"), "--doc", str(doc),
    ]  # fmt: skip
    assert attack.main(argv) == 0

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["meta"]["command"].startswith("scripts/bench attack --nodes 6")
    runs = data["runs"]
    # 2 systems x 2 fractions under collude, plus the per-attack runs (sign-flip:4 at 34%)
    assert sorted((r["system"], r["attack"], r["fraction"]) for r in runs) == [
        ("fedavg", "collude", 0.0),
        ("fedavg", "collude", 0.34),
        ("fedavg", "sign-flip:4", 0.34),
        ("flockd-per-proposal", "collude", 0.0),
        ("flockd-per-proposal", "collude", 0.34),
        ("flockd-per-proposal", "sign-flip:4", 0.34),
    ]
    for run in runs:
        assert "error" not in run
        assert len(run["rounds"]) == 2 and len(run["model_at"]) == 2
        assert run["final_accuracy"] == run["rounds"][-1]["accuracy"]
        assert run["malicious"] == ([] if run["fraction"] == 0 else [4, 5])
        assert 0 not in run["malicious"]
    clean = [r for r in runs if r["fraction"] == 0]
    assert all(r["final_accuracy"] > 0.6 for r in clean), [r["final_accuracy"] for r in clean]
    flockd_clean = next(r for r in clean if r["system"] == "flockd-per-proposal")
    assert all("accepted" in row and "gas_used" in row for row in flockd_clean["rounds"])

    parts = data["meta"]["breakdown"]["parts"]  # one timed flockd run before the grid
    assert parts["py-evm: execute and seal each block's transactions"] > 0
    assert parts["training (proposers)"] > 0 and parts["scoring every proposal (voters)"] > 0

    png = tmp_path / "out" / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nother sections stay.\n")
    assert text.count(attack.BEGIN) == 1 and text.count(attack.END) == 1
    assert "| plain FedAvg, no defence" in text and "| `sign-flip:4` |" in text
    assert "](out/accuracy.png)" in text and "**Where a flockd round's time goes**" in text

    # Writing again replaces the section instead of appending a second one.
    attack.write_doc(doc, "new tables\n")
    again = doc.read_text()
    assert again.count(attack.BEGIN) == 1 and "new tables" in again
    assert "| plain FedAvg, no defence" not in again


def test_plan_runs_every_cell_once_and_slow_runs_first() -> None:
    args = attack.parse_args(["--fractions", "0,0.4", "--seeds", "0,1", "--attack-fraction", "0.4"])
    jobs = attack.plan(args)
    keys = [(j.system, j.attack, j.fraction, j.seed) for j in jobs]
    assert len(keys) == len(set(keys))
    # 6 systems x 2 fractions x 2 seeds, plus 5 new attacks x 4 systems x 2 seeds
    # (collude at 40% is already in the grid)
    assert len(jobs) == 6 * 2 * 2 + 5 * 4 * 2
    assert [j.cost for j in jobs] == sorted((j.cost for j in jobs), reverse=True)
    assert attack.parse_args(["--quick"]).per_attack == []


def test_flower_fedavg_matches_flockds_plain_fedavg() -> None:
    """Flower's FedAvg over the same clients computes the same model as flockd's plain
    loop: same data, seeds and training, so the same accuracy round by round."""
    from flockd.bench import flower

    if not flower.flower_available():
        pytest.skip("flwr is not installed (the bench extra: scripts/bench flower installs it)")
    from flockd.fl.attacks import assign_behaviours
    from flockd.fl.simulate import simulate

    behaviours = assign_behaviours(4, 0.25, "sign-flip:4", 0)
    run = flower.run_flower(strategy="fedavg", nodes=4, rounds=2, seed=0, behaviours=behaviours)
    plain = simulate("digits-mlp", nodes=4, rounds=2, seed=0, behaviours=behaviours)
    assert run.flwr_version == flower.flower_version()
    assert len(run.rounds) == 2
    for mine, theirs in zip(run.rounds, plain.rounds, strict=True):
        assert mine.accuracy == pytest.approx(theirs.accuracy, abs=1 / 359 + 1e-9)
    krum = flower.run_flower(strategy="multi-krum", nodes=4, rounds=1, seed=0)
    assert krum.rounds[0].accuracy > 0.5
