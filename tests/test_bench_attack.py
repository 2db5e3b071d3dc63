"""Smoke tests of `scripts/bench attack` (flockd/bench/attack.py) and its Flower side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flockd.bench import attack
from flockd.bench._attack_systems import SYSTEMS


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
    # 7 systems x 2 fractions x 2 seeds, plus 5 new attacks x 4 systems x 2 seeds
    # (collude at 40% is already in the grid)
    assert len(jobs) == 7 * 2 * 2 + 5 * 4 * 2
    assert [j.cost for j in jobs] == sorted((j.cost for j in jobs), reverse=True)
    assert attack.parse_args(["--quick"]).per_attack == []


def test_flower_fedavg_matches_flockds_plain_fedavg() -> None:
    """Flower's FedAvg over the same clients trains the same federation as flockd's plain
    loop: same data, seeds and training. They differ only in the weights: Flower weights
    each client by the samples it reports, flockd's loop weights every delta equally (a
    declared count cannot be checked), and on IID shards of nearly equal size the two
    models score within a point of each other."""
    from flockd.bench import flower

    if not flower.flower_available():
        pytest.skip("flwr is not installed (the bench extra: scripts/bench flower installs it)")
    from flockd.fl.simulate import simulate

    run = flower.run_flower(strategy="fedavg", nodes=4, rounds=2, seed=0)
    plain = simulate("digits-mlp", nodes=4, rounds=2, seed=0)
    assert run.flwr_version == flower.flower_version()
    assert len(run.rounds) == 2
    for mine, theirs in zip(run.rounds, plain.rounds, strict=True):
        assert mine.accuracy == pytest.approx(theirs.accuracy, abs=0.01)
    krum = flower.run_flower(strategy="multi-krum", nodes=4, rounds=1, seed=0)
    assert krum.rounds[0].accuracy > 0.5


def test_confidence_interval_on_known_numbers() -> None:
    from flockd.bench._attack_stats import spread, t975

    assert t975(1) == 12.706 and t975(7) == 2.365 and t975(30) == 2.042
    assert t975(40) == pytest.approx(2.021, abs=1e-3)  # the expansion beyond the table
    assert t975(1000) == pytest.approx(1.962, abs=1e-3)
    # mean 0.93, sample sd sqrt(0.002 / 3), n = 4: half-width t(0.975, 3) * sd / 2
    s = spread([0.90, 0.92, 0.94, 0.96])
    assert s.n == 4 and s.mean == pytest.approx(0.93)
    assert s.half_width == pytest.approx(3.182 * (0.002 / 3) ** 0.5 / 2)
    assert s.ci == pytest.approx((0.93 - 0.041077, 0.93 + 0.041077), abs=1e-5)
    assert (s.low, s.high) == (0.90, 0.96)
    assert s.cell() == "93.0 ± 4.1"
    assert spread([0.5]).cell() == "50.0" and spread([]).cell() == "–"


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from flockd.bench._attack_stats import t975

    for df in range(1, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3), df


def test_seed_ranges_and_partitions_parse() -> None:
    args = attack.parse_args(["--seeds", "0-3,5,2", "--partition", "iid,dirichlet:0.5"])
    assert args.seeds == [0, 1, 2, 3, 5]
    assert args.attack_seeds == [0, 1, 2]  # the per-attack table keeps 3 seeds by default
    assert args.partition == ["iid", "dirichlet:0.5"]
    assert attack.parse_args([]).seeds == list(range(8))
    for bad in (["--seeds", "3-1"], ["--partition", "zipf:2"], ["--systems", "nope"]):
        with pytest.raises(SystemExit):
            attack.parse_args(bad)


def test_plan_covers_every_partition_for_every_system() -> None:
    parts = ["iid", "dirichlet:1.0", "dirichlet:0.5", "dirichlet:0.1"]
    args = attack.parse_args(
        ["--fractions", "0,0.4", "--seeds", "0-1", "--partition", ",".join(parts)]
    )
    jobs = attack.plan(args)
    grid = [j for j in jobs if j.attack == "collude"]
    assert {(j.system, j.partition) for j in grid} == {(s, p) for s in SYSTEMS for p in parts}
    assert len(grid) == 7 * 4 * 2 * 2
    # the per-attack table runs on the first partition only
    assert {j.partition for j in jobs if j.attack != "collude"} == {"iid"}


def test_flower_clients_get_the_partition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's clients split the data as flockd's nodes do: the job's partition reaches
    `run_flower`, which builds `DataSpec(i, nodes, partition, seed)` per client as
    `flockd.sim` and `flockd.fl.simulate` do per node. (flwr itself may be absent here, so
    only the hand-over is checked; test_flower_fedavg_matches_flockds_plain_fedavg runs it.)"""
    from flockd.bench import _attack_systems, flower

    seen: dict[str, object] = {}

    def capture(**kwargs: object) -> object:
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(flower, "run_flower", capture)
    job = _attack_systems.Job(
        "flower-multi-krum", "collude", 0.4, 3, 20, 5, 8, "x", "dirichlet:0.1"
    )
    with pytest.raises(RuntimeError, match="captured"):
        _attack_systems.run_flower_system(job, {}, _attack_systems.RoundLog())
    assert seen["partition"] == "dirichlet:0.1" and seen["seed"] == 3 and seen["nodes"] == 20


def test_stake_share_table_on_known_numbers() -> None:
    from flockd.bench._attack_report import stake_checkpoints, stake_share_table

    def run(seed: int, shares: list[float]) -> dict[str, object]:
        return {
            "system": "flockd-per-proposal", "attack": "collude", "fraction": 0.3,
            "partition": "iid", "seed": seed, "initial_malicious_stake_share": 0.3,
            "rounds": [{"malicious_stake_share": x} for x in shares],
        }  # fmt: skip

    meta = {"rounds": 4, "systems": ["fedavg", "flockd-per-proposal"], "fractions": [0.3],
            "attack": "collude"}  # fmt: skip
    records = [run(0, [0.3, 0.29, 0.285, 0.28]), run(1, [0.3, 0.31, 0.315, 0.32])]
    assert stake_checkpoints(4) == [1, 2, 3, 4] and stake_checkpoints(50) == [1, 12, 25, 38, 50]
    table = stake_share_table(meta, records, "iid")
    # a record naming no vote scoring is local-model's, labelled now that it is not the default;
    # last round: 28 and 32 -> mean 30.00, half-width 12.706 * sd(2.828) / sqrt(2) = 25.41
    assert table.splitlines()[2] == (
        "| flockd, per-proposal vote (`local-model`) | 30% | 30.00 ± 0.00 | 30.00 ± 0.00 | 30.00 ± 12.71 | "
        "30.00 ± 19.06 | 30.00 ± 25.41 | 0.00 ± 25.41 |"
    )
    assert stake_share_table(meta, records, "dirichlet:0.5") == ""


def test_paired_table_subtracts_the_clean_run_of_the_same_seed() -> None:
    from flockd.bench._attack_paired import paired_table

    def run(fraction: float, seed: int, accuracies: list[float]) -> dict[str, object]:
        return {
            "system": "flockd-per-proposal", "attack": "collude", "fraction": fraction,
            "partition": "iid", "seed": seed, "rounds": [{"accuracy": a} for a in accuracies],
        }  # fmt: skip

    meta = {"systems": ["flockd-per-proposal"], "fractions": [0.0, 0.4], "seeds": [0, 1, 2], "attack": "collude"}
    records = [
        run(0.0, 0, [0.5] * 4 + [0.90, 0.90, 0.90, 0.90, 0.96]),
        run(0.4, 0, [0.5] * 4 + [0.89, 0.89, 0.89, 0.89, 0.94]),  # -2 final, -1.2 over the last 5
        run(0.0, 1, [0.5] * 9),
        run(0.4, 1, [0.5] * 9),  # 0 and 0
        run(0.4, 2, [0.9] * 9),  # no clean run of seed 2: left out
    ]
    rows = paired_table(meta, records, "iid").splitlines()
    # final: -2 and 0 -> mean -1.00, half-width 12.706 * sd(1.414) / sqrt(2) = 12.71
    assert rows[2] == "| flockd, per-proposal vote (`local-model`) | 40% | 2 | -1.00 ± 12.71 | -0.60 ± 7.62 |"
    assert paired_table({**meta, "fractions": [0.4]}, records, "iid") == ""


def test_stake_share_preset_on_a_tiny_grid_with_two_partitions(tmp_path: Path) -> None:
    """`--stake-share` (here shrunk to 6 nodes, 2 rounds) records the malicious nodes' stake
    share from the chain at the start and after every round, per partition, into its own
    doc section."""
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{attack.BEGIN}\nattack tables\n{attack.END}\n")
    argv = [
        "--stake-share", "--nodes", "6", "--rounds", "2", "--proposers", "3",
        "--fractions", "0.34", "--seeds", "0-1", "--partition", "iid,dirichlet:0.5",
        "--jobs", "1", "--out", str(tmp_path / "out"), "--doc", str(doc),
    ]  # fmt: skip
    args = attack.parse_args(argv)
    assert args.systems == ["flockd-per-proposal"] and args.attack == "collude"
    assert args.per_attack == [] and not args.breakdown and args.nodes == 6
    assert attack.parse_args(["--stake-share"]).rounds == 50
    assert attack.main(argv) == 0

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["meta"]["partitions"] == ["iid", "dirichlet:0.5"]
    assert data["meta"]["commit"]
    runs = data["runs"]
    assert sorted((r["partition"], r["seed"]) for r in runs) == [
        ("dirichlet:0.5", 0), ("dirichlet:0.5", 1), ("iid", 0), ("iid", 1),
    ]  # fmt: skip
    for r in runs:
        assert "error" not in r and len(r["malicious"]) == 2 and 0 not in r["malicious"]
        # equal stakes at the start: 2 of 6 nodes
        assert r["initial_malicious_stake_share"] == pytest.approx(2 / 6)
        shares = [row["malicious_stake_share"] for row in r["rounds"]]
        assert len(shares) == 2 and all(0 < x < 1 for x in shares)
    text = doc.read_text()
    assert "attack tables" in text  # the attack section is left alone
    assert text.count(attack.STAKE_BEGIN) == 1 and "## Cartel stake share" in text
    section = text.split(attack.STAKE_BEGIN, 1)[1]
    assert "#### Partition `dirichlet:0.5`" in section
    assert "**The malicious nodes' stake share (%)**" in section
    assert "| flockd, per-proposal vote | 34% | 33.33 ± 0.00 |" in section
    assert f"Commit: `{data['meta']['commit']}`" in section
    assert (tmp_path / "out" / "accuracy-dirichlet-0.5.png").exists()
    assert (tmp_path / "out" / "stake-share-dirichlet-0.5.png").exists()
    assert "](out/stake-share.png)" in section


def test_ceiling_prints_the_oracle_setups_against_the_clean_run(capsys):
    from flockd.bench import ceiling

    args = ["--fractions", "0.25", "--seeds", "0,1", "--nodes", "4", "--rounds", "1"]
    assert ceiling.main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 25%")]
    assert [row.split("|")[2].strip() for row in rows] == ["clean", "perfect", "refilled"]
    assert rows[0].split("|")[5].strip() == "–" and "±" in rows[1].split("|")[5]


def test_the_own_model_vote_system_keeps_its_scoring_whatever_the_flag() -> None:
    args = attack.parse_args(
        ["--seeds", "0", "--fractions", "0", "--vote-scoring", "guarded-contribution",
         "--systems", "flockd-per-proposal,flockd-local-model-vote", "--per-attack", "none"]
    )  # fmt: skip
    scoring = {j.system: j.vote_scoring for j in attack.plan(args)}
    assert scoring == {
        "flockd-per-proposal": "guarded-contribution",
        "flockd-local-model-vote": "local-model",
    }


def _batch(out: Path, meta: dict, runs: list[dict]) -> Path:
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}))
    return out


def test_merge_makes_one_grid_of_batches_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    """Batches of other seeds, partitions and systems read as one grid; a cell run twice
    or another task is refused."""

    def meta(**over):
        base = {
            "command": "scripts/bench attack", "date": "d", "commit": "c", "wall_minutes": 1.0,
            "machine": "m", "workers": 2, "flwr_version": "not run", "nodes": 6, "rounds": 2,
            "attack": "collude", "fractions": [0.0], "seeds": [0], "partitions": ["iid"],
            "systems": ["flockd-per-proposal"], "proposers": 3, "robust_rule": "fedavg",
            "vote_scoring": "guarded-contribution", "per_attack": [], "attack_fraction": 0.4,
            "attack_seeds": [], "breakdown": None,
        }  # fmt: skip
        return {**base, **over}

    def run(system, seed, partition="iid", scoring="guarded-contribution"):
        return {"system": system, "attack": "collude", "fraction": 0.0, "seed": seed,
                "partition": partition, "vote_scoring": scoring, "final_accuracy": 0.9,
                "rounds": [{"accuracy": 0.9}], "model_at": [1.0]}  # fmt: skip

    a = _batch(tmp_path / "a", meta(), [run("flockd-per-proposal", 0)])
    b = _batch(
        tmp_path / "b",
        meta(seeds=[1], partitions=["dirichlet:0.5", "iid"], flwr_version="1.41.0",
             systems=["flockd-local-model-vote", "flockd-per-proposal"], vote_scoring="local-model"),
        [run("flockd-per-proposal", 1, "dirichlet:0.5"), run("flockd-per-proposal", 1),
         run("flockd-local-model-vote", 1, scoring="local-model")],
    )  # fmt: skip
    merged, records = attack.merge_results([a, b])
    assert merged["seeds"] == [0, 1] and merged["partitions"] == ["iid", "dirichlet:0.5"]
    assert merged["systems"] == ["flockd-per-proposal", "flockd-local-model-vote"]
    assert merged["vote_scoring"] == "guarded-contribution" and merged["flwr_version"] == "1.41.0"
    assert [(r["partition"], r["system"], r["seed"]) for r in records] == [
        ("iid", "flockd-per-proposal", 0),
        ("iid", "flockd-per-proposal", 1),
        ("iid", "flockd-local-model-vote", 1),
        ("dirichlet:0.5", "flockd-per-proposal", 1),
    ]
    twice = _batch(tmp_path / "twice", meta(), [run("flockd-per-proposal", 0)])
    with pytest.raises(attack.MergeError, match="run in both"):
        attack.merge_results([a, twice])
    other = _batch(tmp_path / "other", meta(nodes=20, seeds=[2]), [run("flockd-per-proposal", 2)])
    with pytest.raises(attack.MergeError, match="differ in nodes"):
        attack.merge_results([a, other])
    scored = _batch(tmp_path / "scored", meta(seeds=[3]), [run("flockd-per-proposal", 3, scoring="local-model")])
    with pytest.raises(attack.MergeError, match="scored votes differently"):
        attack.merge_results([a, scored])
    # How many proposers flockd expects is no part of a baseline's task: a batch of
    # baselines merges with flockd runs at any count, and flockd runs must agree.
    baseline = _batch(
        tmp_path / "baseline", meta(seeds=[4], systems=["fedavg"], proposers=8), [run("fedavg", 4)]
    )
    merged, _ = attack.merge_results([a, baseline])
    assert merged["proposers"] == 3 and merged["systems"] == ["fedavg", "flockd-per-proposal"]
    merged, _ = attack.merge_results([baseline, a])
    assert merged["proposers"] == 3
    more = _batch(tmp_path / "more", meta(seeds=[5], proposers=8), [run("flockd-per-proposal", 5)])
    with pytest.raises(attack.MergeError, match="differ in proposers"):
        attack.merge_results([a, more])


def test_a_section_of_its_own_leaves_the_other_tables(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{attack.BEGIN}\nattack tables\n{attack.END}\n")
    args = attack.parse_args(["--merge", "x", "--section", "attack-partitions", "--doc", str(doc)])
    attack.write_doc(doc, "partition tables\n", args.markers)
    attack.write_doc(doc, "partition tables, again\n", args.markers)
    text = doc.read_text()
    assert "attack tables" in text and "## attack-partitions" in text
    assert text.count("partition tables") == 1 and "again" in text


def test_the_defence_table_counts_honest_nodes_that_lost_stake() -> None:
    from flockd.bench._attack_report import defence_table

    e18 = 10**18
    row = {"proposers": [1, 2], "accepted": [2], "malicious_proposers": 0, "malicious_accepted": 0}
    run = {"system": "flockd-per-proposal", "attack": "collude", "fraction": 0.0, "partition": "iid",
           "malicious": [3], "rounds": [row],
           "final_stakes": {"1": str(90 * e18), "2": str(101 * e18), "3": str(50 * e18)}}  # fmt: skip
    meta = {"systems": ["flockd-per-proposal"], "fractions": [0.0], "attack": "collude"}
    last = defence_table(meta, [run], "iid").splitlines()[-1]
    assert last.endswith("| 1/2 (-10%) |")  # node 3 is malicious: not counted
    older = {k: v for k, v in run.items() if k != "final_stakes"}
    assert defence_table(meta, [older], "iid").splitlines()[-1].endswith("| – |")


def test_the_creators_model_is_for_the_flockd_systems_only() -> None:
    args = attack.parse_args(["--seeds", "0", "--fractions", "0", "--creator-steps", "3",
                              "--systems", "fedavg,flockd-per-proposal", "--per-attack", "none"])  # fmt: skip
    assert {j.system: j.creator_steps for j in attack.plan(args)} == {"fedavg": 0, "flockd-per-proposal": 3}
